//! A recording fake of [`Syscalls`] for unit tests without root.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::mountinfo::MountEntry;
use crate::syscalls::{NodeKind, ResolvedTarget, SysResult, SyscallError, Syscalls, TargetKind};

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `unshare(flags)`.
    Unshare(i32),
    /// `setns(fd, nstype)`.
    Setns(i32, i32),
    /// `mount(source, target, fstype, flags, data)`.
    Mount {
        /// Source.
        source: Option<PathBuf>,
        /// Target (as resolved: `root/dest` for the fake).
        target: PathBuf,
        /// Filesystem type.
        fstype: Option<String>,
        /// `MS_*` flags.
        flags: u64,
        /// Data string.
        data: Option<String>,
    },
    /// `umount2(target, flags)`.
    Umount(PathBuf, i32),
    /// `mount_setattr(target, RDONLY)`, recursive or not.
    MakeReadonly(PathBuf, bool),
    /// A directory tree copied (tmpcopyup): from, to.
    CopyTree(PathBuf, PathBuf),
    /// `mount_setattr(path, set, clear, recursive)` with other attributes.
    SetMountAttrs(PathBuf, u64, u64, bool),
    /// `pivot_root(new, old)`.
    PivotRoot(PathBuf, PathBuf),
    /// `chroot(path)`.
    Chroot(PathBuf),
    /// `chdir(path)`.
    Chdir(PathBuf),
    /// A directory opened with `O_PATH`.
    OpenDir(PathBuf),
    /// `fchdir` to the directory opened by the `OpenDir` of that path.
    Fchdir(PathBuf),
    /// `sethostname(name)`.
    Hostname(String),
    /// `setdomainname(name)`.
    Domainname(String),
    /// `mknod(path, mode, dev)`.
    Mknod(PathBuf, u32, u64),
    /// `symlink(target, link)`.
    Symlink(PathBuf, PathBuf),
    /// A write of `data` to `path`.
    Write(PathBuf, Vec<u8>),
    /// A target resolved in a root.
    Resolve(PathBuf, PathBuf, TargetKind),
}

/// Records every call; `is_dir` answers from a table set by the test; calls can be made
/// to fail by name.
#[derive(Debug, Default)]
pub struct RecordingSyscalls {
    calls: RefCell<Vec<Call>>,
    paths: RefCell<BTreeMap<PathBuf, bool>>,
    symlinks: RefCell<std::collections::BTreeSet<PathBuf>>,
    fail: RefCell<BTreeMap<&'static str, i32>>,
    mountinfo: RefCell<Vec<MountEntry>>,
    /// What each descriptor handed out by `open_dir` stands for.
    opened: RefCell<BTreeMap<i32, PathBuf>>,
}

impl RecordingSyscalls {
    /// A fake with no files and no failures.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares that `path` exists (a directory when `dir`).
    pub fn add_path(&self, path: impl Into<PathBuf>, dir: bool) {
        self.paths.borrow_mut().insert(path.into(), dir);
    }

    /// Declares that `path` is a symbolic link (for [`Syscalls::kind_in_root`]).
    pub fn add_symlink(&self, path: impl Into<PathBuf>) {
        self.symlinks.borrow_mut().insert(path.into());
    }

    /// Sets the mount table [`Syscalls::mount_holding`] answers from (mountinfo text; by
    /// default there is none, and no path is on a mount).
    pub fn set_mountinfo(&self, text: &str) {
        *self.mountinfo.borrow_mut() = crate::mountinfo::parse(text);
    }

    /// Makes every later call named `call` (e.g. "pivot_root") fail with `errno`.
    pub fn fail_on(&self, call: &'static str, errno: i32) {
        self.fail.borrow_mut().insert(call, errno);
    }

    /// The calls recorded so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    /// The mount calls recorded so far.
    pub fn mounts(&self) -> Vec<Call> {
        self.calls
            .borrow()
            .iter()
            .filter(|c| matches!(c, Call::Mount { .. }))
            .cloned()
            .collect()
    }

    fn rec(&self, name: &'static str, c: Call) -> SysResult<()> {
        self.calls.borrow_mut().push(c);
        if let Some(e) = self.fail.borrow().get(name) {
            return Err(SyscallError::new(
                name,
                "fake",
                std::io::Error::from_raw_os_error(*e),
            ));
        }
        Ok(())
    }
}

impl Syscalls for RecordingSyscalls {
    fn unshare(&self, flags: i32) -> SysResult<()> {
        self.rec("unshare", Call::Unshare(flags))
    }
    fn setns(&self, fd: BorrowedFd<'_>, nstype: i32) -> SysResult<()> {
        self.rec("setns", Call::Setns(fd.as_raw_fd(), nstype))
    }
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: u64,
        data: Option<&str>,
    ) -> SysResult<()> {
        self.rec(
            "mount",
            Call::Mount {
                source: source.map(Path::to_path_buf),
                target: target.to_path_buf(),
                fstype: fstype.map(str::to_string),
                flags,
                data: data.map(str::to_string),
            },
        )
    }
    fn umount2(&self, target: &Path, flags: i32) -> SysResult<()> {
        self.rec("umount2", Call::Umount(target.to_path_buf(), flags))
    }
    fn make_readonly(&self, target: &Path, recursive: bool) -> SysResult<()> {
        self.rec(
            "mount_setattr",
            Call::MakeReadonly(target.to_path_buf(), recursive),
        )
    }
    fn set_mount_attrs(
        &self,
        target: &Path,
        set: u64,
        clear: u64,
        recursive: bool,
    ) -> SysResult<()> {
        self.rec(
            "mount_setattr",
            Call::SetMountAttrs(target.to_path_buf(), set, clear, recursive),
        )
    }
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> SysResult<()> {
        self.rec(
            "pivot_root",
            Call::PivotRoot(new_root.to_path_buf(), put_old.to_path_buf()),
        )
    }
    fn chroot(&self, path: &Path) -> SysResult<()> {
        self.rec("chroot", Call::Chroot(path.to_path_buf()))
    }
    fn chdir(&self, path: &Path) -> SysResult<()> {
        self.rec("chdir", Call::Chdir(path.to_path_buf()))
    }
    fn open_dir(&self, path: &Path) -> SysResult<OwnedFd> {
        self.rec("open_dir", Call::OpenDir(path.to_path_buf()))?;
        // A real descriptor (to /dev/null) stands for the directory.
        let fd: OwnedFd = std::fs::File::open("/dev/null")
            .map_err(|e| SyscallError::new("open_dir", "fake /dev/null", e))?
            .into();
        self.opened
            .borrow_mut()
            .insert(fd.as_raw_fd(), path.to_path_buf());
        Ok(fd)
    }
    fn fchdir(&self, fd: BorrowedFd<'_>) -> SysResult<()> {
        let path = self
            .opened
            .borrow()
            .get(&fd.as_raw_fd())
            .cloned()
            .unwrap_or_else(|| PathBuf::from(format!("fd {}", fd.as_raw_fd())));
        self.rec("fchdir", Call::Fchdir(path))
    }
    fn sethostname(&self, name: &str) -> SysResult<()> {
        self.rec("sethostname", Call::Hostname(name.to_string()))
    }
    fn setdomainname(&self, name: &str) -> SysResult<()> {
        self.rec("setdomainname", Call::Domainname(name.to_string()))
    }
    fn mknod(&self, path: &Path, mode: u32, dev: u64) -> SysResult<()> {
        self.rec("mknod", Call::Mknod(path.to_path_buf(), mode, dev))
    }
    fn symlink(&self, target: &Path, link: &Path) -> SysResult<()> {
        self.rec(
            "symlink",
            Call::Symlink(target.to_path_buf(), link.to_path_buf()),
        )
    }
    fn write_file(&self, path: &Path, data: &[u8]) -> SysResult<()> {
        self.rec("write", Call::Write(path.to_path_buf(), data.to_vec()))
    }
    fn is_dir(&self, path: &Path) -> Option<bool> {
        self.paths.borrow().get(path).copied()
    }
    fn resolve_in_root(
        &self,
        root: &Path,
        path: &Path,
        kind: TargetKind,
    ) -> SysResult<ResolvedTarget> {
        self.rec(
            "resolve_in_root",
            Call::Resolve(root.to_path_buf(), path.to_path_buf(), kind),
        )?;
        let rel = path.strip_prefix("/").unwrap_or(path);
        Ok(ResolvedTarget::from_path(root.join(rel)))
    }
    fn mount_holding(&self, path: &Path) -> SysResult<Option<MountEntry>> {
        Ok(crate::mountinfo::mount_holding(&self.mountinfo.borrow(), path).cloned())
    }
    fn copy_tree(&self, from: &Path, to: &Path) -> SysResult<()> {
        self.rec(
            "copy_tree",
            Call::CopyTree(from.to_path_buf(), to.to_path_buf()),
        )
    }
    fn kind_in_root(&self, root: &Path, path: &Path) -> SysResult<Option<NodeKind>> {
        let full = root.join(path.strip_prefix("/").unwrap_or(path));
        if self.symlinks.borrow().contains(&full) {
            return Ok(Some(NodeKind::Symlink));
        }
        Ok(self.paths.borrow().get(&full).map(
            |&dir| {
                if dir {
                    NodeKind::Dir
                } else {
                    NodeKind::Other
                }
            },
        ))
    }
}
