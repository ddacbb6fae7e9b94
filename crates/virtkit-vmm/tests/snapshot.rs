//! Snapshot and restore through the VMM: a paused VM is saved into a directory (config,
//! state, sparse memory, disk copies) and brought back, paused, in a new VMM, where it goes
//! on from where it stopped; the disk it gets is the one it had at the snapshot even when
//! the original changed afterwards. `kvm_` tests need /dev/kvm; the others run on the fake
//! hypervisor.
#![allow(clippy::unwrap_used)]

mod common;

use common::{wait_until, Capture};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtkit_vcpu::fake::{FakeHypervisor, ScriptedExit};
use virtkit_vmm::snapshot::SnapshotError;
use virtkit_vmm::{ControlError, DiskConfig, VmConfig, VmEnd, VmState, Vmm, VmmBuilder, VmmError};

fn kernel(code: &[u8]) -> tempfile::NamedTempFile {
    let mut t = tempfile::NamedTempFile::new().unwrap();
    t.write_all(&virtkit_boot::testing::tiny_elf(code)).unwrap();
    t
}

fn config(k: &tempfile::NamedTempFile, disk: &std::path::Path) -> VmConfig {
    let mut c = VmConfig::with_kernel(k.path());
    c.memory.size = 64 << 20;
    c.disks = Some(vec![DiskConfig {
        path: Some(disk.into()),
        ..DiskConfig::default()
    }]);
    c
}

/// Runs `b`, waits for `min` bytes of output, pauses, snapshots into `dir`, shuts down.
/// Returns the output seen up to the pause.
fn run_and_snapshot(b: VmmBuilder, serial: &Capture, dir: &std::path::Path, min: usize) -> Vec<u8> {
    let vmm = b.build().unwrap();
    let ctl = vmm.controller();
    assert!(matches!(
        ctl.snapshot(dir),
        Err(ControlError::WrongState { .. })
    ));
    let t = std::thread::spawn(move || vmm.run());
    wait_until("guest output", || serial.bytes().len() >= min);
    assert!(
        matches!(ctl.snapshot(dir), Err(ControlError::WrongState { .. })),
        "running"
    );
    ctl.pause().unwrap();
    let seen = serial.bytes();
    let info = ctl.snapshot(dir).unwrap();
    assert_eq!(info.memory_size, 64 << 20);
    assert!(
        info.memory_written < info.memory_size,
        "memory is written sparsely"
    );
    ctl.shutdown().unwrap();
    assert_eq!(t.join().unwrap().unwrap(), VmEnd::Shutdown);
    seen
}

fn restore_and_resume(b: VmmBuilder, serial: &Capture, min: usize) -> (Vec<u8>, VmConfig) {
    let vmm = b.build().unwrap();
    let ctl = vmm.controller();
    let t = std::thread::spawn(move || vmm.run());
    wait_until("the restored VM", || ctl.state() == VmState::Paused);
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        serial.bytes().is_empty(),
        "a restored VM stays paused until resumed"
    );
    ctl.resume().unwrap();
    wait_until("output after restore", || serial.bytes().len() >= min);
    let config = ctl.info().config;
    ctl.shutdown().unwrap();
    assert_eq!(t.join().unwrap().unwrap(), VmEnd::Shutdown);
    (serial.bytes(), config)
}

#[test]
fn kvm_a_restored_vm_goes_on_where_it_stopped_with_the_disk_it_had() {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "kvm_ tests need /dev/kvm"
    );
    // xor eax, eax; 1: inc al; mov dx, 0x3f8; out dx, al; jmp 1
    let k = kernel(&[
        0x31, 0xc0, 0xfe, 0xc0, 0x66, 0xba, 0xf8, 0x03, 0xee, 0xeb, 0xf7,
    ]);
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("disk.raw");
    std::fs::write(&disk, [b"before".as_slice(), &[0u8; 4090]].concat()).unwrap();
    let snap = work.path().join("snap");
    let serial = Capture::default();
    let b = Vmm::builder(config(&k, &disk)).serial_output(Box::new(serial.clone()));
    let seen = run_and_snapshot(b, &serial, &snap, 100);
    for f in ["config.json", "state.json", "memory", "disk0"] {
        assert!(snap.join(f).exists(), "{f}");
    }
    // The original disk changes after the snapshot; the restored VM must not see it.
    std::fs::write(&disk, b"after!").unwrap();

    let serial2 = Capture::default();
    let b = VmmBuilder::from_snapshot(&snap)
        .unwrap()
        .serial_output(Box::new(serial2.clone()));
    let (out, cfg) = restore_and_resume(b, &serial2, 5);
    common::assert_counts_on(&seen, &out);
    let working = cfg.disks()[0].path.clone().unwrap();
    assert!(working.starts_with(&snap), "{}", working.display());
    assert_eq!(&std::fs::read(&working).unwrap()[..6], b"before");
    assert_eq!(&std::fs::read(snap.join("disk0")).unwrap()[..6], b"before");
}

#[test]
fn snapshots_round_trip_on_the_fake_hypervisor_and_bad_ones_are_refused() {
    let k = kernel(&[0xf4]);
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("disk.raw");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let snap = work.path().join("snap");
    let steps: Vec<_> = (0u8..=255)
        .cycle()
        .take(50_000)
        .flat_map(|i| {
            [
                ScriptedExit::IoOut {
                    port: 0x3f8,
                    data: vec![i],
                },
                ScriptedExit::Run(Duration::from_micros(200)),
            ]
        })
        .collect();
    let hv = Arc::new(FakeHypervisor::default());
    hv.script(0, steps.clone());
    let serial = Capture::default();
    let b = Vmm::builder(config(&k, &disk))
        .hypervisor(hv)
        .serial_output(Box::new(serial.clone()));
    let seen = run_and_snapshot(b, &serial, &snap, 20);

    let hv2 = Arc::new(FakeHypervisor::default());
    hv2.script(0, steps);
    let serial2 = Capture::default();
    let b = VmmBuilder::from_snapshot(&snap)
        .unwrap()
        .hypervisor(hv2)
        .serial_output(Box::new(serial2.clone()));
    let (out, _) = restore_and_resume(b, &serial2, 3);
    assert_eq!(out[0], seen.last().unwrap().wrapping_add(1));

    // Damaged snapshots: a clear error, nothing built.
    let state = snap.join("state.json");
    let text = std::fs::read_to_string(&state).unwrap();
    std::fs::write(&state, text.replacen("\"position\":", "\"position\":1", 1)).unwrap();
    let e = VmmBuilder::from_snapshot(&snap).unwrap_err();
    assert!(
        matches!(e, VmmError::Snapshot(SnapshotError::Checksum { .. })),
        "{e}"
    );
    std::fs::write(&state, text).unwrap();
    std::fs::remove_file(snap.join("memory")).unwrap();
    let e = VmmBuilder::from_snapshot(&snap).unwrap_err();
    assert!(e.to_string().contains("memory"), "{e}");
    let e = VmmBuilder::from_snapshot(&work.path().join("nothing")).unwrap_err();
    assert!(e.to_string().contains("config.json"), "{e}");
}

/// Restore time, 1 vCPU / 128 MiB, no disk: from reading the snapshot to the vCPU thread
/// started (paused), median of 9, on the host's /dev/kvm. Run with
/// `cargo test --release -p virtkit-vmm --test snapshot -- --ignored --nocapture kvm_restore_time`.
#[test]
#[ignore = "a benchmark: prints the restore time"]
fn kvm_restore_time() {
    let k = kernel(&[
        0x31, 0xc0, 0xfe, 0xc0, 0x66, 0xba, 0xf8, 0x03, 0xee, 0xeb, 0xf7,
    ]);
    let work = tempfile::tempdir().unwrap();
    let snap = work.path().join("snap");
    let mut c = VmConfig::with_kernel(k.path());
    c.memory.size = 128 << 20;
    let serial = Capture::default();
    let vmm = Vmm::builder(c)
        .serial_output(Box::new(serial.clone()))
        .build()
        .unwrap();
    let ctl = vmm.controller();
    let t = std::thread::spawn(move || vmm.run());
    wait_until("guest output", || serial.bytes().len() >= 10);
    ctl.pause().unwrap();
    let info = ctl.snapshot(&snap).unwrap();
    ctl.shutdown().unwrap();
    t.join().unwrap().unwrap();
    let mut times = Vec::new();
    for _ in 0..9 {
        let start = Instant::now();
        let vmm = VmmBuilder::from_snapshot(&snap)
            .unwrap()
            .serial_output(Box::new(std::io::sink()))
            .build()
            .unwrap();
        let ctl = vmm.controller();
        let t = std::thread::spawn(move || vmm.run());
        while ctl.state() != VmState::Paused {
            std::thread::yield_now();
        }
        times.push(start.elapsed());
        ctl.shutdown().unwrap();
        t.join().unwrap().unwrap();
    }
    times.sort();
    println!(
        "restore (1 vCPU, 128 MiB; snapshot took {} ms, wrote {} KiB of memory): median {:.2} ms, min {:.2} ms",
        info.millis,
        info.memory_written / 1024,
        times[4].as_secs_f64() * 1000.0,
        times[0].as_secs_f64() * 1000.0
    );
}

/// One snapshot restored twice gives two VMs with a disk each: what one writes, the other
/// and the snapshot do not see.
#[test]
fn a_snapshot_restored_twice_gives_two_independent_vms() {
    let k = kernel(&[0xf4]);
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("disk.raw");
    std::fs::write(&disk, [b"before".as_slice(), &[0u8; 4090]].concat()).unwrap();
    let snap = work.path().join("snap");
    let hv = Arc::new(FakeHypervisor::default());
    hv.script(
        0,
        vec![ScriptedExit::IoOut {
            port: 0x3f8,
            data: vec![b'x'],
        }],
    );
    let serial = Capture::default();
    let b = Vmm::builder(config(&k, &disk))
        .hypervisor(hv)
        .serial_output(Box::new(serial.clone()));
    run_and_snapshot(b, &serial, &snap, 1);
    let restore = || {
        VmmBuilder::from_snapshot(&snap)
            .unwrap()
            .hypervisor(Arc::new(FakeHypervisor::default()))
            .serial_output(Box::new(std::io::sink()))
            .build()
            .unwrap()
    };
    let (a, b) = (restore(), restore());
    let path = |v: &Vmm| {
        v.controller().info().config.disks()[0]
            .path
            .clone()
            .unwrap()
    };
    let (pa, pb) = (path(&a), path(&b));
    assert_ne!(pa, pb, "each restored VM has its own working disk");
    std::fs::write(&pa, b"by VM a").unwrap();
    assert_eq!(&std::fs::read(&pb).unwrap()[..6], b"before");
    assert_eq!(&std::fs::read(snap.join("disk0")).unwrap()[..6], b"before");
}
