//! Builds the VM from the options and runs it until the guest ends it.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::terminal::Terminal;

use virtkit_boot::acpi::AcpiDevice;
use virtkit_boot::LinuxBoot;
use virtkit_memory::GuestMemoryBuilder;
use virtkit_vcpu::{EventFd, SystemEvent, ThreadOptions, VcpuHandle, VcpuOutcome, Vm, VmConfig};

use crate::devices::{
    DeviceManager, ExitNotifier, GuestExit, SerialOut, SerialPort, COM1_IRQ, COM1_PORT,
};
use crate::{Options, SerialMode};

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Console input: standard input into COM1's receive FIFO.
struct ConsoleInput {
    serial: Arc<Mutex<SerialPort>>,
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps<'_>) {
        let stdin = std::io::stdin();
        if let Err(e) = ops.add(Events::new(&stdin, EventSet::IN)) {
            // /dev/null and regular files cannot be polled: no console input then.
            log::debug!("no console input: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps<'_>) {
        let room = self
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .fifo_capacity();
        if room == 0 {
            // The guest has not drained the FIFO yet: leave the input in stdin for now.
            std::thread::sleep(Duration::from_millis(1));
            return;
        }
        let mut buf = [0u8; 64];
        let want = room.min(buf.len());
        let n = if events.event_set().contains(EventSet::IN) {
            std::io::stdin().lock().read(&mut buf[..want]).unwrap_or(0)
        } else {
            0
        };
        if n == 0 {
            // EOF or hang-up: stop watching.
            let _ = ops.remove(events);
            return;
        }
        let mut s = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = s.0.enqueue_raw_bytes(&buf[..n]) {
            log::warn!("console input dropped: {e:?}");
        }
    }
}

/// Wakes the loop when a device or a vCPU thread ends the VM.
struct ExitWatcher {
    fds: Vec<EventFd>,
    done: Arc<AtomicBool>,
}

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps<'_>) {
        for fd in &self.fds {
            if let Err(e) = ops.add(Events::new(fd, EventSet::IN)) {
                log::error!("cannot watch exit event: {e:?}");
                self.done.store(true, Ordering::SeqCst);
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps<'_>) {
        if let Some(fd) = self.fds.iter().find(|f| f.as_raw_fd() == events.fd()) {
            let _ = fd.read();
        }
        self.done.store(true, Ordering::SeqCst);
    }
}

/// Restores the terminal on drop.
struct RawTerminal;

impl RawTerminal {
    fn enable() -> Option<RawTerminal> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(0) } != 1 {
            return None;
        }
        match std::io::stdin().lock().set_raw_mode() {
            Ok(()) => Some(RawTerminal),
            Err(e) => {
                log::warn!("cannot put the terminal in raw mode: {e}");
                None
            }
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = std::io::stdin().lock().set_canon_mode();
    }
}

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

fn serial_out(mode: &SerialMode) -> Result<SerialOut> {
    Ok(match mode {
        SerialMode::Stdio => Box::new(std::io::stdout()),
        SerialMode::File(p) => Box::new(
            std::fs::File::create(p)
                .with_context(|| format!("cannot create serial file {}", p.display()))?,
        ),
        SerialMode::None => Box::new(std::io::sink()),
    })
}

/// Runs the VM; returns the line describing how the guest ended it.
pub fn run(opts: &Options) -> Result<String> {
    let ram = GuestMemoryBuilder::from_mib(opts.memory_mib)
        .huge_pages(opts.huge_pages)
        .build()
        .context("guest memory")?;
    log::debug!("guest memory mapped");
    let mut vm = Vm::new(VmConfig::default()).context("creating the VM")?;
    let max = vm
        .max_vcpus()
        .min(usize::from(virtkit_boot::mptable::MAX_CPUS));
    if opts.cpus as usize > max {
        bail!("--cpus {} is above the maximum of {max} vCPUs", opts.cpus);
    }
    let cpus = opts.cpus as u8;
    log::debug!("VM created");
    vm.register_memory(&ram)
        .context("registering guest memory")?;
    log::debug!("memory slots registered");

    let exit_evt = EventFd::new(libc::EFD_NONBLOCK).context("creating the exit event")?;
    let exit = ExitNotifier::new(exit_evt.try_clone().context("cloning the exit event")?);
    let mut devices = DeviceManager::new();
    devices.add_serial(&vm, serial_out(&opts.serial)?)?;
    devices.add_power_devices(&exit)?;
    let mut virtio = crate::virtio::VirtioDevices::default();
    crate::disk::attach_disks(&vm, &mut devices, ram.memory(), &opts.disks, &mut virtio)?;
    crate::net::attach_nets(&vm, &mut devices, ram.memory(), &opts.nets, &mut virtio)?;

    let mut cmdline = opts.cmdline.clone();
    for extra in devices.cmdline_extra() {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    log::debug!("devices added");
    let boot = LinuxBoot {
        kernel: opts.kernel.clone(),
        initrd: opts.initrd.clone(),
        cmdline,
        cpus,
        acpi: true,
        acpi_devices: std::iter::once(AcpiDevice::Serial {
            uid: 0,
            port: COM1_PORT,
            irq: COM1_IRQ.0,
        })
        .chain(std::mem::take(&mut virtio.acpi))
        .collect(),
    }
    .load(&ram)
    .context("loading the guest")?;
    log::debug!("guest loaded");
    log::info!(
        "kernel {:?} entry {:#x}, {} vCPUs, {} MiB",
        boot.kernel.kind,
        boot.entry.rip,
        cpus,
        opts.memory_mib
    );

    let mut vcpus = Vec::with_capacity(usize::from(cpus));
    for id in 0..cpus {
        let vcpu = vm.create_vcpu(id)?;
        vcpu.configure(&vm, cpus)?;
        if id == 0 {
            vcpu.set_entry(&boot.entry)?;
        }
        vcpus.push(vcpu);
    }

    log::debug!("vCPUs configured");
    let vcpu_exit = EventFd::new(libc::EFD_NONBLOCK).context("creating the vCPU exit event")?;
    let done = Arc::new(AtomicBool::new(false));
    let mut em: EventManager<Subscriber> =
        EventManager::new().map_err(|e| anyhow!("event manager: {e:?}"))?;
    for d in virtio.subscribers {
        em.add_subscriber(d);
    }
    em.add_subscriber(Arc::new(Mutex::new(ExitWatcher {
        fds: vec![exit_evt, vcpu_exit.try_clone()?],
        done: done.clone(),
    })));
    let _raw = match (&opts.serial, &devices.serial) {
        (SerialMode::Stdio, Some(serial)) => {
            em.add_subscriber(Arc::new(Mutex::new(ConsoleInput {
                serial: serial.clone(),
            })));
            RawTerminal::enable()
        }
        _ => None,
    };

    let buses = Arc::new(devices.buses.clone());
    let mut handles: Vec<VcpuHandle> = Vec::with_capacity(vcpus.len());
    let mut hook = startup_stats_hook();
    // Start the APs first so the boot vCPU's first KVM_RUN is the last step of start-up.
    for vcpu in vcpus.into_iter().rev() {
        let on_first_run = if vcpu.id() == 0 { hook.take() } else { None };
        handles.push(vcpu.start(
            buses.clone(),
            ThreadOptions {
                exit_evt: Some(vcpu_exit.try_clone()?),
                on_first_run,
                stop_flag: Some(exit.stop_flag()),
            },
        )?);
    }

    while !done.load(Ordering::SeqCst) {
        em.run_with_timeout(1000)
            .map_err(|e| anyhow!("event loop: {e:?}"))?;
    }

    for h in &handles {
        h.stop();
    }
    let mut first: Option<Result<VcpuOutcome, virtkit_vcpu::VcpuError>> = None;
    for h in handles {
        let r = h.join();
        let interesting = !matches!(r, Ok(VcpuOutcome::Stopped));
        if first.is_none() && interesting {
            first = Some(r);
        }
    }
    // Let the serial output reach its destination.
    std::thread::sleep(Duration::from_millis(0));

    if let Some(why) = exit.reason() {
        return Ok(match why {
            GuestExit::PowerOff => "guest powered off".into(),
            GuestExit::Reboot => "guest rebooted".into(),
        });
    }
    match first {
        Some(Ok(VcpuOutcome::Shutdown)) => Ok("guest reset (triple fault)".into()),
        Some(Ok(VcpuOutcome::SystemEvent(SystemEvent::Shutdown))) => Ok("guest powered off".into()),
        Some(Ok(VcpuOutcome::SystemEvent(SystemEvent::Reset))) => Ok("guest rebooted".into()),
        Some(Ok(VcpuOutcome::Halted)) => Ok("guest halted".into()),
        Some(Ok(other)) => bail!("vCPU stopped: {other:?}"),
        Some(Err(e)) => Err(e.into()),
        None => bail!("VM ended without a reason"),
    }
}
