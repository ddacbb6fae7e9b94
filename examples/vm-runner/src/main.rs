//! vm-runner: a thin command line over `virtkit-vmm`. It parses the flags into a
//! `VmConfig`, builds the VM on KVM and runs it, or serves the control API
//! (`--api-socket`). See `vm-runner --help`.

// Our own C `main` (below): std's start-up reads /proc/self/maps to find the main thread's
// stack guard and sets up an alternate signal stack for the stack-overflow message, work that
// is a measurable part of the VMM's start-up (issue #12, docs/benchmarks.md).
#![cfg_attr(not(test), no_main)]

mod args;
mod jail;

use std::path::Path;
use std::sync::Arc;

use clap::Parser;
use virtkit_vcpu::KvmHypervisor;
use virtkit_vmm::api::ApiServer;
use virtkit_vmm::seccomp::SeccompMode;
use virtkit_vmm::{VmConfig, Vmm, VmmBuilder};

fn startup_stats_hook() -> Option<Box<dyn FnOnce() + Send>> {
    std::env::var_os("VM_RUNNER_STARTUP_STATS")?;
    Some(Box::new(|| {
        // SAFETY: getrusage writes into the zeroed struct we pass.
        let ru = unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_SELF, &mut ru);
            ru
        };
        let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
        let cpu_ms = (us(ru.ru_utime) + us(ru.ru_stime)) / 1000.0;
        let faults = ru.ru_minflt + ru.ru_majflt;
        eprintln!(
            "vm-runner: startup cpu_ms={cpu_ms:.3} before first KVM_RUN (page_faults={faults})"
        );
    }))
}

fn with_startup_stats(builder: VmmBuilder) -> VmmBuilder {
    match startup_stats_hook() {
        Some(hook) => builder.on_first_run(hook),
        None => builder,
    }
}

fn run(config: VmConfig, seccomp: SeccompMode) -> anyhow::Result<String> {
    let hv = Arc::new(KvmHypervisor::default());
    let builder = with_startup_stats(Vmm::builder(config).hypervisor(hv)).seccomp(seccomp);
    Ok(builder.build()?.run()?.to_string())
}

/// Restores the snapshot in `dir` and runs it (without an API, it can only run: `resume`
/// is ignored there and the VM resumes at once).
fn restore(dir: &Path, seccomp: SeccompMode) -> anyhow::Result<String> {
    let hv = Arc::new(KvmHypervisor::default());
    let builder = VmmBuilder::from_snapshot(dir)?
        .hypervisor(hv)
        .resume_after_restore()
        .seccomp(seccomp);
    Ok(builder.build()?.run()?.to_string())
}

/// Serves the API (booting `config` at once when given) until the VM ends or `vmm.shutdown`.
fn serve(socket: &Path, config: Option<VmConfig>, seccomp: SeccompMode) -> anyhow::Result<String> {
    let hv = Arc::new(KvmHypervisor::default());
    let server = ApiServer::bind(socket, hv)?
        .configure_vmm(with_startup_stats)
        .seccomp(seccomp);
    Ok(match server.serve(config)? {
        Some(end) => end.to_string(),
        None => "VMM shut down through the API".to_string(),
    })
}

/// Serves the API with the snapshot `r` restored (paused unless `resume=on`).
fn serve_restored(
    socket: &Path,
    r: &args::RestoreSpec,
    seccomp: SeccompMode,
) -> anyhow::Result<String> {
    let hv = Arc::new(KvmHypervisor::default());
    let server = ApiServer::bind(socket, hv)?
        .configure_vmm(with_startup_stats)
        .seccomp(seccomp);
    Ok(
        match server.serve_restored(&r.dir, r.resume.unwrap_or(false))? {
            Some(end) => end.to_string(),
            None => "VMM shut down through the API".to_string(),
        },
    )
}

/// Prints how the VM ended (or the error, on one line); the exit status.
fn report(result: anyhow::Result<String>) -> i32 {
    match result {
        Ok(end) => {
            eprintln!("vm-runner: {end}");
            0
        }
        Err(e) => {
            // One line: the whole context chain joined.
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("vm-runner: error: {msg}");
            1
        }
    }
}

/// The process's entry point, called by the C runtime in place of std's.
#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions; std's start-up
    // does the same, so a closed pipe is an error from write, not a fatal signal.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // Also as std's start-up does: descriptors 0, 1 and 2 are open (on /dev/null when the
    // caller closed them), so that no file opened later lands on one and gets what is
    // meant for standard output.
    for fd in 0..3 {
        // SAFETY: F_GETFD reads a descriptor's flags; no memory is passed.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            // SAFETY: a NUL-terminated path; open returns the lowest free descriptor,
            // which is `fd`.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
    start()
}

#[cfg_attr(test, allow(dead_code))]
fn start() -> ! {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_micros()
        .init();
    let args = args::Args::parse();
    let seccomp = args.seccomp;
    if let Some(root) = &args.jail.jail {
        match jail::run(&args, root, args.vm_config()) {
            Ok(status) => std::process::exit(status),
            Err(e) => std::process::exit(report(Err(e))),
        }
    }
    let result = match (&args.api_socket, &args.restore, args.vm_config()) {
        (Some(socket), Some(r), _) => serve_restored(socket, r, seccomp),
        (Some(socket), None, config) => serve(socket, config, seccomp),
        (None, Some(r), _) if r.resume == Some(false) => {
            eprintln!("vm-runner: error: resume=off needs --api-socket to resume it later");
            std::process::exit(2);
        }
        (None, Some(r), _) => restore(&r.dir, seccomp),
        (None, None, Some(config)) => run(config, seccomp),
        (None, None, None) => {
            eprintln!("vm-runner: error: --kernel or --restore is required (see --help)");
            std::process::exit(2);
        }
    };
    std::process::exit(report(result));
}
