//! CVE-2019-5736: never run inside a container from a writable host binary.
//!
//! Before `create` and `exec` (and `run`, unless the exec DMZ of `crate::dmz` is
//! enough), the runtime re-executes itself so that
//! `/proc/self/exe` cannot be opened for writing by a container process (through
//! `/proc/<pid>/exe`, or by exec'ing `/proc/self/exe` with a `#!` trick):
//!
//! 1. by default (as crun does): a detached read-only bind mount of the binary
//!    (`open_tree(OPEN_TREE_CLONE)` + `mount_setattr(MOUNT_ATTR_RDONLY)`), attached
//!    nowhere, and re-executed through it with `execveat`, so a reopen of
//!    `/proc/<pid>/exe` for writing fails with EROFS. No copy, no mount namespace.
//!    Set `VIRTKIT_CLONED_BINARY=memfd` to use 2.
//! 2. fallback: a sealed memfd copy of the binary (its loadable part only).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::{bail, Context, Result};

const MFD_CLOEXEC: u32 = 1;
const MFD_ALLOW_SEALING: u32 = 2;
const MFD_EXEC: u32 = 0x10;
const F_ADD_SEALS: i32 = 1033;
const F_GET_SEALS: i32 = 1034;
const F_SEAL_SEAL: i32 = 1;
const F_SEAL_SHRINK: i32 = 2;
const F_SEAL_GROW: i32 = 4;
const F_SEAL_WRITE: i32 = 8;
const ALL_SEALS: i32 = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;

/// Whether the running binary cannot be written through `/proc/self/exe`: a sealed
/// memfd, or a file reached through a read-only mount.
pub fn is_sealed() -> bool {
    static SEALED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SEALED.get_or_init(check_sealed)
}

fn check_sealed() -> bool {
    let Ok(f) = std::fs::File::open("/proc/self/exe") else {
        return false;
    };
    // SAFETY: fcntl on a valid fd.
    let seals = unsafe { libc::fcntl(f.as_raw_fd(), F_GET_SEALS) };
    if seals >= 0 && seals & ALL_SEALS == ALL_SEALS {
        return true;
    }
    // SAFETY: a zeroed statvfs is a valid out-buffer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out-pointer.
    let r = unsafe { libc::fstatvfs(f.as_raw_fd(), &mut st) };
    r == 0 && st.f_flag & libc::ST_RDONLY != 0
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: u64 = 1;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Re-executes through a detached, read-only bind mount of the binary. Returns only on
/// error (the caller then falls back to a memfd copy).
///
/// `open_tree(OPEN_TREE_CLONE)` makes a bind mount of the running binary that is never
/// attached anywhere (no path, no propagation to other mount namespaces, no mount
/// namespace of our own to tear down at exit), `mount_setattr` makes it read-only, and
/// `execveat` runs the binary through it. `/proc/<pid>/exe` then names the file through
/// that read-only mount: reopening it for writing fails with EROFS. The mount cannot be
/// made writable again from a container: it is in no mount namespace the container can
/// reach, and changing it needs CAP_SYS_ADMIN in the initial user namespace. crun reaches
/// the same state with a bind mount on a temporary file that it detaches at once.
fn ro_bind_reexec() -> Result<()> {
    let exe = CString::new("/proc/self/exe")?;
    let empty = CString::new("")?;
    // SAFETY: valid NUL-terminated path; we own the returned fd.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            exe.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        bail!("open_tree(/proc/self/exe): {}", io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: valid fd, empty path with AT_EMPTY_PATH, and a correctly sized mount_attr.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        bail!("mount_setattr(read-only): {}", io::Error::last_os_error());
    }
    exec_fd(fd.as_raw_fd())
}

fn exec_fd(fd: i32) -> Result<()> {
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(std::os::unix::ffi::OsStrExt::as_bytes(a.as_os_str())))
        .collect::<Result<_, _>>()?;
    let env: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut b = std::os::unix::ffi::OsStrExt::as_bytes(k.as_os_str()).to_vec();
            b.push(b'=');
            b.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()));
            CString::new(b)
        })
        .collect::<Result<_, _>>()?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let empty = CString::new("")?;
    // SAFETY: NULL-terminated arrays of valid C strings; AT_EMPTY_PATH executes the fd.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd,
            empty.as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    bail!("execveat: {}", io::Error::last_os_error())
}

/// A close-on-exec memfd that can be sealed (and executed where the kernel asks for
/// MFD_EXEC).
pub fn memfd(name: &str) -> Result<OwnedFd> {
    let name = CString::new(name)?;
    for flags in [
        MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_EXEC,
        MFD_CLOEXEC | MFD_ALLOW_SEALING,
    ] {
        // SAFETY: valid name; we own the returned fd.
        let fd = unsafe { libc::syscall(libc::SYS_memfd_create, name.as_ptr(), flags) };
        if fd >= 0 {
            // SAFETY: fresh fd.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
    }
    bail!("memfd_create: {}", io::Error::last_os_error())
}

/// Seals a memfd against every change (write, grow, shrink, more seals).
pub fn seal(fd: &OwnedFd) -> Result<()> {
    // SAFETY: fcntl on a valid fd.
    if unsafe { libc::fcntl(fd.as_raw_fd(), F_ADD_SEALS, ALL_SEALS) } < 0 {
        bail!("seal memfd: {}", io::Error::last_os_error());
    }
    Ok(())
}

fn u16_at(b: &[u8], o: usize) -> u64 {
    u16::from_le_bytes([b[o], b[o + 1]]) as u64
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// The bytes of an ELF64 executable the kernel needs to run it: up to the end of the
/// last segment (program headers and segments). Debug sections and the section header
/// table after it are not copied; `None` if the file does not look like a plain
/// little-endian ELF64.
pub fn loadable_len(file: &std::fs::File, file_len: u64) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut eh = [0u8; 64];
    file.read_exact_at(&mut eh, 0).ok()?;
    if &eh[0..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return None;
    }
    let phoff = u64_at(&eh, 0x20);
    let phentsize = u16_at(&eh, 0x36);
    let phnum = u16_at(&eh, 0x38);
    if phentsize < 56 || phnum == 0 || phnum > 64 {
        return None;
    }
    let mut ph = vec![0u8; (phentsize * phnum) as usize];
    file.read_exact_at(&mut ph, phoff).ok()?;
    let mut end = phoff + phentsize * phnum;
    for i in 0..phnum as usize {
        let p = &ph[i * phentsize as usize..];
        end = end.max(u64_at(p, 8).checked_add(u64_at(p, 32))?);
    }
    (end <= file_len).then_some(end)
}

/// Re-executes from a sealed memfd copy unless already running from one. Returns only
/// when already sealed (or on error).
///
/// Only the loadable part of the binary is copied (see [`loadable_len`]) and the copy's
/// ELF header is patched to say it has no section headers: with the release profile's
/// line tables the file is ~20 MB but only ~4 MB is code and data, and the copy is on
/// every `create`.
pub fn ensure() -> Result<()> {
    if is_sealed() {
        return Ok(());
    }
    if std::env::var_os("VIRTKIT_CLONED_BINARY").is_none_or(|v| v != "memfd") {
        // Returns only on failure; then copy.
        let _ = ro_bind_reexec();
    }
    let exe = std::fs::File::open("/proc/self/exe").context("open /proc/self/exe")?;
    let full = exe.metadata()?.len();
    let trimmed = loadable_len(&exe, full);
    let len = trimmed.unwrap_or(full);
    let mfd = memfd("container-runner")?;
    let mut off: libc::off_t = 0;
    let mut left = len as usize;
    while left > 0 {
        // SAFETY: both fds are valid; the kernel copies between them.
        let n = unsafe { libc::sendfile(mfd.as_raw_fd(), exe.as_raw_fd(), &mut off, left) };
        if n <= 0 {
            bail!(
                "copy /proc/self/exe to memfd: {}",
                io::Error::last_os_error()
            );
        }
        left -= n as usize;
    }
    if trimmed.is_some() {
        // e_shoff = 0, e_shentsize/e_shnum/e_shstrndx = 0: no section headers.
        let zeros = [0u8; 8];
        use std::os::unix::fs::FileExt;
        let m = std::fs::File::from(mfd.try_clone()?);
        m.write_all_at(&zeros, 0x28)
            .context("patch memfd ELF header")?;
        m.write_all_at(&zeros[..6], 0x3a)
            .context("patch memfd ELF header")?;
    }
    seal(&mfd)?;
    exec_fd(mfd.as_raw_fd()).context("exec the memfd copy")
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_binary_trims_to_its_segments() {
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        let full = f.metadata().unwrap().len();
        let n = super::loadable_len(&f, full).unwrap();
        assert!(n > 4096 && n <= full, "{n} of {full}");
        // Not an ELF file.
        let t = std::fs::File::open("/proc/self/cmdline").unwrap();
        assert!(super::loadable_len(&t, 100).is_none());
    }
}
