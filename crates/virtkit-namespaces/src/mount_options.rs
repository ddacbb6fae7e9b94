//! Mount options as the OCI config spells them (fstab-style strings), parsed as runc
//! parses them: `MS_*` flags, propagation changes, the recursive `mount_setattr(2)`
//! options, `tmpcopyup`, and the filesystem's data string.

use crate::rootfs::RootfsError;
use crate::syscalls::mount_attr;

/// Mount options parsed into flags and data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// `MS_*` flags for the mount itself.
    pub flags: u64,
    /// Propagation changes applied after mounting (`MS_PRIVATE`, `MS_SLAVE`, ... with
    /// `MS_REC` where recursive).
    pub propagation: Vec<u64>,
    /// The comma-joined data string for the filesystem.
    pub data: String,
    /// "rro": make the whole tree read-only.
    pub recursive_readonly: bool,
    /// [`mount_attr`] bits the recursive options (`rnosuid`, `rnoexec`, `rnoatime`...)
    /// set on the whole tree after mounting, through `mount_setattr(2)`.
    pub rec_attr_set: u64,
    /// [`mount_attr`] bits they clear (`rrw`, `rsuid`, `rexec`...).
    pub rec_attr_clr: u64,
    /// `tmpcopyup`: a new tmpfs starts with a copy of what the image has at its place.
    pub copy_up: bool,
}

/// The `mount_setattr(2)` change of a recursive option (runc's `r*` options): the bits
/// to set and the bits to clear, `None` for any other option.
pub fn recursive_attr(option: &str) -> Option<(u64, u64)> {
    use mount_attr as a;
    Some(match option {
        "rro" => (a::RDONLY, 0),
        "rrw" => (0, a::RDONLY),
        "rnosuid" => (a::NOSUID, 0),
        "rsuid" => (0, a::NOSUID),
        "rnodev" => (a::NODEV, 0),
        "rdev" => (0, a::NODEV),
        "rnoexec" => (a::NOEXEC, 0),
        "rexec" => (0, a::NOEXEC),
        "rnodiratime" => (a::NODIRATIME, 0),
        "rdiratime" => (0, a::NODIRATIME),
        // The atime field is set as a whole: the kernel wants it cleared whole.
        "rrelatime" => (a::RELATIME, a::ATIME_MASK),
        "rnoatime" => (a::NOATIME, a::ATIME_MASK),
        "rstrictatime" => (a::STRICTATIME, a::ATIME_MASK),
        // Undoing noatime, relatime or strictatime: back to the default, relatime.
        "ratime" | "rnorelatime" | "rnostrictatime" => (a::RELATIME, a::ATIME_MASK),
        "rnosymfollow" => (a::NOSYMFOLLOW, 0),
        "rsymfollow" => (0, a::NOSYMFOLLOW),
        _ => return None,
    })
}

/// Parses fstab-style options as runc does; unknown options go to the data string.
pub fn parse_mount_options(options: &[String]) -> MountOptions {
    let mut o = MountOptions::default();
    let mut data: Vec<&str> = Vec::new();
    for opt in options {
        let (set, clear): (u64, u64) = match opt.as_str() {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "bind" => (libc::MS_BIND, 0),
            "rbind" => (libc::MS_BIND | libc::MS_REC, 0),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "remount" => (libc::MS_REMOUNT, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "atime" => (0, libc::MS_NOATIME),
            "noatime" => (libc::MS_NOATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "rro" => {
                o.recursive_readonly = true;
                (libc::MS_RDONLY, 0)
            }
            r if recursive_attr(r).is_some() => {
                if let Some((set, clr)) = recursive_attr(r) {
                    // A later option wins over an earlier one on the same bits.
                    o.rec_attr_set = (o.rec_attr_set & !clr & !set) | set;
                    o.rec_attr_clr = (o.rec_attr_clr & !set) | clr;
                }
                (0, 0)
            }
            "tmpcopyup" => {
                o.copy_up = true;
                (0, 0)
            }
            "defaults" | "" => (0, 0),
            other => {
                if let Ok(p) = propagation_flags(other) {
                    o.propagation.push(p);
                } else {
                    data.push(other);
                }
                (0, 0)
            }
        };
        o.flags = (o.flags | set) & !clear;
    }
    o.data = data.join(",");
    o
}

/// Maps a propagation name ("rprivate", "slave", ...) to mount flags.
pub fn propagation_flags(name: &str) -> Result<u64, RootfsError> {
    Ok(match name {
        "private" => libc::MS_PRIVATE,
        "rprivate" => libc::MS_PRIVATE | libc::MS_REC,
        "slave" => libc::MS_SLAVE,
        "rslave" => libc::MS_SLAVE | libc::MS_REC,
        "shared" => libc::MS_SHARED,
        "rshared" => libc::MS_SHARED | libc::MS_REC,
        "unbindable" => libc::MS_UNBINDABLE,
        "runbindable" => libc::MS_UNBINDABLE | libc::MS_REC,
        other => return Err(RootfsError::BadPropagation(other.to_string())),
    })
}
