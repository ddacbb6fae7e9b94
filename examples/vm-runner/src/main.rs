//! vm-runner: a thin command line over `virtkit-vmm`. It parses the flags into a
//! `VmConfig`, builds the VM on KVM and runs it. See `vm-runner --help`.

mod args;

use std::sync::Arc;

use clap::Parser;
use virtkit_vcpu::KvmHypervisor;
use virtkit_vmm::Vmm;

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
        eprintln!("vm-runner: startup cpu_ms={cpu_ms:.3} before first KVM_RUN");
    }))
}

fn run(config: virtkit_vmm::VmConfig) -> anyhow::Result<String> {
    let hv = Arc::new(KvmHypervisor::default());
    let mut builder = Vmm::builder(config).hypervisor(hv);
    if let Some(hook) = startup_stats_hook() {
        builder = builder.on_first_run(hook);
    }
    Ok(builder.build()?.run()?.to_string())
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_micros()
        .init();
    let args = args::Args::parse();
    let Some(config) = args.vm_config() else {
        eprintln!("vm-runner: error: --kernel is required (see --help)");
        std::process::exit(2);
    };
    match run(config) {
        Ok(end) => {
            eprintln!("vm-runner: {end}");
            std::process::exit(0);
        }
        Err(e) => {
            // One line: the whole context chain joined.
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("vm-runner: error: {msg}");
            std::process::exit(1);
        }
    }
}
