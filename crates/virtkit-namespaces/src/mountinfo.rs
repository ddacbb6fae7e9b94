//! `/proc/<pid>/mountinfo`: parsing, and finding the mount that holds a path.
//!
//! Used by the rootfs set-up (the mount under a container's rootfs must not be shared, see
//! [`crate::rootfs::prepare_rootfs_start`]) and by cgroup detection in `virtkit-cgroups`.

use std::path::{Path, PathBuf};

/// One line of mountinfo:
/// `id parent maj:min root mountpoint options [optional...] - fstype source superoptions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The mount's id.
    pub id: u32,
    /// The parent mount's id.
    pub parent: u32,
    /// Where it is mounted (escapes undone).
    pub mount_point: PathBuf,
    /// The optional fields: `shared:N`, `master:N`, `propagate_from:N`, `unbindable`.
    pub optional: Vec<String>,
    /// The filesystem type.
    pub fstype: String,
    /// The per-superblock options.
    pub super_options: String,
}

impl MountEntry {
    /// Whether the mount is shared (in a peer group: mounts and unmounts under it
    /// propagate to its peers, possibly in other mount namespaces).
    pub fn is_shared(&self) -> bool {
        self.optional.iter().any(|o| o.starts_with("shared:"))
    }
}

/// Parses one mountinfo line; `None` when it is malformed.
pub fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let left: Vec<&str> = left.split(' ').collect();
    if left.len() < 6 {
        return None;
    }
    let mut right = right.split(' ');
    let fstype = right.next()?.to_string();
    let _source = right.next()?;
    let super_options = right.next().unwrap_or("").to_string();
    Some(MountEntry {
        id: left[0].parse().ok()?,
        parent: left[1].parse().ok()?,
        mount_point: PathBuf::from(unescape_octal(left[4])),
        optional: left[6..].iter().map(|s| s.to_string()).collect(),
        fstype,
        super_options,
    })
}

/// Parses mountinfo text, skipping malformed lines.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

/// The mount that holds `path` (absolute, with no symbolic links): the entry whose mount
/// point is the longest prefix of it, the last such one when mounts are stacked.
pub fn mount_holding<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    entries
        .iter()
        .filter(|e| path.starts_with(&e.mount_point))
        .fold(None, |best: Option<&MountEntry>, e| match best {
            Some(b) if b.mount_point.as_os_str().len() > e.mount_point.as_os_str().len() => Some(b),
            _ => Some(e),
        })
}

/// Undoes the kernel's `\ooo` escaping of spaces, tabs, newlines and backslashes.
pub fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let digits = &b[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = u32::from(digits[0] - b'0') * 64
                    + u32::from(digits[1] - b'0') * 8
                    + u32::from(digits[2] - b'0');
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs udev rw
41 22 8:1 /srv /var/lib/my\\040dir rw master:1 - ext4 /dev/sda1 rw
42 41 0:40 / /var/lib/my\\040dir/rootfs rw - tmpfs tmpfs rw
43 41 0:41 / /var/lib/my\\040dir/rootfs rw shared:9 - tmpfs tmpfs rw
bogus line
";

    #[test]
    fn parses_fields_and_escapes() {
        let e = parse(TEXT);
        assert_eq!(e.len(), 5, "the malformed line is skipped");
        assert_eq!(e[2].mount_point, Path::new("/var/lib/my dir"));
        assert_eq!((e[2].id, e[2].parent), (41, 22));
        assert_eq!(e[2].optional, vec!["master:1"]);
        assert!(e[0].is_shared() && !e[2].is_shared() && !e[3].is_shared());
        assert_eq!(e[1].fstype, "devtmpfs");
    }

    #[test]
    fn finds_the_longest_and_last_mount() {
        let e = parse(TEXT);
        let m = |p: &str| mount_holding(&e, Path::new(p)).map(|m| m.id);
        assert_eq!(m("/etc/passwd"), Some(22));
        assert_eq!(m("/dev/null"), Some(30));
        assert_eq!(
            m("/devices"),
            Some(22),
            "a prefix by component, not by bytes"
        );
        assert_eq!(m("/var/lib/my dir/x"), Some(41));
        assert_eq!(
            m("/var/lib/my dir/rootfs/bin"),
            Some(43),
            "the top of a stack"
        );
        assert_eq!(mount_holding(&[], Path::new("/")), None);
    }
}
