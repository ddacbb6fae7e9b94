//! The syscalls the namespace and rootfs logic needs, behind one small trait.
//!
//! [`LinuxSyscalls`] calls the kernel; `RecordingSyscalls` (feature `test-utils`) records
//! every call so the logic can be unit-tested without root.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::mountinfo::MountEntry;

/// A failed syscall: which call, on what, and the OS error.
#[derive(Debug, thiserror::Error)]
#[error("{call}({what}): {err}")]
pub struct SyscallError {
    /// The syscall (or libc function) name.
    pub call: &'static str,
    /// The object it acted on (a path, a flag set).
    pub what: String,
    /// The error the kernel returned.
    pub err: io::Error,
}

impl SyscallError {
    /// Builds an error from `errno` right after a failed call.
    pub fn last(call: &'static str, what: impl Into<String>) -> Self {
        Self {
            call,
            what: what.into(),
            err: io::Error::last_os_error(),
        }
    }

    /// Builds an error from an explicit `io::Error`.
    pub fn new(call: &'static str, what: impl Into<String>, err: io::Error) -> Self {
        Self {
            call,
            what: what.into(),
            err,
        }
    }

    /// The raw errno, if any.
    pub fn errno(&self) -> Option<i32> {
        self.err.raw_os_error()
    }
}

/// Result of a syscall wrapper.
pub type SysResult<T> = Result<T, SyscallError>;

/// What kind of object a mount target must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// A directory (created with all its parents if missing).
    Dir,
    /// A regular file (created empty if missing; parents created as directories).
    File,
}

/// `MOUNT_ATTR_*` bits of `mount_setattr(2)` (`linux/mount.h`).
pub mod mount_attr {
    /// Read-only.
    pub const RDONLY: u64 = 0x1;
    /// Ignore suid and sgid bits.
    pub const NOSUID: u64 = 0x2;
    /// No device files.
    pub const NODEV: u64 = 0x4;
    /// No program execution.
    pub const NOEXEC: u64 = 0x8;
    /// The access-time field (clear it whole to set one of the three below).
    pub const ATIME_MASK: u64 = 0x70;
    /// Update atime relative to mtime/ctime (the value 0 of the field).
    pub const RELATIME: u64 = 0x0;
    /// Never update atime.
    pub const NOATIME: u64 = 0x10;
    /// Always update atime.
    pub const STRICTATIME: u64 = 0x20;
    /// Never update directory atime.
    pub const NODIRATIME: u64 = 0x80;
    /// Do not follow symbolic links (Linux 5.14).
    pub const NOSYMFOLLOW: u64 = 0x0020_0000;
}

/// What a path names, its last component not followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else (a file, a device, a socket...).
    Other,
}

/// A mount target resolved inside a root: the path to hand to `mount(2)`.
///
/// The real implementation holds an `O_PATH` fd opened with `RESOLVE_IN_ROOT`, and the
/// path is `/proc/self/fd/N`, so a symlink in the image can never redirect the mount
/// outside the root.
#[derive(Debug)]
pub struct ResolvedTarget {
    path: PathBuf,
    _fd: Option<OwnedFd>,
}

impl ResolvedTarget {
    /// A target that is just a path (used by fakes).
    pub fn from_path(path: PathBuf) -> Self {
        Self { path, _fd: None }
    }

    /// The path to pass to `mount(2)`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The kernel interface the namespace and rootfs code uses. Each syscall is wrapped once.
pub trait Syscalls {
    /// `unshare(2)` with `CLONE_NEW*` flags.
    fn unshare(&self, flags: i32) -> SysResult<()>;
    /// `setns(2)` into the namespace behind `fd` (`nstype` 0 accepts any).
    fn setns(&self, fd: BorrowedFd<'_>, nstype: i32) -> SysResult<()>;
    /// `mount(2)`.
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: u64,
        data: Option<&str>,
    ) -> SysResult<()>;
    /// `umount2(2)`.
    fn umount2(&self, target: &Path, flags: i32) -> SysResult<()>;
    /// `mount_setattr(2)` making a mount tree read-only (recursively when `recursive`).
    fn make_readonly(&self, target: &Path, recursive: bool) -> SysResult<()>;
    /// `mount_setattr(2)` on the mount at `target` (its whole tree when `recursive`):
    /// sets the [`mount_attr`] bits in `set` and clears those in `clear`.
    fn set_mount_attrs(
        &self,
        target: &Path,
        set: u64,
        clear: u64,
        recursive: bool,
    ) -> SysResult<()>;
    /// `pivot_root(2)`.
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> SysResult<()>;
    /// `chroot(2)`.
    fn chroot(&self, path: &Path) -> SysResult<()>;
    /// `chdir(2)`.
    fn chdir(&self, path: &Path) -> SysResult<()>;
    /// Opens a directory as an `O_PATH` descriptor (to come back to it with [`fchdir`]).
    ///
    /// [`fchdir`]: Syscalls::fchdir
    fn open_dir(&self, path: &Path) -> SysResult<OwnedFd>;
    /// `fchdir(2)`.
    fn fchdir(&self, fd: BorrowedFd<'_>) -> SysResult<()>;
    /// `sethostname(2)`.
    fn sethostname(&self, name: &str) -> SysResult<()>;
    /// `setdomainname(2)`.
    fn setdomainname(&self, name: &str) -> SysResult<()>;
    /// `mknod(2)`.
    fn mknod(&self, path: &Path, mode: u32, dev: u64) -> SysResult<()>;
    /// `symlink(2)`: create `link` pointing at `target`.
    fn symlink(&self, target: &Path, link: &Path) -> SysResult<()>;
    /// Writes `data` to an existing file (procfs knobs such as `uid_map`).
    fn write_file(&self, path: &Path, data: &[u8]) -> SysResult<()>;
    /// Whether `path` exists and is a directory (`None` if it does not exist).
    fn is_dir(&self, path: &Path) -> Option<bool>;
    /// Resolves `path` inside `root` (`openat2` with `RESOLVE_IN_ROOT`), creating it as
    /// `kind` (and its parents as directories) when missing.
    fn resolve_in_root(
        &self,
        root: &Path,
        path: &Path,
        kind: TargetKind,
    ) -> SysResult<ResolvedTarget>;
    /// The mount that holds `path` in this mount namespace (its symbolic links resolved;
    /// from `/proc/self/mountinfo`), `None` when no mount does.
    fn mount_holding(&self, path: &Path) -> SysResult<Option<MountEntry>>;
    /// What `path` inside `root` is, its parents resolved in the root (`openat2` with
    /// `RESOLVE_IN_ROOT`) and its last component not followed (`O_NOFOLLOW`); `None`
    /// when it does not exist. Creates nothing.
    fn kind_in_root(&self, root: &Path, path: &Path) -> SysResult<Option<NodeKind>>;
    /// Copies the contents of directory `from` into the existing directory `to`, modes,
    /// owners, symbolic links (never followed) and device nodes as they are, and gives
    /// `to` the owner and mode of `from` (a tmpfs mount's `tmpcopyup`).
    fn copy_tree(&self, from: &Path, to: &Path) -> SysResult<()>;
}

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscalls;

/// Converts a path to a C string (paths with NUL bytes are rejected).
pub fn cpath(p: &Path) -> SysResult<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        SyscallError::new(
            "path",
            p.display().to_string(),
            io::Error::from_raw_os_error(libc::EINVAL),
        )
    })
}

fn cstr(s: &str) -> SysResult<CString> {
    CString::new(s).map_err(|_| {
        SyscallError::new(
            "string",
            s.to_string(),
            io::Error::from_raw_os_error(libc::EINVAL),
        )
    })
}

fn check(ret: libc::c_int, call: &'static str, what: impl FnOnce() -> String) -> SysResult<()> {
    if ret < 0 {
        Err(SyscallError::last(call, what()))
    } else {
        Ok(())
    }
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

thread_local! {
    /// The root directory [`LinuxSyscalls::resolve_in_root`] opened last, by path: a
    /// rootfs setup resolves a few dozen targets in one root. Dropped by every call that
    /// can change what that path names: a mount on a plain path (such as the rootfs
    /// bound onto itself), a mount over the root itself, `umount2`, `pivot_root` and
    /// `chroot`. (Mounts on a resolved target, `/proc/self/fd/N` below the root, cannot.)
    static ROOT_FD: std::cell::RefCell<Option<(PathBuf, OwnedFd)>> =
        const { std::cell::RefCell::new(None) };
}

fn forget_root_fd() {
    ROOT_FD.with(|r| r.borrow_mut().take());
}

/// Runs `f` with an fd of the directory `root`, opened once and kept (see [`ROOT_FD`]).
fn with_root_fd<T>(root: &Path, f: impl FnOnce(BorrowedFd<'_>) -> SysResult<T>) -> SysResult<T> {
    ROOT_FD.with(|cell| {
        let mut slot = cell.borrow_mut();
        let (path, fd) = match slot.take() {
            Some((p, fd)) if p == root => (p, fd),
            _ => {
                let fd: OwnedFd = File::open(root)
                    .map_err(|e| SyscallError::new("open", root.display().to_string(), e))?
                    .into();
                (root.to_path_buf(), fd)
            }
        };
        let r = f(fd.as_fd());
        *slot = Some((path, fd));
        r
    })
}

/// `openat2(dirfd, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`.
pub fn openat2_in_root(
    dirfd: BorrowedFd<'_>,
    path: &Path,
    flags: i32,
    mode: u32,
) -> SysResult<OwnedFd> {
    let c = cpath(path)?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: u64::from(mode),
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `c` is a valid NUL-terminated string and `how` a properly laid out
    // `struct open_how` of the size we pass; the kernel does not keep either pointer.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd.as_raw_fd(),
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if ret < 0 {
        return Err(SyscallError::last("openat2", path.display().to_string()));
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

/// Creates the missing components of `comps` under `root_fd` (directories, and the
/// last one as `kind`) and returns an `O_PATH` fd of the last one. The deepest existing
/// ancestor is looked for from the parent up (usually only the last component is
/// missing). Every lookup starts again from the root with `RESOLVE_IN_ROOT`, so
/// neither `..` nor an absolute symlink met on the way can leave it.
fn create_in_root(
    root_fd: BorrowedFd<'_>,
    comps: &[&OsStr],
    kind: TargetKind,
) -> SysResult<OwnedFd> {
    let prefix = |n: usize| -> PathBuf { comps[..n].iter().collect() };
    let mut have = comps.len().saturating_sub(1);
    let mut parent: Option<OwnedFd> = None;
    while have > 0 {
        match openat2_in_root(root_fd, &prefix(have), libc::O_PATH, 0) {
            Ok(fd) => {
                parent = Some(fd);
                break;
            }
            Err(e) if e.errno() == Some(libc::ENOENT) => have -= 1,
            Err(e) => return Err(e),
        }
    }
    for i in have..comps.len() {
        let dir = parent.as_ref().map_or(root_fd, |p| p.as_fd());
        let name = comps[i];
        if i + 1 == comps.len() && kind == TargetKind::File {
            match openat2_in_root(dir, Path::new(name), libc::O_CREAT | libc::O_WRONLY, 0o644) {
                Ok(_) => {}
                Err(e) if e.errno() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e),
            }
        } else {
            mkdirat(dir, name, 0o755)?;
        }
        parent = Some(openat2_in_root(root_fd, &prefix(i + 1), libc::O_PATH, 0)?);
    }
    match parent {
        Some(fd) => Ok(fd),
        None => openat2_in_root(root_fd, Path::new("."), libc::O_PATH, 0),
    }
}

fn mkdirat(dirfd: BorrowedFd<'_>, name: &OsStr, mode: u32) -> SysResult<()> {
    let c = CString::new(name.as_bytes()).map_err(|_| {
        SyscallError::new(
            "mkdirat",
            name.to_string_lossy().into_owned(),
            io::Error::from_raw_os_error(libc::EINVAL),
        )
    })?;
    // SAFETY: valid fd and NUL-terminated name.
    let ret = unsafe { libc::mkdirat(dirfd.as_raw_fd(), c.as_ptr(), mode) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(SyscallError::new(
                "mkdirat",
                name.to_string_lossy().into_owned(),
                e,
            ));
        }
    }
    Ok(())
}

impl Syscalls for LinuxSyscalls {
    fn unshare(&self, flags: i32) -> SysResult<()> {
        // SAFETY: unshare takes only an integer.
        check(unsafe { libc::unshare(flags) }, "unshare", || {
            format!("{flags:#x}")
        })
    }

    fn setns(&self, fd: BorrowedFd<'_>, nstype: i32) -> SysResult<()> {
        // SAFETY: `fd` is a valid borrowed fd.
        let ret = unsafe { libc::setns(fd.as_raw_fd(), nstype) };
        check(ret, "setns", || {
            format!("fd {} type {nstype:#x}", fd.as_raw_fd())
        })
    }

    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: u64,
        data: Option<&str>,
    ) -> SysResult<()> {
        if !target.starts_with("/proc/self/fd") {
            forget_root_fd();
        }
        let src = source.map(cpath).transpose()?;
        let tgt = cpath(target)?;
        let fst = fstype.map(cstr).transpose()?;
        let dat = data.map(cstr).transpose()?;
        // SAFETY: every pointer is either null or a valid NUL-terminated string that
        // outlives the call.
        let ret = unsafe {
            libc::mount(
                src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
                tgt.as_ptr(),
                fst.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
                flags as libc::c_ulong,
                dat.as_ref()
                    .map_or(std::ptr::null(), |s| s.as_ptr() as *const libc::c_void),
            )
        };
        check(ret, "mount", || {
            format!(
                "{} on {} type {} flags {flags:#x}",
                source.map_or("none".into(), |s| s.display().to_string()),
                target.display(),
                fstype.unwrap_or("none")
            )
        })
    }

    fn umount2(&self, target: &Path, flags: i32) -> SysResult<()> {
        forget_root_fd();
        let t = cpath(target)?;
        // SAFETY: valid NUL-terminated path.
        let ret = unsafe { libc::umount2(t.as_ptr(), flags) };
        check(ret, "umount2", || target.display().to_string())
    }

    fn make_readonly(&self, target: &Path, recursive: bool) -> SysResult<()> {
        self.set_mount_attrs(target, mount_attr::RDONLY, 0, recursive)
    }

    fn set_mount_attrs(
        &self,
        target: &Path,
        set: u64,
        clear: u64,
        recursive: bool,
    ) -> SysResult<()> {
        #[repr(C)]
        struct MountAttr {
            attr_set: u64,
            attr_clr: u64,
            propagation: u64,
            userns_fd: u64,
        }
        const AT_RECURSIVE: u32 = 0x8000;
        let t = cpath(target)?;
        let attr = MountAttr {
            attr_set: set,
            attr_clr: clear,
            propagation: 0,
            userns_fd: 0,
        };
        let flags = if recursive { AT_RECURSIVE } else { 0 };
        // SAFETY: valid path and a `struct mount_attr` of the size passed.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                t.as_ptr(),
                flags,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        check(ret as i32, "mount_setattr", || target.display().to_string())
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> SysResult<()> {
        forget_root_fd();
        let n = cpath(new_root)?;
        let o = cpath(put_old)?;
        // SAFETY: valid NUL-terminated paths.
        let ret = unsafe { libc::syscall(libc::SYS_pivot_root, n.as_ptr(), o.as_ptr()) };
        check(ret as i32, "pivot_root", || new_root.display().to_string())
    }

    fn chroot(&self, path: &Path) -> SysResult<()> {
        forget_root_fd();
        let p = cpath(path)?;
        // SAFETY: valid NUL-terminated path.
        check(unsafe { libc::chroot(p.as_ptr()) }, "chroot", || {
            path.display().to_string()
        })
    }

    fn chdir(&self, path: &Path) -> SysResult<()> {
        let p = cpath(path)?;
        // SAFETY: valid NUL-terminated path.
        check(unsafe { libc::chdir(p.as_ptr()) }, "chdir", || {
            path.display().to_string()
        })
    }

    fn open_dir(&self, path: &Path) -> SysResult<OwnedFd> {
        let p = cpath(path)?;
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
        // SAFETY: valid NUL-terminated path; the result is checked before it is owned.
        let fd = unsafe { libc::open(p.as_ptr(), flags) };
        check(fd, "open", || path.display().to_string())?;
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn fchdir(&self, fd: BorrowedFd<'_>) -> SysResult<()> {
        // SAFETY: `fd` is a valid borrowed descriptor.
        check(unsafe { libc::fchdir(fd.as_raw_fd()) }, "fchdir", || {
            format!("fd {}", fd.as_raw_fd())
        })
    }

    fn sethostname(&self, name: &str) -> SysResult<()> {
        // SAFETY: pointer and length describe `name`.
        let ret = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
        check(ret, "sethostname", || name.to_string())
    }

    fn setdomainname(&self, name: &str) -> SysResult<()> {
        // SAFETY: pointer and length describe `name`.
        let ret = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
        check(ret, "setdomainname", || name.to_string())
    }

    fn mknod(&self, path: &Path, mode: u32, dev: u64) -> SysResult<()> {
        let p = cpath(path)?;
        // SAFETY: valid NUL-terminated path.
        let ret = unsafe { libc::mknod(p.as_ptr(), mode, dev) };
        check(ret, "mknod", || path.display().to_string())?;
        // mknod applied the umask: set the permissions asked for.
        // SAFETY: valid NUL-terminated path.
        let ret = unsafe { libc::chmod(p.as_ptr(), mode & 0o7777) };
        check(ret, "chmod", || path.display().to_string())
    }

    fn symlink(&self, target: &Path, link: &Path) -> SysResult<()> {
        std::os::unix::fs::symlink(target, link)
            .map_err(|e| SyscallError::new("symlink", link.display().to_string(), e))
    }

    fn write_file(&self, path: &Path, data: &[u8]) -> SysResult<()> {
        std::fs::write(path, data)
            .map_err(|e| SyscallError::new("write", path.display().to_string(), e))
    }

    fn is_dir(&self, path: &Path) -> Option<bool> {
        std::fs::metadata(path).ok().map(|m| m.is_dir())
    }

    fn copy_tree(&self, from: &Path, to: &Path) -> SysResult<()> {
        crate::copy::copy_tree(from, to)
    }

    fn kind_in_root(&self, root: &Path, path: &Path) -> SysResult<Option<NodeKind>> {
        let rel: PathBuf = path
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        if rel.as_os_str().is_empty() {
            return Ok(Some(NodeKind::Dir));
        }
        let fd = with_root_fd(root, |root_fd| {
            match openat2_in_root(root_fd, &rel, libc::O_PATH | libc::O_NOFOLLOW, 0) {
                Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
                r => r.map(Some),
            }
        })?;
        let Some(fd) = fd else {
            return Ok(None);
        };
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `fd` is an open O_PATH descriptor we own (fstat accepts those) and
        // `st` has room for one `struct stat`, which the kernel fills on success.
        let r = unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) };
        check(r, "fstat", || path.display().to_string())?;
        // SAFETY: fstat succeeded, so it initialised `st`.
        let mode = unsafe { st.assume_init() }.st_mode & libc::S_IFMT;
        Ok(Some(match mode {
            libc::S_IFDIR => NodeKind::Dir,
            libc::S_IFLNK => NodeKind::Symlink,
            _ => NodeKind::Other,
        }))
    }

    fn resolve_in_root(
        &self,
        root: &Path,
        path: &Path,
        kind: TargetKind,
    ) -> SysResult<ResolvedTarget> {
        let comps: Vec<&OsStr> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect();
        let whole: PathBuf = if comps.is_empty() {
            PathBuf::from(".")
        } else {
            comps.iter().collect()
        };
        // Usually the target exists: one lookup, confined to the root.
        let fd = with_root_fd(root, |root_fd| {
            match openat2_in_root(root_fd, &whole, libc::O_PATH, 0) {
                Err(e) if e.errno() == Some(libc::ENOENT) => create_in_root(root_fd, &comps, kind),
                r => r,
            }
        })?;
        if comps.is_empty() {
            // The caller is about to mount over the root itself.
            forget_root_fd();
        }
        Ok(ResolvedTarget {
            path: PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
            _fd: Some(fd),
        })
    }

    fn mount_holding(&self, path: &Path) -> SysResult<Option<MountEntry>> {
        let real = std::fs::canonicalize(path)
            .map_err(|e| SyscallError::new("realpath", path.display().to_string(), e))?;
        let info = "/proc/self/mountinfo";
        let text = std::fs::read_to_string(info).map_err(|e| SyscallError::new("read", info, e))?;
        let entries = crate::mountinfo::parse(&text);
        Ok(crate::mountinfo::mount_holding(&entries, &real).cloned())
    }
}
