//! The allow lists, as data: one list per [`ThreadKind`], each entry a system call with,
//! where it matters, a check of one argument. Everything else is refused.
//!
//! How the lists were made and are kept right: each thread kind runs its filter in every
//! `kvm_` test of vm-runner (tiny guests on `/dev/kvm`) and in the lab test that boots a
//! Linux guest with a disk, a network and the API exercised (`lab_jail.rs`); any call
//! outside its list kills the VMM with a message naming it, so a new call fails CI.

use virtkit_net::tap;
use virtkit_vcpu::ioctls::HypervisorIoctls;

use super::ThreadKind;

/// One entry of an allow list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allow {
    /// The system call, whatever its arguments.
    Any(&'static str),
    /// The system call when argument `index` is one of `values`.
    ArgIn {
        /// The system call.
        name: &'static str,
        /// The argument, 0 to 5.
        index: u8,
        /// The values allowed.
        values: Vec<u64>,
    },
    /// The system call when `argument & mask == value`.
    Masked {
        /// The system call.
        name: &'static str,
        /// The argument, 0 to 5.
        index: u8,
        /// The bits looked at.
        mask: u64,
        /// What they must be.
        value: u64,
    },
}

const PROT_EXEC: u64 = libc::PROT_EXEC as u64;
const CLONE_THREAD: u64 = libc::CLONE_THREAD as u64;

// ioctls that are not the hypervisor's: the terminal's (libc), the tap's (virtkit-net),
// and what a tap's set-up may issue (SIOCGIFINDEX, and SIOCBRADDIF to put it on a bridge).
const TCGETS: u64 = libc::TCGETS;
const TCSETS: u64 = libc::TCSETS;
const TCSETSW: u64 = libc::TCSETSW;
const FIONBIO: u64 = libc::FIONBIO;
const FIOCLEX: u64 = libc::FIOCLEX;
const TUNSETIFF: u64 = tap::TUNSETIFF;
const TUNSETPERSIST: u64 = tap::TUNSETPERSIST;
const TUNSETOFFLOAD: u64 = tap::TUNSETOFFLOAD;
const TUNSETVNETHDRSZ: u64 = tap::TUNSETVNETHDRSZ;
const SIOCGIFFLAGS: u64 = tap::SIOCGIFFLAGS;
const SIOCSIFFLAGS: u64 = tap::SIOCSIFFLAGS;
const SIOCGIFMTU: u64 = tap::SIOCGIFMTU;
const SIOCSIFMTU: u64 = tap::SIOCSIFMTU;
const SIOCSIFHWADDR: u64 = tap::SIOCSIFHWADDR;
const TUNGETFEATURES: u64 = 0x8004_54cf;
const TUNGETVNETHDRSZ: u64 = 0x8004_54d7;
const SIOCGIFINDEX: u64 = libc::SIOCGIFINDEX;
const SIOCBRADDIF: u64 = virtkit_net::bridge_port::SIOCBRADDIF;

/// What every thread does: memory, locks, signals (the vCPU kick, the SIGSYS handler's
/// own write and exit), time, and the ends of a thread.
const COMMON: &[&str] = &[
    "read",
    "write",
    "readv",
    "writev",
    "close",
    "futex",
    "madvise",
    "munmap",
    "mremap",
    "brk",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sigaltstack",
    "exit",
    "exit_group",
    "sched_yield",
    "clock_gettime",
    "clock_nanosleep",
    "nanosleep",
    "getrandom",
    "gettid",
    "getpid",
    "tgkill",
    "restart_syscall",
    "fcntl",
    "fstat",
    "newfstatat",
    "statx",
    "lseek",
];

/// The event loop: virtio devices (disk and network I/O, eventfds, epoll), the serial
/// output, snapshots (files in the snapshot directory) and migrations (a socket).
const VMM: &[&str] = &[
    "epoll_create1",
    "epoll_wait",
    "epoll_pwait",
    "epoll_ctl",
    "eventfd2",
    "pread64",
    "pwrite64",
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "fsync",
    "fdatasync",
    "fallocate",
    "ftruncate",
    "copy_file_range",
    "openat",
    "mkdir",
    "mkdirat",
    "unlinkat",
    "renameat",
    "renameat2",
    "fchmod",
    "dup",
    "poll",
    "ppoll",
    "socket",
    "connect",
    "sendto",
    "sendmsg",
    "recvfrom",
    "recvmsg",
    "shutdown",
    "setsockopt",
    "getsockopt",
    "getsockname",
    "getpeername",
];

/// A vCPU: `KVM_RUN` and the exits it serves (serial output, eventfd writes, a virtio
/// device activated or reset from an MMIO write), and its own snapshot state.
const VCPU: &[&str] = &[
    "getrusage",
    "epoll_ctl",
    "pread64",
    "pwrite64",
    "preadv",
    "pwritev",
    "fsync",
    "fdatasync",
];

/// The API: it builds, restores and receives VMs, so it may do what building does
/// (open images and devices, map memory, create taps and put them on bridges), start
/// threads (never processes) and serve its socket.
const API: &[&str] = &[
    "accept4",
    "bind",
    "listen",
    "openat",
    "unlinkat",
    "unlink",
    "mkdirat",
    "readlink",
    "readlinkat",
    "getdents64",
    "ftruncate",
    "fallocate",
    "memfd_create",
    "mlock",
    "munlock",
    "rt_sigaction",
    "set_robust_list",
    "rseq",
    "sched_getaffinity",
    "getuid",
    "geteuid",
    "getcwd",
    "uname",
    "sysinfo",
];

/// The ioctls of `kind` on a hypervisor issuing `hv`.
fn ioctls(kind: ThreadKind, hv: &HypervisorIoctls) -> Vec<u64> {
    let mut v: Vec<u64> = match kind {
        ThreadKind::Vcpu => [hv.vcpu_thread, hv.vm_runtime].concat(),
        ThreadKind::Vmm => [hv.vm_runtime, hv.vcpu_thread].concat(),
        ThreadKind::Api => [hv.vm_runtime, hv.vcpu_thread, hv.build].concat(),
    };
    v.extend_from_slice(match kind {
        ThreadKind::Vcpu => &[TUNSETOFFLOAD][..],
        ThreadKind::Vmm => &[TCGETS, TCSETS, TCSETSW, FIONBIO, FIOCLEX, TUNSETOFFLOAD][..],
        ThreadKind::Api => &[
            TCGETS,
            TCSETS,
            TCSETSW,
            FIONBIO,
            FIOCLEX,
            TUNSETIFF,
            TUNSETPERSIST,
            TUNGETFEATURES,
            TUNSETOFFLOAD,
            TUNGETVNETHDRSZ,
            TUNSETVNETHDRSZ,
            SIOCGIFFLAGS,
            SIOCSIFFLAGS,
            SIOCGIFMTU,
            SIOCSIFMTU,
            SIOCSIFHWADDR,
            SIOCGIFINDEX,
            SIOCBRADDIF,
        ][..],
    });
    // Keep the order (the first requests are the hottest), drop repeats.
    let mut seen = std::collections::HashSet::new();
    v.retain(|r| seen.insert(*r));
    v
}

/// The calls a running VM makes most (every exit, every virtio request): the filter tests
/// them first, since it tries its rules one after the other.
const HOT: &[&str] = &[
    "futex",
    "write",
    "read",
    "epoll_wait",
    "epoll_pwait",
    "pread64",
    "pwrite64",
    "preadv",
    "pwritev",
    "readv",
    "writev",
    "rt_sigreturn",
    "sched_yield",
];

/// The allow list of `kind` on a hypervisor issuing `hv`, the hottest calls first:
/// `ioctl` (its most frequent request first: `KVM_RUN` on a vCPU), then the calls made on
/// every exit or virtio request.
pub fn allow_list(kind: ThreadKind, hv: &HypervisorIoctls) -> Vec<Allow> {
    let own: &[&[&str]] = match kind {
        ThreadKind::Vcpu => &[COMMON, VCPU],
        ThreadKind::Vmm => &[COMMON, VMM],
        // The API builds VMs whose threads inherit its filter: it holds the other two.
        ThreadKind::Api => &[COMMON, VMM, VCPU, API],
    };
    let mut names: Vec<&'static str> = own.iter().flat_map(|l| l.iter().copied()).collect();
    names.sort_unstable();
    names.dedup();
    let mut list = vec![Allow::ArgIn {
        name: "ioctl",
        index: 1,
        values: ioctls(kind, hv),
    }];
    let hot: Vec<&'static str> = HOT.iter().copied().filter(|h| names.contains(h)).collect();
    list.extend(hot.iter().copied().map(Allow::Any));
    list.extend(
        names
            .into_iter()
            .filter(|n| !hot.contains(n))
            .map(Allow::Any),
    );
    // Memory is never made executable.
    for name in ["mmap", "mprotect"] {
        list.push(Allow::Masked {
            name,
            index: 2,
            mask: PROT_EXEC,
            value: 0,
        });
    }
    if kind == ThreadKind::Api {
        // Threads only: a clone without CLONE_THREAD (a new process) is refused.
        list.push(Allow::Masked {
            name: "clone",
            index: 0,
            mask: CLONE_THREAD,
            value: CLONE_THREAD,
        });
        // Threads it starts name themselves and add their own filter on top of this one.
        list.push(Allow::ArgIn {
            name: "prctl",
            index: 0,
            values: vec![libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64],
        });
        list.push(Allow::ArgIn {
            name: "seccomp",
            index: 0,
            values: vec![1], // SECCOMP_SET_MODE_FILTER
        });
    }
    list
}
