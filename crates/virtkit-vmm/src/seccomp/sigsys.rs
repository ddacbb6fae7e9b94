//! The `SIGSYS` handler of [`SeccompMode::On`](super::SeccompMode::On): a forbidden system
//! call traps here; the handler writes one line naming the call and the thread to stderr
//! and ends the process with [`EXIT_CODE`](super::EXIT_CODE).
//!
//! It runs under the filter that trapped, so it only calls `write` and `exit_group`
//! (allowed on every thread kind), allocates nothing and takes no lock: the thread's label
//! is a constant-initialised thread-local copied there by [`set_label`].

use std::cell::Cell;
use std::sync::Once;

use super::ThreadKind;

/// A thread's label: its name (as the thread was named) and its filter.
#[derive(Clone, Copy)]
struct Label {
    name: [u8; 16],
    len: u8,
    kind: Option<ThreadKind>,
}

thread_local! {
    static LABEL: Cell<Label> = const {
        Cell::new(Label { name: [0; 16], len: 0, kind: None })
    };
}

/// Records the calling thread's name and filter for the handler's message.
pub(crate) fn set_label(kind: ThreadKind) {
    let mut name = [0u8; 16];
    let current = std::thread::current();
    // std names the main thread only when its own `main` ran: a program with its own C
    // entry point (vm-runner) has an unnamed main thread, which is still "main".
    // SAFETY: getpid and gettid have no preconditions.
    let is_main = unsafe { libc::getpid() == libc::gettid() };
    let fallback = if is_main { "main" } else { "unnamed" };
    let src = current.name().unwrap_or(fallback).as_bytes();
    let len = src.len().min(name.len());
    name[..len].copy_from_slice(&src[..len]);
    LABEL.with(|l| {
        l.set(Label {
            name,
            len: len as u8,
            kind: Some(kind),
        })
    });
}

static INSTALL: Once = Once::new();

/// Installs the process-wide handler (once).
pub(crate) fn install_handler() -> std::io::Result<()> {
    let mut result = Ok(());
    INSTALL.call_once(|| {
        // SAFETY: a zeroed sigaction is valid; we set the handler (an `extern "C"` fn
        // with the SA_SIGINFO signature) and flags, and pass pointers to live values.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            result = Err(std::io::Error::last_os_error());
        }
    });
    result
}

/// A fixed buffer the message is written into (no allocation in a signal handler).
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        let room = self.buf.len() - self.len;
        let n = bytes.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_num(&mut self, mut v: u64, radix: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b"0123456789abcdef"[(v % radix) as usize];
            v /= radix;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The message for a trapped call: `nr` on the thread `label`, with `arg1` shown for an
/// `ioctl` (its request number).
fn message(nr: i64, arg1: u64, name: &[u8], kind: Option<ThreadKind>) -> Line {
    let mut line = Line {
        buf: [0; 256],
        len: 0,
    };
    line.push(b"virtkit-vmm: seccomp: thread ");
    line.push(name);
    if let Some(k) = kind {
        line.push(b" (");
        line.push(k.name().as_bytes());
        line.push(b" filter)");
    }
    line.push(b" made a forbidden system call: ");
    let sys = u32::try_from(nr)
        .ok()
        .and_then(virtkit_seccomp::table::name);
    line.push(sys.unwrap_or("unknown").as_bytes());
    line.push(b" (");
    line.push_num(nr as u64, 10);
    line.push(b")");
    if sys == Some("ioctl") {
        line.push(b" request 0x");
        line.push_num(arg1, 16);
    }
    line.push(b"; the VMM exits\n");
    line
}

extern "C" fn handler(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SIGSYS; `_sigsys` sits at offset 16
    // (`void *_call_addr`, then `int _syscall` at 24) on x86_64, as in <asm/siginfo.h>.
    let nr = unsafe { info.cast::<u8>().add(24).cast::<i32>().read_unaligned() };
    // SAFETY: with SA_SIGINFO the third argument is the interrupted thread's ucontext;
    // RSI held the call's second argument when it trapped.
    let arg1 =
        unsafe { (*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_RSI as usize] };
    let label = LABEL.with(Cell::get);
    let line = message(
        i64::from(nr),
        arg1 as u64,
        &label.name[..usize::from(label.len)],
        label.kind,
    );
    // SAFETY: write and exit_group with a live buffer; both are async-signal-safe and
    // allowed by every filter.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::syscall(libc::SYS_exit_group, super::EXIT_CODE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_call_the_thread_and_an_ioctl_request() {
        let l = message(110, 0, b"vcpu0", Some(ThreadKind::Vcpu));
        let s = std::str::from_utf8(&l.buf[..l.len]).unwrap();
        assert_eq!(
            s,
            "virtkit-vmm: seccomp: thread vcpu0 (vcpu filter) made a forbidden system call: getppid (110); the VMM exits\n"
        );
        let l = message(16, 0xae01, b"vmm", Some(ThreadKind::Vmm));
        let s = std::str::from_utf8(&l.buf[..l.len]).unwrap();
        assert!(s.contains("ioctl (16) request 0xae01;"), "{s}");
        let l = message(99999, 0, b"", None);
        let s = std::str::from_utf8(&l.buf[..l.len]).unwrap();
        assert!(
            s.contains("thread  made a forbidden system call: unknown (99999)"),
            "{s}"
        );
    }
}
