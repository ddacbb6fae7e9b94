//! Fuzzing entry points (feature `test-utils`).
//!
//! `fuzz/fuzz_targets/{mmio_transport,vm_config,snapshot_state,api_requests}.rs` call
//! [`mmio_transport`], [`vm_config`], [`snapshot_state`] and [`api_requests`], and `tests/fuzz_corpus.rs` replays every committed
//! corpus input through them, so an input that once crashed or hung stays covered on
//! stable Rust.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtkit_memory::GuestMemoryBuilder;
use virtkit_qcow2::{open_image, ImageFormat, OpenOptions};
use virtkit_vcpu::fake::FakeHypervisor;
use virtkit_vcpu::Hypervisor;
use virtkit_virtio::blk::{Block, BlockOptions};
use virtkit_virtio::testing::FuzzInput;
use vm_memory::{Bytes, GuestAddress};

use crate::config::{ConfigError, VmConfig};
use crate::devices::DeviceManager;

/// Guest RAM of the [`mmio_transport`] harness (MiB).
pub const MMIO_FUZZ_RAM_MIB: u64 = 2;

/// Size of the raw disk behind the [`mmio_transport`] harness's virtio-blk device.
pub const MMIO_FUZZ_DISK: u64 = 64 * 1024;

/// Access sizes a vCPU exit can carry (1, 2, 4 and 8 bytes, and the odd ones).
const LENS: [usize; 8] = [1, 2, 4, 8, 3, 5, 6, 7];

/// What [`mmio_transport`] saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MmioFuzzRun {
    /// Register accesses made.
    pub accesses: u64,
    /// The device status register at the end, before the final reset.
    pub status: u32,
    /// The interrupt status register at the end, before the final reset.
    pub interrupt_status: u32,
    /// Interrupts the fake VM saw on the device's line.
    pub interrupts: u64,
}

/// A scratch file name no other caller in this process uses.
fn scratch(what: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "virtkit-fuzz-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A guest driving the virtio-mmio transport of a virtio-blk device (on a raw
/// [`MMIO_FUZZ_DISK`] file) any way it likes, through [`DeviceManager`] on the fake
/// hypervisor: register reads and writes of any size at any offset of the window (and
/// just past it), in any order, with guest memory writes and event-loop turns (where the
/// device activates and serves its queue) in between. `data` is a list of operations, one
/// byte each and its arguments:
///
/// - 0: 32-bit register write (offset byte × 4, value u32);
/// - 1: 32-bit register read (offset byte × 4);
/// - 2, 3: write or read at any offset (u16 % 0x1100) of any size (see `LENS`);
/// - 4: guest memory write (address u16 × 32, length byte % 64 + 1, bytes);
/// - 5: one turn of the event loop;
/// - 6: a driver's whole bring-up in one step (status, features from a u32, queue 0 of
///   size `1 << (byte % 9)` with its rings at three u16 × 16 addresses, DRIVER_OK);
/// - 7: a status write (a byte; 0 is a reset).
///
/// The magic value reads back at every turn, and a reset leaves status 0. It must never
/// panic or hang.
pub fn mmio_transport(data: &[u8]) -> Option<MmioFuzzRun> {
    let hv = FakeHypervisor::default();
    let vm = hv.create_vm().ok()?;
    let fake = hv.vms().pop()?;
    let ram = GuestMemoryBuilder::from_mib(MMIO_FUZZ_RAM_MIB)
        .check_host_ram(false)
        .build()
        .ok()?;
    let mem = ram.memory().clone();
    let mut dm = DeviceManager::new(vm, mem.clone());
    let disk = scratch("mmio");
    let file = std::fs::File::create(&disk).ok()?;
    file.set_len(MMIO_FUZZ_DISK).ok()?;
    drop(file);
    let backend = open_image(&disk, ImageFormat::Raw, &OpenOptions::default());
    let _ = std::fs::remove_file(&disk);
    let blk = Block::new(
        backend.ok()?,
        BlockOptions {
            read_only: false,
            serial: "fuzz".into(),
        },
    )
    .ok()?;
    let range = dm.add_virtio(Arc::new(Mutex::new(blk))).ok()?;
    let irq = *fake.irqfds().last()?;
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().ok()?;
    for s in dm.take_subscribers() {
        em.add_subscriber(s);
    }
    let base = range.start.0;
    let bus = &dm.buses().mmio;
    let mut run = MmioFuzzRun::default();
    let write32 = |off: u64, v: u32| bus.write(base + off, &v.to_le_bytes());
    let read32 = |off: u64| {
        let mut b = [0u8; 4];
        bus.read(base + off, &mut b);
        u32::from_le_bytes(b)
    };
    let mut input = FuzzInput::new(data);
    while !input.is_empty() {
        run.accesses += 1;
        match input.u8() % 8 {
            0 => {
                let off = u64::from(input.u8() & 0x3f) * 4;
                write32(off, input.u32());
            }
            1 => {
                read32(u64::from(input.u8() & 0x3f) * 4);
            }
            2 => {
                let off = u64::from(input.u16() % 0x1100);
                let len = LENS[usize::from(input.u8() % 8)];
                let bytes = input.bytes_padded(len);
                bus.write(base + off, &bytes);
            }
            3 => {
                let off = u64::from(input.u16() % 0x1100);
                let mut buf = vec![0u8; LENS[usize::from(input.u8() % 8)]];
                bus.read(base + off, &mut buf);
            }
            4 => {
                let at = u64::from(input.u16()) * 32;
                let n = usize::from(input.u8() % 64) + 1;
                let _ = mem.write_slice(&input.bytes_padded(n), GuestAddress(at));
            }
            5 => {
                let _ = em.run_with_timeout(0);
                assert_eq!(read32(0), 0x7472_6976, "magic");
            }
            6 => {
                let features = input.u32();
                let size = 1u32 << (input.u8() % 9);
                let [d, a, u] = [input.u16(), input.u16(), input.u16()].map(|x| u32::from(x) * 16);
                for (off, v) in [
                    (0x70, 0),
                    (0x70, 1),
                    (0x70, 3),
                    (0x14, 0),
                    (0x24, 1),
                    (0x20, 1),
                    (0x24, 0),
                    (0x20, features),
                    (0x70, 0xb),
                    (0x30, 0),
                    (0x38, size),
                    (0x80, d),
                    (0x84, 0),
                    (0x90, a),
                    (0x94, 0),
                    (0xa0, u),
                    (0xa4, 0),
                    (0x44, 1),
                    (0x70, 0xf),
                ] {
                    write32(off, v);
                }
                let _ = em.run_with_timeout(0);
            }
            _ => {
                let v = u32::from(input.u8());
                write32(0x70, v);
                if v == 0 {
                    assert_eq!(read32(0x70), 0, "status after a reset");
                    assert_eq!(read32(0x60), 0, "interrupt status after a reset");
                }
            }
        }
    }
    let _ = em.run_with_timeout(0);
    run.status = read32(0x70);
    run.interrupt_status = read32(0x60);
    run.interrupts = fake.irq_count(irq);
    write32(0x70, 0);
    assert_eq!(read32(0x70), 0, "status after a reset");
    let _ = em.run_with_timeout(0);
    Some(run)
}

/// `data` as a `VmConfig` JSON body (as the command line's `--config`, the control API's
/// `vm.create` and a snapshot carry it): parsed with serde, checked to survive a
/// serialization round trip unchanged, then validated twice: as given (its files need not
/// exist) and with every file it names replaced by `/`, so the checks after the file
/// checks run too. Returns the second validation's verdict, or `None` when the JSON does
/// not parse. It must never panic.
pub fn vm_config(data: &[u8]) -> Option<Result<(), ConfigError>> {
    let c: VmConfig = serde_json::from_slice(data).ok()?;
    let json = serde_json::to_string(&c).expect("a parsed VmConfig serializes");
    let back: VmConfig = serde_json::from_str(&json).expect("a serialized VmConfig parses");
    assert_eq!(back, c, "VmConfig changes in a JSON round trip: {json}");
    let _ = c.validate(8);
    let _ = (c.cmdline(), c.memory.huge_pages());
    for d in c.disks() {
        let _ = d.format();
    }
    for (i, n) in c.nets().iter().enumerate() {
        let _ = n.spec(i);
    }
    let mut c = c;
    let root = PathBuf::from("/");
    if c.payload.kernel.is_some() {
        c.payload.kernel = Some(root.clone());
    }
    if c.payload.initramfs.is_some() {
        c.payload.initramfs = Some(root.clone());
    }
    for d in c.disks.iter_mut().flatten() {
        if d.path.is_some() {
            d.path = Some(root.clone());
        }
    }
    Some(c.validate(8))
}

/// Guest RAM of the [`snapshot_state`] harness's VM (MiB).
pub const SNAPSHOT_FUZZ_RAM_MIB: u64 = 4;

/// The VM of the [`snapshot_state`] harness: 1 vCPU, [`SNAPSHOT_FUZZ_RAM_MIB`] of RAM, one
/// raw disk at `disk`, no serial console of its own (the harness gives it a sink).
pub fn snapshot_fuzz_config(disk: &std::path::Path) -> VmConfig {
    let mut c = VmConfig::with_kernel(std::path::Path::new("/"));
    c.memory.size = SNAPSHOT_FUZZ_RAM_MIB << 20;
    c.memory.thp = false;
    c.disks = Some(vec![crate::config::DiskConfig {
        path: Some(disk.into()),
        ..crate::config::DiskConfig::default()
    }]);
    c
}

/// `data` as the `state` member of a snapshot's `state.json` (the machine state a hostile
/// or damaged snapshot carries, with a checksum that matches: anyone can recompute it),
/// restored on the fake hypervisor into the VM of [`snapshot_fuzz_config`]: every vCPU,
/// the VM's in-kernel devices, COM1 and every virtio-mmio transport with its queues and
/// device. Returns the restore's verdict, or `None` when `data` is not JSON. It must never
/// panic.
pub fn snapshot_state(data: &[u8]) -> Option<Result<(), String>> {
    let state: serde_json::Value = serde_json::from_slice(data).ok()?;
    let dir = tempfile::tempdir().ok()?;
    let d = dir.path();
    let disk = d.join("disk0");
    let config = snapshot_fuzz_config(&disk);
    let bytes = serde_json::to_vec(&state).ok()?;
    let file = serde_json::json!({
        "version": crate::snapshot::SNAPSHOT_VERSION,
        "checksum": crate::snapshot::checksum(&bytes),
        "state": state,
    });
    let written = (|| {
        std::fs::write(d.join("config.json"), serde_json::to_vec(&config)?)?;
        std::fs::write(d.join("state.json"), serde_json::to_vec(&file)?)?;
        std::fs::File::create(d.join("memory"))?.set_len(SNAPSHOT_FUZZ_RAM_MIB << 20)?;
        std::fs::File::create(&disk)?.set_len(MMIO_FUZZ_DISK)?;
        Ok::<(), Box<dyn std::error::Error>>(())
    })();
    written.ok()?;
    let built = crate::VmmBuilder::from_snapshot(d).and_then(|b| {
        b.hypervisor(Arc::new(FakeHypervisor::default()))
            .serial_output(Box::new(std::io::sink()))
            .build()
    });
    Some(built.map(|_| ()).map_err(|e| e.to_string()))
}

/// `data` as the bytes a client sends on a control API connection: every request the
/// server's HTTP reader takes from it (pipelined, chunked or not, `Expect: 100-continue`,
/// the header and body limits), each body parsed as its endpoint's JSON (a `VmConfig` for
/// `vm.create`). Returns how many requests were read. It must never panic or hang.
pub fn api_requests(data: &[u8]) -> usize {
    crate::api::fuzz_requests(data)
}
