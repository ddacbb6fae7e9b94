//! Live migration between two VMMs of one process over a Unix socket: the guest goes on at
//! the destination where it stopped at the source, the source ends; a failed migration
//! leaves the source running; a hostile or broken stream is refused with a clear error.
//! `kvm_` tests need /dev/kvm (real dirty-page logging); the others run on the fake
//! hypervisor.
#![allow(clippy::unwrap_used)]

mod common;

use common::Capture;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use virtkit_vcpu::fake::{FakeHypervisor, ScriptedExit};
use virtkit_vmm::migration::{wire, Incoming, MigrationError};
use virtkit_vmm::{DiskConfig, VmConfig, VmEnd, VmState, Vmm};

fn wait_until(what: &str, f: impl Fn() -> bool) {
    common::wait_until_for(60, what, f)
}

fn config(dir: &std::path::Path, code: &[u8], mib: u64) -> VmConfig {
    let k = dir.join("kernel");
    std::fs::write(&k, virtkit_boot::testing::tiny_elf(code)).unwrap();
    let disk = dir.join("disk.raw");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let mut c = VmConfig::with_kernel(&k);
    c.memory.size = mib << 20;
    c.disks = Some(vec![DiskConfig {
        path: Some(disk),
        ..DiskConfig::default()
    }]);
    c
}

/// A guest that keeps a counter in memory (at 1 MiB), writes it into one of 4096 pages
/// from 16 MiB on (a new page each time: memory keeps getting dirty) and prints its low
/// byte on COM1, forever.
#[rustfmt::skip]
const DIRTYING_COUNTER: [u8; 38] = [
    0xff, 0x04, 0x25, 0x00, 0x00, 0x10, 0x00, // inc dword [0x100000]
    0x8b, 0x04, 0x25, 0x00, 0x00, 0x10, 0x00, // mov eax, [0x100000]
    0x89, 0xc3,                               // mov ebx, eax
    0x81, 0xe3, 0xff, 0x0f, 0x00, 0x00,       // and ebx, 0xfff
    0xc1, 0xe3, 0x0c,                         // shl ebx, 12
    0x89, 0x83, 0x00, 0x00, 0x00, 0x01,       // mov [rbx + 0x1000000], eax
    0x66, 0xba, 0xf8, 0x03,                   // mov dx, 0x3f8
    0xee,                                     // out dx, al
    0xeb, 0xda,                               // jmp to the start
];

#[test]
fn kvm_a_migrated_guest_goes_on_at_the_destination_and_the_source_ends() {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "kvm_ tests need /dev/kvm"
    );
    let dir = tempfile::tempdir().unwrap();
    let url = format!("unix:{}", dir.path().join("m.sock").display());
    let serial = Capture::default();
    let vmm = Vmm::builder(config(dir.path(), &DIRTYING_COUNTER, 64))
        .serial_output(Box::new(serial.clone()))
        .build()
        .unwrap();
    let ctl = vmm.controller();
    let source = std::thread::spawn(move || vmm.run());
    wait_until("guest output", || serial.bytes().len() >= 300);

    let serial2 = Capture::default();
    let s2 = serial2.clone();
    let u = url.clone();
    let dest = std::thread::spawn(move || {
        let hv = Arc::new(virtkit_vcpu::KvmHypervisor::default());
        let incoming = Incoming::accept_on(&u, hv.clone()).unwrap();
        let vmm = incoming
            .finish(|b| b.hypervisor(hv).serial_output(Box::new(s2)).build())
            .unwrap();
        let ctl = vmm.controller();
        (ctl, std::thread::spawn(move || vmm.run()))
    });
    wait_until("the destination to listen", || {
        dir.path().join("m.sock").exists()
    });
    let info = ctl.send_migration(&url).unwrap();
    eprintln!("migration: {info:?}");
    assert!(info.memory_bytes >= 4096, "{info:?}");
    assert_eq!(source.join().unwrap().unwrap(), VmEnd::Migrated);
    let seen = serial.bytes();
    let (ctl2, run2) = dest.join().unwrap();
    wait_until("output at the destination", || serial2.bytes().len() >= 5);
    let out = serial2.bytes();
    common::assert_counts_on(&seen, &out);
    assert_eq!(ctl2.state(), VmState::Running);
    ctl2.shutdown().unwrap();
    assert_eq!(run2.join().unwrap().unwrap(), VmEnd::Shutdown);
}

fn fake_source(
    dir: &std::path::Path,
) -> (
    virtkit_vmm::VmController,
    std::thread::JoinHandle<Result<VmEnd, virtkit_vmm::VmmError>>,
) {
    let hv = Arc::new(FakeHypervisor::default());
    hv.script(
        0,
        (0..100_000)
            .flat_map(|i| {
                [
                    ScriptedExit::IoOut {
                        port: 0x3f8,
                        data: vec![i as u8],
                    },
                    ScriptedExit::Run(Duration::from_micros(100)),
                ]
            })
            .collect(),
    );
    let vmm = Vmm::builder(config(dir, &[0xf4], 8))
        .hypervisor(hv)
        .serial_output(Box::new(std::io::sink()))
        .build()
        .unwrap();
    let ctl = vmm.controller();
    let t = std::thread::spawn(move || vmm.run());
    wait_until("the source to run", || ctl.state() == VmState::Running);
    (ctl, t)
}

#[test]
fn fake_migration_moves_the_vm_and_failures_leave_the_source_running() {
    let dir = tempfile::tempdir().unwrap();
    let (ctl, source) = fake_source(dir.path());

    // A destination that cannot build the VM (its disk is not there): refused, and the
    // source runs on.
    let sock = dir.path().join("a.sock");
    let url = format!("unix:{}", sock.display());
    let u = url.clone();
    let d = dir.path().to_path_buf();
    let dest = std::thread::spawn(move || {
        let incoming = Incoming::accept(&u).unwrap();
        std::fs::rename(d.join("disk.raw"), d.join("disk.moved")).unwrap();
        let r = incoming.finish(|b| b.hypervisor(Arc::new(FakeHypervisor::default())).build());
        std::fs::rename(d.join("disk.moved"), d.join("disk.raw")).unwrap();
        r.map(|_| ())
    });
    wait_until("the destination to listen", || sock.exists());
    let e = ctl.send_migration(&url).unwrap_err().to_string();
    assert!(e.contains("disk"), "{e}");
    assert!(matches!(
        dest.join().unwrap(),
        Err(MigrationError::Restore(_))
    ));
    assert_eq!(ctl.state(), VmState::Running, "the source runs on");

    // A peer that goes away mid-transfer: an error, the source runs on.
    let sock = dir.path().join("b.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
    });
    let e = ctl
        .send_migration(&format!("unix:{}", sock.display()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("stream"), "{e}");
    peer.join().unwrap();
    assert_eq!(ctl.state(), VmState::Running);

    // Nobody listening, or a bad URL.
    assert!(ctl.send_migration("unix:/nonexistent/m.sock").is_err());
    assert!(ctl
        .send_migration("ftp://x")
        .unwrap_err()
        .to_string()
        .contains("unix:/PATH"));
    assert_eq!(ctl.state(), VmState::Running);

    // Paused, then a destination that takes it: the source ends.
    ctl.pause().unwrap();
    let sock = dir.path().join("c.sock");
    let url = format!("unix:{}", sock.display());
    let u = url.clone();
    let dest = std::thread::spawn(move || {
        // The VM made ahead on the destination's hypervisor (accept_on).
        let hv: Arc<dyn virtkit_vcpu::Hypervisor> = Arc::new(FakeHypervisor::default());
        let incoming = Incoming::accept_on(&u, hv.clone()).unwrap();
        assert_eq!(incoming.config().memory.size, 8 << 20);
        let vmm = incoming
            .finish(|b| {
                b.hypervisor(hv)
                    .serial_output(Box::new(std::io::sink()))
                    .build()
            })
            .unwrap();
        let ctl = vmm.controller();
        let t = std::thread::spawn(move || vmm.run());
        wait_until("the destination VM", || ctl.state() != VmState::Created);
        ctl.shutdown().unwrap();
        t.join().unwrap().unwrap()
    });
    wait_until("the destination to listen", || sock.exists());
    let info = ctl.send_migration(&url).unwrap();
    assert_eq!(info.last_round_pages, 0, "{info:?}");
    assert_eq!(source.join().unwrap().unwrap(), VmEnd::Migrated);
    assert_eq!(dest.join().unwrap(), VmEnd::Shutdown);
}

/// Feeds `bytes` to a destination; its error.
fn receive(bytes: Vec<u8>) -> MigrationError {
    let (mut a, b) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || {
        a.write_all(&bytes).unwrap();
        drop(a.shutdown(std::net::Shutdown::Write));
        let mut answer = Vec::new();
        let _ = a.read_to_end(&mut answer);
        answer
    });
    let e = Incoming::receive(Box::new(b), None).unwrap_err();
    let answer = t.join().unwrap();
    if !matches!(e, MigrationError::Stream(_)) {
        assert_eq!(
            answer.first(),
            Some(&(wire::Tag::Error as u8)),
            "{e}: the source is told"
        );
    }
    e
}

#[test]
fn hostile_streams_are_refused() {
    let frame = |tag, parts: &[&[u8]]| {
        let mut v = Vec::new();
        wire::write_frame(&mut v, tag, parts).unwrap();
        v
    };
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::to_vec(&config(dir.path(), &[0xf4], 8)).unwrap();
    let with_magic = |frames: &[Vec<u8>]| [&wire::MAGIC[..], &frames.concat()].concat();

    let e = receive(b"GET / HTTP/1.1\r\n\r\n".to_vec());
    assert!(e.to_string().contains("not a virtkit migration"), "{e}");
    let e = receive(with_magic(&[frame(wire::Tag::Config, &[b"{"])]));
    assert!(e.to_string().contains("configuration"), "{e}");
    let e = receive(with_magic(&[frame(wire::Tag::Memory, &[b"x"])]));
    assert!(e.to_string().contains("before the configuration"), "{e}");
    let cfg = frame(wire::Tag::Config, &[&config]);
    // Memory outside guest RAM, at the top of the address space, without an address.
    for (gpa, what) in [
        (8u64 << 20, "not guest RAM"),
        (u64::MAX - 1, "not guest RAM"),
    ] {
        let e = receive(with_magic(&[
            cfg.clone(),
            frame(wire::Tag::Memory, &[&gpa.to_le_bytes(), &[1u8; 4096]]),
        ]));
        assert!(e.to_string().contains(what), "{e}");
    }
    // Zero runs outside RAM, overflowing, or of the wrong size.
    for (gpa, len) in [(8u64 << 20, 4096u64), (4096, u64::MAX), (0, 9 << 20)] {
        let e = receive(with_magic(&[
            cfg.clone(),
            frame(wire::Tag::Zero, &[&gpa.to_le_bytes(), &len.to_le_bytes()]),
        ]));
        assert!(e.to_string().contains("not guest RAM"), "{e}");
    }
    let e = receive(with_magic(&[
        cfg.clone(),
        frame(wire::Tag::Zero, &[b"short"]),
    ]));
    assert!(e.to_string().contains("zero frame of 5 bytes"), "{e}");
    let e = receive(with_magic(&[
        cfg.clone(),
        frame(wire::Tag::Memory, &[b"abc"]),
    ]));
    assert!(e.to_string().contains("without its address"), "{e}");
    let e = receive(with_magic(&[cfg.clone(), frame(wire::Tag::Complete, &[])]));
    assert!(e.to_string().contains("without a machine state"), "{e}");
    let e = receive(with_magic(&[
        cfg.clone(),
        frame(wire::Tag::State, &[b"[]"]),
    ]));
    assert!(e.to_string().contains("machine state"), "{e}");
    // A source that stops mid-stream.
    let e = receive(with_magic(std::slice::from_ref(&cfg)));
    assert!(matches!(e, MigrationError::Stream(_)), "{e}");
    // An absurd guest size in the configuration.
    let mut big: serde_json::Value = serde_json::from_slice(&config).unwrap();
    big["memory"]["size"] = serde_json::json!(u64::MAX);
    let big = serde_json::to_vec(&big).unwrap();
    let e = receive(with_magic(&[frame(wire::Tag::Config, &[&big])]));
    assert!(e.to_string().contains("memory"), "{e}");
}
