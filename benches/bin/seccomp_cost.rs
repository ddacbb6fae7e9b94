//! What a VMM thread's seccomp filter adds to each system call, on the host's own kernel
//! (no guest involved): the hot calls of a running VM timed on a thread without a filter
//! and on threads with each kind's filter (`virtkit_vmm::seccomp`, mode `log`: allowed
//! calls run the same rules as `on`).
//!
//! `cargo run --release -p virtkit-benches --bin seccomp-cost [-- ITERATIONS]`
//!
//! Prints ns per call for each, and the difference.

use std::os::fd::AsRawFd;
use std::time::Instant;

use virtkit_vmm::seccomp::{apply, SeccompMode, ThreadKind};

/// One iteration of a measured call, given an eventfd.
type Call = Box<dyn Fn(i32) + Send + Sync>;

/// The calls measured: (name, what one iteration does).
fn calls() -> Vec<(&'static str, Call)> {
    vec![
        (
            "eventfd write+read (irqfd/ioeventfd)",
            Box::new(|fd| {
                let one = 1u64.to_ne_bytes();
                let mut buf = [0u8; 8];
                // SAFETY: an eventfd we own, 8-byte buffers.
                unsafe {
                    libc::write(fd, one.as_ptr().cast(), 8);
                    libc::read(fd, buf.as_mut_ptr().cast(), 8);
                }
            }),
        ),
        (
            "ioctl(KVM_RUN) on a non-KVM fd (ENOTTY)",
            Box::new(|fd| {
                // SAFETY: an ioctl the eventfd refuses at once; no pointer is passed.
                unsafe { libc::ioctl(fd, virtkit_vcpu::ioctls::KVM_RUN as libc::c_ulong, 0) };
            }),
        ),
        (
            "pread64 of 4 KiB (page cache)",
            Box::new(|_| {
                thread_local! {
                    static FILE: std::fs::File = {
                        let p = std::env::temp_dir().join(format!("seccomp-cost-{}", std::process::id()));
                        std::fs::write(&p, vec![7u8; 4096]).expect("scratch file");
                        let f = std::fs::File::open(&p).expect("scratch file");
                        let _ = std::fs::remove_file(&p);
                        f
                    };
                }
                FILE.with(|f| {
                    let mut buf = [0u8; 4096];
                    // SAFETY: a file we own, a 4 KiB buffer.
                    unsafe { libc::pread64(f.as_raw_fd(), buf.as_mut_ptr().cast(), 4096, 0) };
                });
            }),
        ),
    ]
}

/// ns per call of `f` on a new thread with `kind`'s filter (or none), best of 5 rounds.
fn measure(kind: Option<ThreadKind>, iterations: u32, f: &'static (dyn Fn(i32) + Sync)) -> f64 {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: eventfd with flags only.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            assert!(fd >= 0, "eventfd");
            if let Some(k) = kind {
                apply(k, SeccompMode::Log, &virtkit_vcpu::ioctls::KVM)
                    .expect("installing the filter");
            }
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = Instant::now();
                for _ in 0..iterations {
                    f(fd);
                }
                best = best.min(t.elapsed().as_nanos() as f64 / f64::from(iterations));
            }
            best
        })
        .join()
        .expect("the measuring thread")
    })
}

fn main() {
    let iterations: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    println!("seccomp filter cost per call, best of 5 x {iterations} (ns/call)");
    for (name, f) in calls() {
        let f: &'static (dyn Fn(i32) + Sync) = Box::leak(f);
        let none = measure(None, iterations, f);
        print!("  {name:<42} none {none:8.1}");
        for kind in [ThreadKind::Vcpu, ThreadKind::Vmm, ThreadKind::Api] {
            let t = measure(Some(kind), iterations, f);
            print!("  {} {t:8.1} (+{:.1})", kind.name(), t - none);
        }
        println!();
    }
}
