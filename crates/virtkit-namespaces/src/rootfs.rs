//! Setting up a container's root filesystem in a new mount namespace.
//!
//! [`prepare_rootfs`] sets propagation, binds the rootfs onto itself, mounts everything
//! the config lists (each target resolved inside the rootfs) and creates `/dev` nodes;
//! [`pivot`] switches root and detaches the old one; [`finalize_rootfs`] applies masked
//! and read-only paths. [`setup_rootfs`] does all three.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

pub use crate::mount_options::{
    parse_mount_options, propagation_flags, recursive_attr, MountOptions,
};
use crate::syscalls::{NodeKind, SyscallError, Syscalls, TargetKind};

/// Errors from rootfs setup. Each names the mount or path involved.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The rootfs directory does not exist or is not a directory.
    #[error("rootfs {0} is not a directory")]
    NoRootfs(PathBuf),
    /// A mount destination that is not absolute.
    #[error("mount destination {0} is not absolute")]
    RelativeDestination(PathBuf),
    /// Unknown propagation name.
    #[error("unknown mount propagation {0:?}")]
    BadPropagation(String),
    /// `tmpcopyup` on a mount that is not a tmpfs (runc ignores it there; we refuse).
    #[error("mount {}: tmpcopyup applies to tmpfs mounts only, not {fstype}", destination.display())]
    CopyUpNotTmpfs {
        /// The mount destination.
        destination: PathBuf,
        /// Its filesystem type.
        fstype: String,
    },
    /// A `proc` or `sysfs` mount whose destination in the rootfs exists but is not a
    /// plain directory (a symbolic link could redirect the mount), refused as runc does.
    #[error("{fstype} must be mounted on an ordinary directory: {} is a {what} in the rootfs", destination.display())]
    NotADirectory {
        /// `proc` or `sysfs`.
        fstype: String,
        /// The mount destination.
        destination: PathBuf,
        /// What it is instead ("symbolic link", "file").
        what: &'static str,
    },
    /// A mount failed.
    #[error("mount {}", destination.display())]
    Mount {
        /// The mount's destination inside the container.
        destination: PathBuf,
        /// The failing call.
        #[source]
        source: SyscallError,
    },
    /// A device node could not be created.
    #[error("device {}", path.display())]
    Device {
        /// The device path inside the container.
        path: PathBuf,
        /// The failing call.
        #[source]
        source: SyscallError,
    },
    /// Switching the root failed.
    #[error("switching to the new root")]
    Pivot(#[source] SyscallError),
    /// Masking or making a path read-only failed.
    #[error("path {}", path.display())]
    Path {
        /// The path inside the container.
        path: PathBuf,
        /// The failing call.
        #[source]
        source: SyscallError,
    },
}

/// One mount, as the OCI config describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// Source (a host path for binds; a device or fs name otherwise).
    pub source: Option<PathBuf>,
    /// Absolute destination inside the container.
    pub destination: PathBuf,
    /// Filesystem type ("proc", "tmpfs", "bind", ...).
    pub fstype: Option<String>,
    /// fstab-style options ("nosuid", "ro", "rbind", "mode=755", ...).
    pub options: Vec<String>,
}

/// A device node to create under the container's `/dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Absolute path inside the container (e.g. `/dev/null`).
    pub path: PathBuf,
    /// 'c' (char), 'b' (block) or 'p' (fifo).
    pub kind: char,
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Permission bits.
    pub mode: u32,
}

impl DeviceNode {
    /// A character device with mode 0666.
    pub fn char(path: &str, major: u32, minor: u32) -> Self {
        Self {
            path: PathBuf::from(path),
            kind: 'c',
            major,
            minor,
            mode: 0o666,
        }
    }
}

/// The standard device nodes every container gets: null, zero, full, random, urandom, tty.
pub fn default_devices() -> Vec<DeviceNode> {
    vec![
        DeviceNode::char("/dev/null", 1, 3),
        DeviceNode::char("/dev/zero", 1, 5),
        DeviceNode::char("/dev/full", 1, 7),
        DeviceNode::char("/dev/random", 1, 8),
        DeviceNode::char("/dev/urandom", 1, 9),
        DeviceNode::char("/dev/tty", 5, 0),
    ]
}

/// The standard `/dev` symlinks: fd, stdin, stdout, stderr, ptmx.
pub const DEFAULT_SYMLINKS: [(&str, &str); 5] = [
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
    ("pts/ptmx", "/dev/ptmx"),
];

/// Everything the rootfs setup needs.
#[derive(Debug, Clone)]
pub struct RootfsConfig {
    /// The rootfs directory on the host (absolute).
    pub rootfs: PathBuf,
    /// Propagation applied to `/` before anything else (default `MS_SLAVE | MS_REC`).
    pub propagation: u64,
    /// Mounts, in order.
    pub mounts: Vec<MountSpec>,
    /// Device nodes to create (usually [`default_devices`] plus the config's).
    pub devices: Vec<DeviceNode>,
    /// Create the `/dev` symlinks in [`DEFAULT_SYMLINKS`].
    pub dev_symlinks: bool,
    /// Bind-mount host devices instead of `mknod` (needed in a user namespace).
    pub bind_devices: bool,
    /// Paths hidden from the container.
    pub masked_paths: Vec<PathBuf>,
    /// Paths made read-only.
    pub readonly_paths: Vec<PathBuf>,
    /// Make `/` read-only at the end.
    pub readonly_root: bool,
    /// Use `MS_MOVE` + `chroot` instead of `pivot_root`.
    pub no_pivot: bool,
}

impl RootfsConfig {
    /// A config for `rootfs` with no mounts, standard devices and default propagation.
    pub fn new(rootfs: impl Into<PathBuf>) -> Self {
        Self {
            rootfs: rootfs.into(),
            propagation: libc::MS_SLAVE | libc::MS_REC,
            mounts: Vec::new(),
            devices: default_devices(),
            dev_symlinks: true,
            bind_devices: false,
            masked_paths: Vec::new(),
            readonly_paths: Vec::new(),
            readonly_root: false,
            no_pivot: false,
        }
    }
}

fn mount_err(dest: &Path) -> impl FnOnce(SyscallError) -> RootfsError + '_ {
    move |source| RootfsError::Mount {
        destination: dest.to_path_buf(),
        source,
    }
}

/// Mounts one [`MountSpec`] with its target resolved inside `root`.
pub fn mount_in_root(sys: &impl Syscalls, root: &Path, m: &MountSpec) -> Result<(), RootfsError> {
    let dest = &m.destination;
    if !dest.is_absolute() {
        return Err(RootfsError::RelativeDestination(dest.clone()));
    }
    let opts = parse_mount_options(&m.options);
    let fstype = m.fstype.as_deref().unwrap_or("none");
    let is_bind = opts.flags & libc::MS_BIND != 0 || fstype == "bind";
    let err = mount_err(dest);
    if opts.copy_up && (is_bind || fstype != "tmpfs") {
        return Err(RootfsError::CopyUpNotTmpfs {
            destination: dest.clone(),
            fstype: if is_bind {
                "bind".into()
            } else {
                fstype.to_string()
            },
        });
    }
    if !is_bind && (fstype == "proc" || fstype == "sysfs") {
        // As runc: never mount procfs or sysfs through a symlink (or onto a file) the
        // image put at the destination.
        let what = match sys.kind_in_root(root, dest).map_err(mount_err(dest))? {
            None | Some(NodeKind::Dir) => None,
            Some(NodeKind::Symlink) => Some("symbolic link"),
            Some(NodeKind::Other) => Some("file"),
        };
        if let Some(what) = what {
            return Err(RootfsError::NotADirectory {
                fstype: fstype.to_string(),
                destination: dest.clone(),
                what,
            });
        }
    }
    if fstype == "cgroup" {
        // cgroup v1 has no single filesystem to mount: without anything better from the
        // caller, the host's cgroup tree, read-only unless asked otherwise. (Callers that
        // know the container's own cgroup dirs should bind those instead; cgroup2 is
        // mounted as a filesystem below.)
        let t = sys
            .resolve_in_root(root, dest, TargetKind::Dir)
            .map_err(mount_err(dest))?;
        let host = Path::new("/sys/fs/cgroup");
        sys.mount(
            Some(host),
            t.path(),
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )
        .map_err(mount_err(dest))?;
        if opts.flags & libc::MS_RDONLY != 0 {
            let t = sys
                .resolve_in_root(root, dest, TargetKind::Dir)
                .map_err(mount_err(dest))?;
            sys.make_readonly(t.path(), true).map_err(mount_err(dest))?;
        }
        return Ok(());
    }
    let kind = if is_bind {
        match m.source.as_deref().and_then(|s| sys.is_dir(s)) {
            Some(false) => TargetKind::File,
            _ => TargetKind::Dir,
        }
    } else {
        TargetKind::Dir
    };
    let target = sys
        .resolve_in_root(root, dest, kind)
        .map_err(mount_err(dest))?;
    let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
    if is_bind {
        let bind_flags = libc::MS_BIND | (opts.flags & libc::MS_REC);
        sys.mount(m.source.as_deref(), target.path(), None, bind_flags, None)
            .map_err(mount_err(dest))?;
        // The fd still names the directory under the new mount: look it up again.
        let target = sys
            .resolve_in_root(root, dest, kind)
            .map_err(mount_err(dest))?;
        let extra = opts.flags & !(libc::MS_BIND | libc::MS_REC | libc::MS_REMOUNT);
        if opts.recursive_readonly {
            sys.make_readonly(target.path(), true)
                .map_err(mount_err(dest))?;
        } else if extra != 0 {
            sys.mount(
                None,
                target.path(),
                None,
                libc::MS_REMOUNT | libc::MS_BIND | extra,
                None,
            )
            .map_err(mount_err(dest))?;
        }
    } else {
        let src = m.source.as_deref().or(Some(Path::new(fstype)));
        let r = sys.mount(src, target.path(), Some(fstype), opts.flags, data);
        match r {
            Err(e) if fstype == "sysfs" && e.errno() == Some(libc::EPERM) => {
                // Not owner of the network namespace: bind the host's /sys instead.
                sys.mount(
                    Some(Path::new("/sys")),
                    target.path(),
                    None,
                    libc::MS_BIND | libc::MS_REC,
                    None,
                )
                .map_err(mount_err(dest))?;
                let t = sys
                    .resolve_in_root(root, dest, kind)
                    .map_err(mount_err(dest))?;
                sys.make_readonly(t.path(), true).map_err(err)?;
            }
            Err(e) if fstype == "mqueue" && e.errno() == Some(libc::EPERM) => {
                sys.mount(
                    Some(Path::new("/dev/mqueue")),
                    target.path(),
                    None,
                    libc::MS_BIND | libc::MS_REC,
                    None,
                )
                .map_err(err)?;
            }
            other => other.map_err(err)?,
        }
        if opts.copy_up {
            // `target` still names the directory under the new tmpfs (its fd was opened
            // before the mount): copy from it into the tmpfs, found by a fresh lookup.
            let fresh = sys
                .resolve_in_root(root, dest, kind)
                .map_err(mount_err(dest))?;
            sys.copy_tree(target.path(), fresh.path())
                .map_err(mount_err(dest))?;
        }
    }
    if opts.rec_attr_set | opts.rec_attr_clr != 0 {
        let target = sys
            .resolve_in_root(root, dest, kind)
            .map_err(mount_err(dest))?;
        sys.set_mount_attrs(target.path(), opts.rec_attr_set, opts.rec_attr_clr, true)
            .map_err(mount_err(dest))?;
    }
    if opts.propagation.is_empty() {
        return Ok(());
    }
    let target = sys
        .resolve_in_root(root, dest, kind)
        .map_err(mount_err(dest))?;
    for p in &opts.propagation {
        sys.mount(None, target.path(), None, *p, None)
            .map_err(mount_err(dest))?;
    }
    Ok(())
}

/// Creates the `/dev` nodes of `cfg.devices` (or bind-mounts the host's, with
/// `bind_devices`) and, with `dev_symlinks`, the standard `/dev` symlinks; the last step
/// of [`prepare_rootfs`].
pub fn create_devices(sys: &impl Syscalls, cfg: &RootfsConfig) -> Result<(), RootfsError> {
    // Most nodes share one parent (/dev): resolve it once for a run of them.
    let mut parent_dir: Option<(&Path, crate::syscalls::ResolvedTarget)> = None;
    for d in &cfg.devices {
        let derr = |source| RootfsError::Device {
            path: d.path.clone(),
            source,
        };
        if cfg.bind_devices {
            let t = sys
                .resolve_in_root(&cfg.rootfs, &d.path, TargetKind::File)
                .map_err(derr)?;
            sys.mount(Some(&d.path), t.path(), None, libc::MS_BIND, None)
                .map_err(derr)?;
            continue;
        }
        let parent = d.path.parent().unwrap_or(Path::new("/"));
        let name = d.path.file_name().unwrap_or_default();
        let dir = match parent_dir.take() {
            Some((p, dir)) if p == parent => dir,
            _ => sys
                .resolve_in_root(&cfg.rootfs, parent, TargetKind::Dir)
                .map_err(derr)?,
        };
        let fmt = match d.kind {
            'b' => libc::S_IFBLK,
            'p' => libc::S_IFIFO,
            _ => libc::S_IFCHR,
        };
        let path = dir.path().join(name);
        match sys.mknod(
            &path,
            fmt | (d.mode & 0o7777),
            libc::makedev(d.major, d.minor),
        ) {
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            r => r.map_err(derr)?,
        }
        parent_dir = Some((parent, dir));
    }
    if cfg.dev_symlinks {
        let dir = match parent_dir {
            Some((p, dir)) if p == Path::new("/dev") => dir,
            _ => sys
                .resolve_in_root(&cfg.rootfs, Path::new("/dev"), TargetKind::Dir)
                .map_err(|source| RootfsError::Device {
                    path: PathBuf::from("/dev"),
                    source,
                })?,
        };
        for (target, link) in DEFAULT_SYMLINKS {
            let name = Path::new(link).file_name().unwrap_or_default();
            match sys.symlink(Path::new(target), &dir.path().join(name)) {
                Err(e) if e.errno() == Some(libc::EEXIST) => {}
                r => r.map_err(|source| RootfsError::Device {
                    path: PathBuf::from(link),
                    source,
                })?,
            }
        }
    }
    Ok(())
}

/// Before `pivot_root`: propagation of `/`, bind of the rootfs onto itself, the config's
/// mounts (targets resolved in the rootfs) and device nodes.
///
/// It is [`prepare_rootfs_start`], [`mount_in_root`] for each of `cfg.mounts` in order,
/// then [`create_devices`]: a caller with work to fit between two mounts (say, waiting
/// until a source exists) calls those steps itself.
pub fn prepare_rootfs(sys: &impl Syscalls, cfg: &RootfsConfig) -> Result<(), RootfsError> {
    prepare_rootfs_start(sys, cfg)?;
    for m in &cfg.mounts {
        mount_in_root(sys, &cfg.rootfs, m)?;
    }
    create_devices(sys, cfg)
}

/// The first step of [`prepare_rootfs`]: checks the rootfs, sets the propagation of `/`,
/// makes the mount under the rootfs private when it is shared, and binds the rootfs onto
/// itself (so it is a mount point for `pivot_root`).
pub fn prepare_rootfs_start(sys: &impl Syscalls, cfg: &RootfsConfig) -> Result<(), RootfsError> {
    if sys.is_dir(&cfg.rootfs) != Some(true) {
        return Err(RootfsError::NoRootfs(cfg.rootfs.clone()));
    }
    let root = Path::new("/");
    // An unbindable tree could not be bound below: it is made a slave for now, and
    // unbindable after the pivot (see `pivot`).
    let before = if cfg.propagation & libc::MS_UNBINDABLE != 0 {
        libc::MS_SLAVE | libc::MS_REC
    } else {
        cfg.propagation
    };
    sys.mount(None, root, None, before, None)
        .map_err(mount_err(root))?;
    // The mount under the rootfs must not be shared: `pivot_root` refuses a shared parent
    // (EINVAL), and the bind below, with every mount made under it, would propagate to
    // that mount's peers, which (on a host whose `/` is shared, as on every systemd host,
    // with `rootfsPropagation` shared) are in the caller's mount namespace.
    if let Some(m) = sys
        .mount_holding(&cfg.rootfs)
        .map_err(mount_err(&cfg.rootfs))?
    {
        if m.is_shared() {
            sys.mount(None, &m.mount_point, None, libc::MS_PRIVATE, None)
                .map_err(mount_err(&m.mount_point))?;
        }
    }
    sys.mount(
        Some(&cfg.rootfs),
        &cfg.rootfs,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .map_err(mount_err(&cfg.rootfs))
}

/// Makes the rootfs the new `/`: `pivot_root(".", ".")` then detaches the old root (or,
/// with `no_pivot`, moves the mount over `/` and `chroot`s); then applies the configured
/// propagation to the new `/` unless it is private.
pub fn pivot(sys: &impl Syscalls, cfg: &RootfsConfig) -> Result<(), RootfsError> {
    let dot = Path::new(".");
    if cfg.no_pivot {
        sys.chdir(&cfg.rootfs).map_err(RootfsError::Pivot)?;
        sys.mount(Some(dot), Path::new("/"), None, libc::MS_MOVE, None)
            .map_err(RootfsError::Pivot)?;
        sys.chroot(dot).map_err(RootfsError::Pivot)?;
    } else {
        let old_root = sys.open_dir(Path::new("/")).map_err(RootfsError::Pivot)?;
        sys.chdir(&cfg.rootfs).map_err(RootfsError::Pivot)?;
        sys.pivot_root(dot, dot).map_err(RootfsError::Pivot)?;
        // The old root is now stacked on the new one. From inside it (a path lookup of
        // "." from the new root would name the new root, not the mount on top), make its
        // tree a slave so its unmount cannot propagate to the caller's namespace, then
        // detach it.
        sys.fchdir(old_root.as_fd()).map_err(RootfsError::Pivot)?;
        sys.mount(None, dot, None, libc::MS_SLAVE | libc::MS_REC, None)
            .map_err(RootfsError::Pivot)?;
        sys.umount2(dot, libc::MNT_DETACH)
            .map_err(RootfsError::Pivot)?;
    }
    sys.chdir(Path::new("/")).map_err(RootfsError::Pivot)?;
    // The configured propagation, on the new `/` (the rootfs's bind, private until now:
    // see `prepare_rootfs_start`), as runc applies it. Private needs nothing more.
    if cfg.propagation & libc::MS_PRIVATE == 0 {
        sys.mount(None, Path::new("/"), None, cfg.propagation, None)
            .map_err(RootfsError::Pivot)?;
    }
    Ok(())
}

/// After the pivot: read-only paths, masked paths (`/dev/null` over files, a read-only
/// tmpfs over directories; missing paths are skipped), then a read-only `/` if asked.
pub fn finalize_rootfs(sys: &impl Syscalls, cfg: &RootfsConfig) -> Result<(), RootfsError> {
    for p in &cfg.readonly_paths {
        let perr = |source| RootfsError::Path {
            path: p.clone(),
            source,
        };
        if sys.is_dir(p).is_none() {
            continue;
        }
        sys.mount(Some(p), p, None, libc::MS_BIND | libc::MS_REC, None)
            .map_err(perr)?;
        sys.make_readonly(p, true).map_err(perr)?;
    }
    for p in &cfg.masked_paths {
        let perr = |source| RootfsError::Path {
            path: p.clone(),
            source,
        };
        match sys.is_dir(p) {
            None => continue,
            Some(true) => sys
                .mount(
                    Some(Path::new("tmpfs")),
                    p,
                    Some("tmpfs"),
                    libc::MS_RDONLY,
                    None,
                )
                .map_err(perr)?,
            Some(false) => sys
                .mount(Some(Path::new("/dev/null")), p, None, libc::MS_BIND, None)
                .map_err(perr)?,
        }
    }
    if cfg.readonly_root {
        // mount_setattr sets the read-only bit alone: a remount would have to repeat
        // every flag the mount has, and in a user namespace dropping one of the locked
        // ones (nosuid, nodev, noexec, atime) from the rootfs's host mount is EPERM.
        let root = Path::new("/");
        sys.make_readonly(root, false)
            .map_err(|source| RootfsError::Path {
                path: root.to_path_buf(),
                source,
            })?;
    }
    Ok(())
}

/// [`prepare_rootfs`], [`pivot`] and [`finalize_rootfs`] in order. Must run in a new mount
/// namespace (and, for `/proc`, in the container's PID namespace).
pub fn setup_rootfs(sys: &impl Syscalls, cfg: &RootfsConfig) -> Result<(), RootfsError> {
    prepare_rootfs(sys, cfg)?;
    pivot(sys, cfg)?;
    finalize_rootfs(sys, cfg)
}
