//! Copying a directory tree as it is (modes, owners, symbolic links, device nodes and
//! fifos; never following a link): the `tmpcopyup` of a tmpfs mount, which starts the
//! new tmpfs with what the image had at that place.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::syscalls::{SysResult, SyscallError};

fn err<'a>(call: &'static str, p: &'a Path) -> impl FnOnce(io::Error) -> SyscallError + 'a {
    move |e| SyscallError::new(call, p.display().to_string(), e)
}

/// Gives `to` the owner and mode of `meta` (owner first: chown clears set-id bits).
fn own_and_mode(to: &Path, meta: &fs::Metadata) -> SysResult<()> {
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid())).map_err(err("lchown", to))?;
    if !meta.file_type().is_symlink() {
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(err("chmod", to))?;
    }
    Ok(())
}

/// Copies the contents of directory `from` into directory `to` (which exists), and
/// gives `to` the owner and mode of `from`. Entries below `from` are never followed: a symbolic link
/// is copied as a link, so a link in the image cannot make the copy read host files.
/// Walks with an explicit stack (no recursion), so a deep tree cannot exhaust ours.
pub(crate) fn copy_tree(from: &Path, to: &Path) -> SysResult<()> {
    // `from` itself is followed: it is a resolved target (`/proc/self/fd/N`, a magic
    // link to the directory); what is inside it never is.
    let top = fs::metadata(from).map_err(err("stat", from))?;
    if !top.is_dir() {
        return Err(SyscallError::new(
            "copy_tree",
            from.display().to_string(),
            io::Error::from_raw_os_error(libc::ENOTDIR),
        ));
    }
    let mut dirs: Vec<(PathBuf, PathBuf)> = vec![(from.to_path_buf(), to.to_path_buf())];
    while let Some((src_dir, dst_dir)) = dirs.pop() {
        for entry in fs::read_dir(&src_dir).map_err(err("readdir", &src_dir))? {
            let entry = entry.map_err(err("readdir", &src_dir))?;
            let src = entry.path();
            let dst = dst_dir.join(entry.file_name());
            let meta = fs::symlink_metadata(&src).map_err(err("lstat", &src))?;
            let ft = meta.file_type();
            if ft.is_dir() {
                fs::create_dir(&dst).map_err(err("mkdir", &dst))?;
                dirs.push((src, dst.clone()));
            } else if ft.is_symlink() {
                let target = fs::read_link(&src).map_err(err("readlink", &src))?;
                std::os::unix::fs::symlink(&target, &dst).map_err(err("symlink", &dst))?;
            } else if ft.is_file() {
                fs::copy(&src, &dst).map_err(err("copy", &src))?;
            } else {
                // Device nodes, fifos, sockets: made again with the same type and number.
                let c = CString::new(dst.as_os_str().as_bytes())
                    .map_err(|_| err("mknod", &dst)(io::Error::from_raw_os_error(libc::EINVAL)))?;
                // SAFETY: `c` is a valid NUL-terminated path; mknod takes plain integers.
                let r = unsafe { libc::mknod(c.as_ptr(), meta.mode(), meta.rdev()) };
                if r < 0 {
                    return Err(SyscallError::last("mknod", dst.display().to_string()));
                }
            }
            own_and_mode(&dst, &meta)?;
        }
    }
    own_and_mode(to, &top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_files_dirs_links_and_modes_without_following_links() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let s = src.path();
        fs::create_dir_all(s.join("a/b")).unwrap();
        fs::write(s.join("a/b/f"), b"data").unwrap();
        fs::set_permissions(s.join("a/b/f"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::set_permissions(s.join("a"), fs::Permissions::from_mode(0o711)).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", s.join("link")).unwrap();
        fs::set_permissions(s, fs::Permissions::from_mode(0o750)).unwrap();
        copy_tree(s, dst.path()).unwrap();
        let d = dst.path();
        assert_eq!(fs::read(d.join("a/b/f")).unwrap(), b"data");
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&d.join("a/b/f")), 0o640);
        assert_eq!(mode(&d.join("a")), 0o711);
        assert_eq!(mode(d), 0o750, "the top takes the source's mode");
        assert_eq!(
            fs::read_link(d.join("link")).unwrap(),
            Path::new("/etc/shadow")
        );
        assert!(
            copy_tree(&s.join("a/b/f"), d).is_err(),
            "a file is not a tree"
        );
    }
}
