//! Replays the committed inputs of the `mmio_transport` and `vm_config` fuzz
//! targets (`fuzz/corpus/TARGET/`, and `fuzz/regressions/TARGET/` when
//! present) through their entry points in `virtkit_vmm::testing`, on stable
//! Rust: an input that once panicked or hung stays covered.
#![allow(clippy::unwrap_used)]

use virtkit_lab::fuzz_corpus::{replay, seed};
use virtkit_vmm::testing;

#[test]
fn mmio_transport_corpus_replays() {
    replay("mmio_transport", testing::mmio_transport);
}

/// The seeds reach the device: a request is served (and interrupts), a queue the
/// transport cannot use sets DEVICE_NEEDS_RESET.
#[test]
fn mmio_transport_seeds_reach_the_device() {
    let run = |n| testing::mmio_transport(&seed("mmio_transport", n)).unwrap();
    let r = run("read-request");
    assert_eq!(r.status, 0xf, "{r:?}");
    assert!(r.interrupts >= 1, "{r:?}");
    let r = run("write-then-read");
    assert!(r.interrupts >= 1, "{r:?}");
    let r = run("avail-at-zero");
    assert_ne!(r.status & 0x40, 0, "{r:?}");
    let r = run("features-refused");
    assert_eq!(r.status & 0x8, 0, "{r:?}");
}

#[test]
fn vm_config_corpus_replays() {
    replay("vm_config", testing::vm_config);
}

/// The seeds parse, and the full one validates once its files exist.
#[test]
fn vm_config_seeds_parse() {
    let run = |n| testing::vm_config(&seed("vm_config", n));
    assert_eq!(run("cloud-hypervisor-full"), Some(Ok(())));
    assert!(run("minimal").is_some());
    assert!(matches!(run("bad-mac"), Some(Err(_))));
}

#[test]
fn snapshot_state_corpus_replays() {
    replay("snapshot_state", testing::snapshot_state);
}

/// The seed (a real snapshot of the harness's VM) restores; damaged copies of it are
/// refused with an error, not a panic.
#[test]
fn snapshot_state_seed_restores_and_damage_is_refused() {
    let seed = seed("snapshot_state", "fake-vm-disk");
    assert_eq!(testing::snapshot_state(&seed), Some(Ok(())));
    // An activated virtio-blk with a live queue restores; one whose rings lie outside guest
    // memory is an error or a device that needs a reset, never a panic.
    let run = |n| testing::snapshot_state(&virtkit_lab::fuzz_corpus::seed("snapshot_state", n));
    assert_eq!(run("activated-blk"), Some(Ok(())));
    assert!(run("hostile-rings").is_some());
    let v: serde_json::Value = serde_json::from_slice(&seed).unwrap();
    let damaged = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = v.clone();
        f(&mut v);
        testing::snapshot_state(&serde_json::to_vec(&v).unwrap()).unwrap()
    };
    let e = damaged(&|v| v["disks"][0] = "../../etc/passwd".into()).unwrap_err();
    assert!(e.contains("disk file name"), "{e}");
    let e = damaged(&|v| v["vcpus"] = serde_json::json!([])).unwrap_err();
    assert!(e.contains("vCPU"), "{e}");
    let e = damaged(&|v| v["virtio"] = serde_json::json!([])).unwrap_err();
    assert!(!e.is_empty());
    assert_eq!(testing::snapshot_state(b"not json"), None);
}

/// Regenerates `fuzz/corpus/snapshot_state/seed-fake-vm-disk`: the harness's VM run on the
/// fake hypervisor (some serial output, a virtio-blk device), paused and snapshotted.
#[test]
#[ignore = "regenerates a fuzz seed"]
fn snapshot_state_make_seed() {
    use std::sync::Arc;
    use virtkit_vcpu::fake::{FakeHypervisor, ScriptedExit};
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk0");
    std::fs::write(&disk, vec![0u8; testing::MMIO_FUZZ_DISK as usize]).unwrap();
    let hv = Arc::new(FakeHypervisor::default());
    hv.script(
        0,
        (0..100)
            .map(|i| ScriptedExit::IoOut {
                port: 0x3f8,
                data: vec![b'a' + i % 26],
            })
            .collect(),
    );
    let mut c = testing::snapshot_fuzz_config(&disk);
    let k = dir.path().join("k");
    std::fs::write(&k, virtkit_boot::testing::tiny_elf(&[0xf4])).unwrap();
    c.payload.kernel = Some(k);
    let vmm = virtkit_vmm::Vmm::builder(c)
        .hypervisor(hv)
        .serial_output(Box::new(std::io::sink()))
        .build()
        .unwrap();
    let ctl = vmm.controller();
    let t = std::thread::spawn(move || vmm.run());
    while ctl.state() != virtkit_vmm::VmState::Running {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    ctl.pause().unwrap();
    let snap = dir.path().join("snap");
    ctl.snapshot(&snap).unwrap();
    ctl.shutdown().unwrap();
    t.join().unwrap().unwrap();
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(snap.join("state.json")).unwrap()).unwrap();
    let out = virtkit_lab::fuzz_corpus::fuzz_dir().join("corpus/snapshot_state");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("seed-fake-vm-disk"),
        serde_json::to_vec(&file["state"]).unwrap(),
    )
    .unwrap();
}

#[test]
fn api_requests_corpus_replays() {
    replay("api_requests", testing::api_requests);
}

/// The seeds are read as the requests they are.
#[test]
fn api_requests_seeds_parse() {
    let run = |n| testing::api_requests(&seed("api_requests", n));
    assert_eq!(run("ping"), 1);
    assert_eq!(run("create-boot-pipelined"), 2);
    assert_eq!(run("chunked-continue"), 1);
    assert_eq!(run("migration"), 1);
    assert_eq!(run("bad-length"), 0);
    assert_eq!(run("huge-header"), 0);
}
