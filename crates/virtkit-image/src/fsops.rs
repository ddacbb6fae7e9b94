//! The file system calls of unpacking, each relative to a directory descriptor inside
//! the layer, never following a symbolic link in the last component.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use virtkit_namespaces::syscalls::openat2_in_root;

use crate::ImageError;

fn cstr(name: &OsStr) -> Result<CString, ImageError> {
    CString::new(name.as_bytes()).map_err(|_| ImageError::BadEntry {
        path: name.to_string_lossy().into_owned(),
        why: "a NUL byte in the name".into(),
    })
}

fn last_err(what: &'static str, name: &OsStr) -> ImageError {
    ImageError::Io {
        what,
        path: Path::new(name).to_path_buf(),
        error: std::io::Error::last_os_error(),
    }
}

/// `/proc/self/fd/N`: the path of an fd for the calls that take no descriptor.
pub(crate) fn fd_path(fd: BorrowedFd<'_>) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// The directory `rel` under `root` (resolved inside it), created with its missing
/// parents (mode 0755), as an `O_PATH` descriptor.
pub(crate) fn dir_in_root(root: BorrowedFd<'_>, rel: &Path) -> Result<OwnedFd, ImageError> {
    let flags = libc::O_PATH | libc::O_DIRECTORY;
    if rel.as_os_str().is_empty() {
        return Ok(openat2_in_root(root, Path::new("."), flags, 0)?);
    }
    match openat2_in_root(root, rel, flags, 0) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.errno() == Some(libc::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let mut fd = openat2_in_root(root, Path::new("."), flags, 0)?;
    let mut prefix = std::path::PathBuf::new();
    for comp in rel.components() {
        prefix.push(comp);
        match openat2_in_root(root, &prefix, flags, 0) {
            Ok(next) => fd = next,
            Err(e) if e.errno() == Some(libc::ENOENT) => {
                let name = cstr(comp.as_os_str())?;
                // SAFETY: mkdirat with a directory fd we own and a valid C string.
                if unsafe { libc::mkdirat(fd.as_raw_fd(), name.as_ptr(), 0o755) } != 0
                    && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
                {
                    return Err(last_err("cannot create directory", prefix.as_os_str()));
                }
                fd = openat2_in_root(root, &prefix, flags, 0)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(fd)
}

/// What sits at `name` in `dir`, without following a link.
pub(crate) fn kind_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Option<u32>, ImageError> {
    let c = cstr(name)?;
    // SAFETY: a zeroed stat is valid; fstatat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a directory fd, a C string and a stat buffer we own.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        return Ok(Some(st.st_mode & libc::S_IFMT));
    }
    if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT) {
        return Ok(None);
    }
    Err(last_err("cannot inspect", name))
}

/// What the file behind `fd` (an `O_PATH` one too) is; `path` names it in errors.
pub(crate) fn kind_of(fd: BorrowedFd<'_>, path: &Path) -> Result<u32, ImageError> {
    // SAFETY: a zeroed stat is valid; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a descriptor we hold, into a stat buffer we own.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(last_err("cannot inspect", path.as_os_str()));
    }
    Ok(st.st_mode & libc::S_IFMT)
}

/// Removes whatever sits at `name` in `dir` (a whole tree for a directory), if anything.
pub(crate) fn remove_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), ImageError> {
    match kind_at(dir, name)? {
        None => Ok(()),
        Some(libc::S_IFDIR) => {
            // remove_dir_all does not follow symbolic links inside the tree.
            let p = fd_path(dir).join(name);
            std::fs::remove_dir_all(&p).map_err(ImageError::io("cannot remove", Path::new(name)))
        }
        Some(_) => {
            let c = cstr(name)?;
            // SAFETY: unlinkat with a directory fd and a C string.
            if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) } != 0 {
                return Err(last_err("cannot remove", name));
            }
            Ok(())
        }
    }
}

/// Creates the regular file `name` in `dir` (it must not exist), open for writing.
pub(crate) fn create_file(dir: BorrowedFd<'_>, name: &OsStr) -> Result<std::fs::File, ImageError> {
    let c = cstr(name)?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: openat with a directory fd and a C string; the fd returned is ours.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags, 0o600) };
    if fd < 0 {
        return Err(last_err("cannot create", name));
    }
    // SAFETY: a new fd nothing else owns.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Creates the directory `name` in `dir` unless one is there; an `O_PATH` fd of it.
pub(crate) fn make_dir(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, ImageError> {
    let c = cstr(name)?;
    // SAFETY: mkdirat with a directory fd and a C string.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o755) } != 0
        && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
    {
        return Err(last_err("cannot create directory", name));
    }
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: openat with a directory fd and a C string; the fd returned is ours.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags) };
    if fd < 0 {
        return Err(last_err("cannot open directory", name));
    }
    // SAFETY: a new fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `symlinkat(target, dir, name)`.
pub(crate) fn symlink(dir: BorrowedFd<'_>, name: &OsStr, target: &OsStr) -> Result<(), ImageError> {
    let (c, t) = (cstr(name)?, cstr(target)?);
    // SAFETY: symlinkat with two C strings and a directory fd.
    if unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) } != 0 {
        return Err(last_err("cannot create symbolic link", name));
    }
    Ok(())
}

/// A hard link `name` in `dir` to the file behind `target` (an `O_PATH` fd).
pub(crate) fn hard_link(
    target: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    name: &OsStr,
) -> Result<(), ImageError> {
    let c = cstr(name)?;
    let from = cstr(fd_path(target).as_os_str())?;
    // SAFETY: linkat with C strings and a directory fd; AT_SYMLINK_FOLLOW resolves the
    // /proc magic link to the very file `target` holds.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r != 0 {
        return Err(last_err("cannot create hard link", name));
    }
    Ok(())
}

/// `mknodat(dir, name, mode, dev)`.
pub(crate) fn mknod(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    mode: u32,
    dev: u64,
) -> Result<(), ImageError> {
    let c = cstr(name)?;
    // SAFETY: mknodat with a directory fd and a C string.
    if unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), mode, dev) } != 0 {
        return Err(last_err("cannot create node", name));
    }
    Ok(())
}

/// Owner, mode and modification time of `name` in `dir`, without following a link
/// (a link's mode is left alone: Linux has none).
pub(crate) fn set_meta(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    owner: Option<(u32, u32)>,
    mode: Option<u32>,
    mtime: Option<u64>,
) -> Result<(), ImageError> {
    let c = cstr(name)?;
    let fd = dir.as_raw_fd();
    if let Some((uid, gid)) = owner {
        // SAFETY: fchownat with a directory fd and a C string.
        if unsafe { libc::fchownat(fd, c.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
            return Err(last_err("cannot change the owner of", name));
        }
    }
    if let Some(m) = mode {
        // SAFETY: fchmodat with a directory fd and a C string (never on a link: the
        // caller passes no mode for one).
        if unsafe { libc::fchmodat(fd, c.as_ptr(), m & 0o7777, 0) } != 0 {
            return Err(last_err("cannot change the mode of", name));
        }
    }
    if let Some(t) = mtime {
        let ts = [
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            libc::timespec {
                tv_sec: libc::time_t::try_from(t).unwrap_or(libc::time_t::MAX),
                tv_nsec: 0,
            },
        ];
        // SAFETY: utimensat with a directory fd, a C string and two timespecs.
        if unsafe { libc::utimensat(fd, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) } != 0 {
            return Err(last_err("cannot set the time of", name));
        }
    }
    Ok(())
}

/// Sets the extended attribute `key` of the file or directory behind `fd`.
pub(crate) fn set_xattr(fd: BorrowedFd<'_>, key: &str, value: &[u8]) -> Result<(), ImageError> {
    let p = cstr(fd_path(fd).as_os_str())?;
    let k = cstr(OsStr::new(key))?;
    // SAFETY: setxattr with C strings and a value buffer of the length passed; the /proc
    // path names the very file the fd holds.
    if unsafe {
        libc::setxattr(
            p.as_ptr(),
            k.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    } != 0
    {
        return Err(last_err("cannot set extended attribute", OsStr::new(key)));
    }
    Ok(())
}
