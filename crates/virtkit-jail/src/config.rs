//! [`JailConfig`]: what goes into a jail, checked before anything is made.

use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

use crate::JailError;

/// A host file or device made visible inside the jail at the same absolute path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JailFile {
    /// The path, on the host and inside the jail.
    pub path: PathBuf,
    /// Bound read-only.
    pub read_only: bool,
}

/// Resource limits of the jail's cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct JailLimits {
    /// Memory, in bytes.
    pub memory_bytes: Option<u64>,
    /// CPUs (a quota of this many CPUs' time per period).
    pub cpus: Option<f64>,
    /// Tasks (threads and processes).
    pub pids: Option<u64>,
}

/// The smallest memory limit taken: below it nothing useful starts.
pub const MIN_MEMORY: u64 = 16 << 20;
/// The fewest tasks taken.
pub const MIN_PIDS: u64 = 8;

/// What a jail holds and how it is confined.
#[derive(Clone, Debug, PartialEq)]
pub struct JailConfig {
    /// A name for the jail: the cgroup `virtkit-jail/<id>` and the hostname inside.
    pub id: String,
    /// The jail's root on the host: created when missing, else it must be an empty,
    /// writable directory. It holds only mount points for [`JailConfig::files`] (the host
    /// sees them empty) and whatever the jailed process creates (an API socket).
    pub root: PathBuf,
    /// The identity the process takes in [`crate::Inside::drop_privileges`].
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// Files and devices visible inside.
    pub files: Vec<JailFile>,
    /// A new, empty network namespace (only `lo`) instead of the host's.
    pub new_netns: bool,
    /// Limits of the jail's cgroup.
    pub limits: JailLimits,
}

impl JailConfig {
    /// A jail named `id` at `root` for `uid:gid`, with nothing in it yet.
    pub fn new(id: impl Into<String>, root: impl Into<PathBuf>, uid: u32, gid: u32) -> Self {
        JailConfig {
            id: id.into(),
            root: root.into(),
            uid,
            gid,
            files: Vec::new(),
            new_netns: false,
            limits: JailLimits::default(),
        }
    }

    /// Adds a host file (or device) at the same path inside.
    pub fn file(mut self, path: impl Into<PathBuf>, read_only: bool) -> Self {
        self.files.push(JailFile {
            path: path.into(),
            read_only,
        });
        self
    }

    /// The cgroup path of the jail.
    pub fn cgroup_path(&self) -> String {
        format!("virtkit-jail/{}", self.id)
    }

    /// Checks everything that can be checked before anything is made: the id, the root
    /// (absent, or an empty writable directory, not `/`), the uid and gid (known to the
    /// host's passwd and group databases, not root), the files (absolute, existing regular
    /// files or character devices, no `..`) and the limits.
    pub fn validate(&self) -> Result<(), JailError> {
        let bad = |m: String| Err(JailError::Config(m));
        if self.id.is_empty()
            || self.id.len() > 64
            || !self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad(format!(
                "jail id {:?}: 1 to 64 letters, digits, '-' or '_'",
                self.id
            ));
        }
        check_root(&self.root)?;
        if self.uid == 0 || self.gid == 0 {
            return bad("the jail's uid and gid must not be root (0)".into());
        }
        if !known_uid(self.uid) {
            return bad(format!("uid {} does not exist on this host", self.uid));
        }
        if !known_gid(self.gid) {
            return bad(format!("gid {} does not exist on this host", self.gid));
        }
        for f in &self.files {
            check_file(&f.path)?;
            if f.path.starts_with(&self.root) {
                return bad(format!(
                    "{} is inside the jail root {}",
                    f.path.display(),
                    self.root.display()
                ));
            }
        }
        let l = &self.limits;
        if let Some(m) = l.memory_bytes.filter(|m| *m < MIN_MEMORY) {
            return bad(format!(
                "memory limit {m} bytes: at least {} MiB",
                MIN_MEMORY >> 20
            ));
        }
        if let Some(c) = l.cpus {
            let host = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            if !(c.is_finite() && c >= 0.01 && c <= host) {
                return bad(format!("cpus {c}: from 0.01 to this host's {host}"));
            }
        }
        if let Some(p) = l.pids.filter(|p| *p < MIN_PIDS) {
            return bad(format!("pids limit {p}: at least {MIN_PIDS}"));
        }
        Ok(())
    }
}

fn check_root(root: &Path) -> Result<(), JailError> {
    let bad = |m: String| Err(JailError::Config(m));
    if !root.is_absolute() || root.components().any(|c| c == Component::ParentDir) {
        return bad(format!(
            "jail root {}: an absolute path without '..'",
            root.display()
        ));
    }
    if root.parent().is_none() {
        return bad("the jail root cannot be /".into());
    }
    match std::fs::symlink_metadata(root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = root.parent().unwrap_or(root);
            if !parent.is_dir() {
                return bad(format!(
                    "jail root {}: its parent {} is not a directory",
                    root.display(),
                    parent.display()
                ));
            }
            Ok(())
        }
        Err(e) => Err(JailError::io("cannot inspect", root)(e)),
        Ok(m) if !m.is_dir() => bad(format!("jail root {} is not a directory", root.display())),
        Ok(_) => {
            let mut entries =
                std::fs::read_dir(root).map_err(JailError::io("cannot read", root))?;
            if entries.next().is_some() {
                return bad(format!("jail root {} is not empty", root.display()));
            }
            let c = std::ffi::CString::new(root.as_os_str().as_encoded_bytes())
                .map_err(|_| JailError::Config("jail root has a NUL byte".into()))?;
            // SAFETY: access with a valid C string.
            if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
                return bad(format!(
                    "jail root {} is not writable: {}",
                    root.display(),
                    std::io::Error::last_os_error()
                ));
            }
            Ok(())
        }
    }
}

fn check_file(path: &Path) -> Result<(), JailError> {
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(JailError::Config(format!(
            "{}: files in a jail are named by absolute paths without '..'",
            path.display()
        )));
    }
    let m = std::fs::metadata(path).map_err(JailError::io("cannot put in the jail", path))?;
    let t = m.file_type();
    if !(t.is_file() || t.is_char_device()) {
        return Err(JailError::Config(format!(
            "{}: only regular files and character devices go into a jail",
            path.display()
        )));
    }
    Ok(())
}

fn known_uid(uid: u32) -> bool {
    // SAFETY: getpwuid_r writes into the buffers we pass, with their sizes.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) == 0 && !out.is_null()
    }
}

fn known_gid(gid: u32) -> bool {
    // SAFETY: getgrgid_r writes into the buffers we pass, with their sizes.
    unsafe {
        let mut gr: libc::group = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 64 * 1024];
        let mut out: *mut libc::group = std::ptr::null_mut();
        libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) == 0 && !out.is_null()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_config(root: &Path) -> JailConfig {
        // nobody and nogroup exist on Debian.
        JailConfig::new("t1", root.join("jail"), 65534, 65534)
    }

    #[test]
    fn a_good_config_passes() {
        let d = tempfile::tempdir().unwrap();
        let c = ok_config(d.path()).file("/dev/null", false);
        c.validate().unwrap();
        // An existing empty directory is fine too.
        std::fs::create_dir(d.path().join("jail")).unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let d = tempfile::tempdir().unwrap();
        let err = |c: &JailConfig| c.validate().unwrap_err().to_string();
        let mut c = ok_config(d.path());
        c.id = "a/b".into();
        assert!(err(&c).contains("letters, digits"), "{}", err(&c));
        let mut c = ok_config(d.path());
        c.root = "relative".into();
        assert!(err(&c).contains("absolute path"));
        c.root = "/".into();
        assert!(err(&c).contains("cannot be /"));
        let c = ok_config(d.path());
        std::fs::create_dir(&c.root).unwrap();
        std::fs::write(c.root.join("x"), b"").unwrap();
        assert!(err(&c).contains("is not empty"), "{}", err(&c));
        std::fs::remove_dir_all(&c.root).unwrap();
        let f = d.path().join("file");
        std::fs::write(&f, b"").unwrap();
        let mut c = ok_config(d.path());
        c.root = f.clone();
        assert!(err(&c).contains("is not a directory"));
        let mut c = ok_config(d.path());
        c.uid = 4_000_000_000;
        assert!(
            err(&c).contains("uid 4000000000 does not exist"),
            "{}",
            err(&c)
        );
        let mut c = ok_config(d.path());
        c.gid = 4_000_000_000;
        assert!(err(&c).contains("gid 4000000000 does not exist"));
        let mut c = ok_config(d.path());
        c.uid = 0;
        assert!(err(&c).contains("must not be root"));
        let c = ok_config(d.path()).file("/nonexistent/disk.img", false);
        assert!(err(&c).contains("/nonexistent/disk.img"), "{}", err(&c));
        let c = ok_config(d.path()).file("/tmp", false);
        assert!(err(&c).contains("only regular files"), "{}", err(&c));
        let c = ok_config(d.path()).file("dev/kvm", false);
        assert!(err(&c).contains("absolute paths"));
        for (limits, want) in [
            (
                JailLimits {
                    memory_bytes: Some(1),
                    ..JailLimits::default()
                },
                "memory limit",
            ),
            (
                JailLimits {
                    cpus: Some(0.0),
                    ..JailLimits::default()
                },
                "cpus 0",
            ),
            (
                JailLimits {
                    cpus: Some(f64::NAN),
                    ..JailLimits::default()
                },
                "cpus NaN",
            ),
            (
                JailLimits {
                    cpus: Some(1e9),
                    ..JailLimits::default()
                },
                "cpus 1000000000",
            ),
            (
                JailLimits {
                    pids: Some(1),
                    ..JailLimits::default()
                },
                "pids limit 1",
            ),
        ] {
            let mut c = ok_config(d.path());
            c.limits = limits;
            assert!(err(&c).contains(want), "{want}: {}", err(&c));
        }
    }
}
