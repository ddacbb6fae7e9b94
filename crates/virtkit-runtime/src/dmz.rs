//! The exec "DMZ": a tiny sealed program that `run`'s init execs the container process
//! through, so that at that `execve` `/proc/self/exe` is not the runtime binary.
//!
//! CVE-2019-5736 needs a container process to reach a runtime process's
//! `/proc/<pid>/exe` while it is the (writable) runtime binary: by running
//! `/proc/self/exe` (or a `#!/proc/self/exe` script) as the entry point, which the kernel
//! resolves in the exec'ing process, or by opening `/proc/<pid>/exe` of a runtime process
//! it can see. `create` and `exec` guard against both by re-executing the whole runtime
//! from a read-only mount of itself first (`crate::cloned`). `run` of a container with a
//! new PID namespace, no hooks that run inside it and no seccomp profile has a shorter
//! way: no container process exists until init's execve (nothing can see init, whose
//! state reads "creating", so `exec` refuses it, until init is gone through that execve),
//! so only the execve itself needs guarding. Init execs this program from a sealed memfd,
//! and it execs the container process: a `/proc/self/exe` met there is this program,
//! which cannot be written. That saves the runtime a second start (the re-exec) per
//! `run`. runc's "runc-dmz" was the same idea.
//!
//! The program is a 300-byte static x86-64 ELF built here (no libc): `argv[1]` is the
//! path to exec, `argv[2..]` its argv, the environment is passed on; if `execve` fails it
//! writes a line to stderr and exits with 127.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::error::{bail, Context, Result};

/// The message written to stderr when the container process cannot be exec'd.
pub const EXEC_FAILED: &[u8] = b"container-runner: execve of the container process failed\n";

const BASE: u64 = 0x40_0000;
const EHDR: usize = 64;
const PHDR: usize = 56;
const CODE_OFF: usize = EHDR + 2 * PHDR;

/// The machine code; `{rel}` (4 bytes at [`MSG_REL_AT`]) is patched to reach the message.
#[rustfmt::skip]
const CODE: &[u8] = &[
    0x48, 0x8b, 0x7c, 0x24, 0x10,       // mov  rdi, [rsp+16]        argv[1]: the path
    0x48, 0x8d, 0x74, 0x24, 0x18,       // lea  rsi, [rsp+24]        &argv[2]: its argv
    0x48, 0x8b, 0x04, 0x24,             // mov  rax, [rsp]           argc
    0x48, 0x8d, 0x54, 0xc4, 0x10,       // lea  rdx, [rsp+rax*8+16]  envp
    0xb8, 0x3b, 0x00, 0x00, 0x00,       // mov  eax, 59              execve
    0x0f, 0x05,                         // syscall
    0xbf, 0x02, 0x00, 0x00, 0x00,       // mov  edi, 2               stderr
    0x48, 0x8d, 0x35, 0, 0, 0, 0,       // lea  rsi, [rip+rel]       the message
    0xba, 0, 0, 0, 0,                   // mov  edx, len
    0xb8, 0x01, 0x00, 0x00, 0x00,       // mov  eax, 1               write
    0x0f, 0x05,                         // syscall
    0xbf, 0x7f, 0x00, 0x00, 0x00,       // mov  edi, 127
    0xb8, 0xe7, 0x00, 0x00, 0x00,       // mov  eax, 231             exit_group
    0x0f, 0x05,                         // syscall
];
/// Offset in [`CODE`] of the `lea rsi` displacement, and of the end of that instruction.
const MSG_REL_AT: usize = 34;
const MSG_REL_END: usize = 38;
/// Offset in [`CODE`] of the `mov edx` immediate.
const MSG_LEN_AT: usize = 39;

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The ELF image: header, a PT_LOAD of the whole file (read + execute) and a
/// PT_GNU_STACK (non-executable stack), then the code and the message.
pub fn image() -> Vec<u8> {
    let total = CODE_OFF + CODE.len() + EXEC_FAILED.len();
    let mut b = vec![0u8; total];
    b[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00"); // ELF64, little endian, SysV
    put_u16(&mut b, 16, 2); // ET_EXEC
    put_u16(&mut b, 18, 62); // EM_X86_64
    put_u32(&mut b, 20, 1); // EV_CURRENT
    put_u64(&mut b, 24, BASE + CODE_OFF as u64); // e_entry
    put_u64(&mut b, 32, EHDR as u64); // e_phoff
    put_u16(&mut b, 52, EHDR as u16); // e_ehsize
    put_u16(&mut b, 54, PHDR as u16); // e_phentsize
    put_u16(&mut b, 56, 2); // e_phnum
                            // PT_LOAD, PF_R | PF_X, the whole file at BASE.
    let p = EHDR;
    put_u32(&mut b, p, 1);
    put_u32(&mut b, p + 4, 5);
    put_u64(&mut b, p + 16, BASE);
    put_u64(&mut b, p + 24, BASE);
    put_u64(&mut b, p + 32, total as u64);
    put_u64(&mut b, p + 40, total as u64);
    put_u64(&mut b, p + 48, 0x1000);
    // PT_GNU_STACK, PF_R | PF_W.
    let p = EHDR + PHDR;
    put_u32(&mut b, p, 0x6474_e551);
    put_u32(&mut b, p + 4, 6);
    put_u64(&mut b, p + 48, 16);
    b[CODE_OFF..CODE_OFF + CODE.len()].copy_from_slice(CODE);
    let msg_at = CODE.len() - MSG_REL_END;
    put_u32(&mut b, CODE_OFF + MSG_REL_AT, msg_at as u32);
    put_u32(&mut b, CODE_OFF + MSG_LEN_AT, EXEC_FAILED.len() as u32);
    b[CODE_OFF + CODE.len()..].copy_from_slice(EXEC_FAILED);
    b
}

/// A sealed (no write, grow, shrink or reseal), close-on-exec memfd holding [`image`].
pub fn sealed() -> Result<OwnedFd> {
    let fd = crate::cloned::memfd("container-runner-dmz")?;
    let img = image();
    // SAFETY: writes from a valid buffer of the given length to our own fd.
    let n = unsafe { libc::write(fd.as_raw_fd(), img.as_ptr().cast(), img.len()) };
    if n != img.len() as isize {
        bail!("write the exec DMZ: {}", io::Error::last_os_error());
    }
    crate::cloned::seal(&fd).context("seal the exec DMZ")?;
    Ok(fd)
}

/// Execs `exe` with `argv` and `envp` through the DMZ in `dmz`; returns only on failure.
pub fn exec(dmz: &OwnedFd, exe: &CString, argv: &[CString], envp: &[CString]) -> io::Error {
    let name = c"container-runner-dmz";
    let mut args: Vec<*const libc::c_char> = vec![name.as_ptr(), exe.as_ptr()];
    args.extend(argv.iter().map(|a| a.as_ptr()));
    args.push(std::ptr::null());
    let mut env: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    env.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of valid C strings that outlive the call; an empty
    // path with AT_EMPTY_PATH executes the fd itself.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            dmz.as_raw_fd(),
            c"".as_ptr(),
            args.as_ptr(),
            env.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    io::Error::last_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, RawFd};

    /// Forks, execs `exe argv` through the DMZ with stdout and stderr on a pipe;
    /// returns (exit status, output).
    fn run(exe: &str, argv: &[&str]) -> (i32, String) {
        let dmz = sealed().unwrap();
        let exe = CString::new(exe).unwrap();
        let argv: Vec<CString> = argv.iter().map(|a| CString::new(*a).unwrap()).collect();
        let envp = vec![CString::new("X=from-env").unwrap()];
        let mut p: [RawFd; 2] = [0; 2];
        // SAFETY: a valid two-int array for pipe2.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: the child only calls async-signal-safe functions (dup2, execveat via
        // the prepared arrays, _exit) before exec.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: valid fds; dup2 clears close-on-exec on the copies.
            unsafe {
                libc::dup2(p[1], 1);
                libc::dup2(p[1], 2);
            }
            let _ = exec(&dmz, &exe, &argv, &envp);
            // SAFETY: leave the child at once.
            unsafe { libc::_exit(99) };
        }
        // SAFETY: our write end, closed once.
        unsafe { libc::close(p[1]) };
        // SAFETY: p[0] is ours and is not used elsewhere.
        let mut r = unsafe { std::fs::File::from_raw_fd(p[0]) };
        let mut out = String::new();
        std::io::Read::read_to_string(&mut r, &mut out).unwrap();
        let mut st = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        assert!(libc::WIFEXITED(st), "status {st:#x}");
        (libc::WEXITSTATUS(st), out)
    }

    #[test]
    fn execs_the_program_with_its_argv_and_environment() {
        let (code, out) = run("/bin/sh", &["sh", "-c", "echo $0 $1 $X", "zero", "one"]);
        assert_eq!((code, out.as_str()), (0, "zero one from-env\n"));
    }

    #[test]
    fn a_failed_exec_says_so_and_exits_127() {
        let (code, out) = run("/nonexistent/program", &["program"]);
        assert_eq!(code, 127);
        assert_eq!(out.as_bytes(), EXEC_FAILED);
    }

    #[test]
    fn proc_self_exe_is_the_sealed_dmz_itself() {
        // Exec'ing /proc/self/exe from the DMZ runs the DMZ again (here with no path
        // left: it reports the failed exec), never the runtime binary.
        let (code, out) = run("/proc/self/exe", &["x"]);
        assert_eq!(code, 127);
        assert_eq!(out.as_bytes(), EXEC_FAILED);
        let img = image();
        assert!(img.len() < 400, "{} bytes", img.len());
    }
}
