//! The VMM lifecycle on the fake hypervisor (no /dev/kvm): exits routed to devices, how a
//! VM ends, pause/resume/shutdown from another thread, and errors that end the VM with a
//! clear reason.
#![allow(clippy::unwrap_used)]

mod common;

use common::Capture;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use virtkit_boot::layout;
use virtkit_vcpu::fake::{FakeHypervisor, ScriptedExit};
use virtkit_vmm::{ConfigError, ControlError, DiskConfig, VmConfig, VmEnd, VmState, Vmm, VmmError};

/// A minimal ELF64 kernel (one PT_LOAD at 2 MiB); the fake vCPUs never run it.
fn kernel() -> tempfile::NamedTempFile {
    let mut t = tempfile::NamedTempFile::new().unwrap();
    t.write_all(&virtkit_boot::testing::tiny_elf(&[0xf4]))
        .unwrap();
    t
}

fn out(port: u16, b: u8) -> ScriptedExit {
    ScriptedExit::IoOut {
        port,
        data: vec![b],
    }
}

fn build(hv: &Arc<FakeHypervisor>, config: VmConfig) -> Result<(Vmm, Capture), VmmError> {
    let serial = Capture::default();
    let vmm = Vmm::builder(config)
        .hypervisor(hv.clone())
        .serial_output(Box::new(serial.clone()))
        .build()?;
    Ok((vmm, serial))
}

fn run_script(exits: Vec<ScriptedExit>) -> (Result<VmEnd, VmmError>, Capture) {
    let k = kernel();
    let hv = Arc::new(FakeHypervisor::default());
    hv.script(0, exits);
    let (vmm, serial) = build(&hv, VmConfig::with_kernel(k.path())).unwrap();
    // A script that does not end the VM fails the test instead of hanging it.
    let ctl = vmm.controller();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(10));
        ctl.shutdown().is_ok()
    });
    let end = vmm.run();
    if !watchdog.is_finished() {
        drop(watchdog);
    } else {
        assert!(
            !watchdog.join().unwrap(),
            "the script did not end the VM (serial: {:?})",
            serial.bytes()
        );
    }
    (end, serial)
}

#[test]
fn guest_output_and_power_off_end_the_vm() {
    let (end, serial) = run_script(vec![
        out(0x3f8, b'h'),
        out(0x3f8, b'i'),
        ScriptedExit::IoOut {
            port: layout::ACPI_SLEEP_CONTROL_PORT,
            data: vec![layout::ACPI_S5_SLEEP_VALUE],
        },
    ]);
    assert_eq!(end.unwrap(), VmEnd::PowerOff);
    assert_eq!(serial.bytes(), b"hi");
}

#[test]
fn reset_paths_end_the_vm_as_reboot_or_triple_fault() {
    let (end, _) = run_script(vec![out(0x64, 0xfe)]);
    assert_eq!(end.unwrap(), VmEnd::Reboot);
    let (end, _) = run_script(vec![ScriptedExit::Shutdown]);
    assert_eq!(end.unwrap(), VmEnd::TripleFault);
}

#[test]
fn a_vcpu_error_ends_the_vm_with_a_clear_reason() {
    let (end, _) = run_script(vec![out(0x80, 1), ScriptedExit::Fail]);
    let msg = end.unwrap_err().to_string();
    assert!(msg.contains("vCPU 0") && msg.contains("KVM_RUN"), "{msg}");
    let (end, _) = run_script(vec![ScriptedExit::InternalError { suberror: 1 }]);
    let msg = end.unwrap_err().to_string();
    assert!(msg.contains("InternalError"), "{msg}");
}

#[test]
fn mmio_reads_reach_the_virtio_window() {
    let k = kernel();
    let disk = tempfile::NamedTempFile::new().unwrap();
    disk.as_file().set_len(1 << 20).unwrap();
    let hv = Arc::new(FakeHypervisor::default());
    hv.script(
        0,
        vec![
            ScriptedExit::MmioRead {
                addr: 0xd000_0000,
                len: 4,
            },
            ScriptedExit::MmioRead {
                addr: 0xd000_0008,
                len: 4,
            },
            ScriptedExit::MmioRead {
                addr: 0xdfff_0000,
                len: 4,
            },
            ScriptedExit::Halt,
        ],
    );
    let mut c = VmConfig::with_kernel(k.path());
    c.disks = Some(vec![DiskConfig {
        path: Some(disk.path().into()),
        ..DiskConfig::default()
    }]);
    let (vmm, _) = build(&hv, c).unwrap();
    assert!(
        vmm.devices().cmdline_extra().is_empty(),
        "virtio is described in the DSDT"
    );
    assert_eq!(vmm.run().unwrap(), VmEnd::Halted);
    let reads = hv.vms()[0].reads();
    assert_eq!(reads[0], (0, 0xd000_0000, b"virt".to_vec()));
    assert_eq!(reads[1], (0, 0xd000_0008, 2u32.to_le_bytes().to_vec()));
    assert_eq!(
        reads[2],
        (0, 0xdfff_0000, vec![0xff; 4]),
        "nothing there reads as ones"
    );
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    common::wait_until_for(10, what, f)
}

#[test]
fn pause_stops_guest_code_resume_restarts_it_shutdown_ends_it() {
    let k = kernel();
    let hv = Arc::new(FakeHypervisor::default());
    // A guest printing forever, one byte per millisecond, on two vCPUs.
    let busy: Vec<_> = (0..100_000)
        .flat_map(|_| {
            [
                out(0x3f8, b'.'),
                ScriptedExit::Run(Duration::from_millis(1)),
            ]
        })
        .collect();
    hv.script(0, busy.clone());
    hv.script(1, busy);
    let mut c = VmConfig::with_kernel(k.path());
    c.cpus.boot_vcpus = 2;
    c.cpus.max_vcpus = 2;
    let (vmm, serial) = build(&hv, c).unwrap();
    let ctl = vmm.controller();
    assert_eq!(ctl.state(), VmState::Created);
    assert!(matches!(ctl.pause(), Err(ControlError::WrongState { .. })));
    let runner = std::thread::spawn(move || vmm.run());
    wait_until("running", || {
        ctl.state() == VmState::Running && serial.len() > 10
    });
    assert!(matches!(ctl.resume(), Err(ControlError::WrongState { .. })));
    ctl.pause().unwrap();
    assert_eq!(ctl.state(), VmState::Paused);
    assert!(matches!(ctl.pause(), Err(ControlError::WrongState { .. })));
    let at_pause = serial.len();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(serial.len(), at_pause, "a paused guest runs no code");
    ctl.resume().unwrap();
    wait_until("output after resume", || serial.len() > at_pause + 10);
    let info = ctl.info();
    assert_eq!(
        (info.state, info.memory_actual_size),
        (VmState::Running, 128 << 20)
    );
    assert_eq!(info.config.cpus.boot_vcpus, 2);
    ctl.shutdown().unwrap();
    assert_eq!(runner.join().unwrap().unwrap(), VmEnd::Shutdown);
    assert_eq!(ctl.state(), VmState::Shutdown);
    assert!(matches!(
        ctl.shutdown(),
        Err(ControlError::WrongState { .. })
    ));
    assert_eq!(hv.vms()[0].vcpus(), [(0, 2), (1, 2)]);
}

#[test]
fn bad_configs_and_hypervisors_are_clear_errors() {
    let hv = Arc::new(FakeHypervisor::default());
    let e = build(&hv, VmConfig::default()).unwrap_err();
    assert!(matches!(e, VmmError::Config(ConfigError::NoKernel)), "{e}");
    let k = kernel();
    let mut c = VmConfig::with_kernel(k.path());
    c.memory.size = u64::MAX;
    let e = build(&hv, c).unwrap_err();
    assert!(matches!(e, VmmError::Config(ConfigError::Memory(_))), "{e}");
    let mut c = VmConfig::with_kernel(k.path());
    c.cpus.boot_vcpus = 200;
    c.cpus.max_vcpus = 200;
    let e = build(&hv, c).unwrap_err();
    assert!(e.to_string().contains("above the maximum of 8"), "{e}");
    let refusing = Arc::new(FakeHypervisor::refusing());
    let e = build(&refusing, VmConfig::with_kernel(k.path())).unwrap_err();
    assert!(matches!(e, VmmError::Vm(_)), "{e}");
    let mut c = VmConfig::with_kernel(k.path());
    c.disks = Some(vec![DiskConfig {
        path: Some(k.path().into()),
        image_type: virtkit_vmm::ImageType::Qcow2,
        ..DiskConfig::default()
    }]);
    let e = build(&hv, c).unwrap_err();
    assert!(
        e.to_string().contains(&k.path().display().to_string()),
        "{e}"
    );
}
