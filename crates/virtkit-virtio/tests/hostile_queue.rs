//! A driver that corrupts its own queue must never hang the device, its
//! event loop, or the other devices on that loop; a driver reset recovers.
//! Each scenario runs on its own thread with a deadline, so a regression
//! fails here instead of hanging the test run.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtkit_block::mem::MemBackend;
use virtkit_virtio::blk::{request, Block, BlockOptions};
use virtkit_virtio::mmio::{status, MmioTransport, INT_CONFIG, INT_VRING};
use virtkit_virtio::{testing, DeviceQueue, QueueFault, VirtioDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

mod common;
use common::{negotiate, rd, setup_queue, wr};

const DEADLINE: Duration = Duration::from_secs(30);

/// Run `f` on its own thread; fail if it does not return within DEADLINE.
fn within_deadline<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: still running after {DEADLINE:?}: hang")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: panicked"),
    }
}

/// The exact input the fuzzer found: avail index 41 on a 16-entry queue.
#[test]
fn fuzz_input_bogus_avail_index_returns() {
    let run = within_deadline("virtio_blk 29 2b 29", || {
        testing::blk_queue(&[0x29, 0x2b, 0x29])
    });
    assert_eq!(run.unwrap().completed, 0);
}

/// Every committed virtio_blk corpus input, through the fuzz target's entry
/// point.
#[test]
fn virtio_blk_corpus_replays() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/virtio_blk");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        within_deadline(&path.display().to_string(), move || {
            testing::blk_queue(&data);
        });
        n += 1;
    }
    assert!(n > 0, "no corpus files in {}", dir.display());
}

/// A block device on its transport, as the VMM wires them.
struct Disk {
    dev: Arc<Mutex<Block>>,
    t: MmioTransport,
    backend: Arc<MemBackend>,
}

fn disk(mem: &GuestMemoryMmap, fill: u8) -> Disk {
    let backend = Arc::new(MemBackend::from_vec(vec![fill; 64 * 1024], false));
    let dev = Arc::new(Mutex::new(
        Block::new(backend.clone(), BlockOptions::default()).unwrap(),
    ));
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let t = MmioTransport::new(dev.clone(), mem.clone(), irq).unwrap();
    Disk { dev, t, backend }
}

/// The driver's whole set-up: handshake, one queue at `vq`, DRIVER_OK.
fn bring_up(d: &mut Disk, vq: &MockSplitQueue<'_, GuestMemoryMmap>) {
    let features = d.dev.lock().unwrap().device_features();
    let t = &mut d.t;
    negotiate(t, features);
    setup_queue(t, vq, 16);
    let s = t.status();
    wr(t, 0x70, s | status::DRIVER_OK);
    assert!(t.is_activated());
}

/// Queue a read of sector 0 (512 bytes) whose buffers start at `buf`.
fn queue_read(mem: &GuestMemoryMmap, vq: &MockSplitQueue<'_, GuestMemoryMmap>, buf: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&request::IN.to_le_bytes());
    mem.write_slice(&h, GuestAddress(buf)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(buf + 0x1000)).unwrap();
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(buf, 16, 1, 1)),
        RawDescriptor::from(SplitDescriptor::new(buf + 0x200, 512, 3, 2)),
        RawDescriptor::from(SplitDescriptor::new(buf + 0x1000, 1, 2, 0)),
    ];
    vq.add_desc_chains(&descs, 0).unwrap();
}

type Em = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Run the event loop until `done` holds (each round returns promptly, or
/// the deadline of the caller fires).
fn run_until(em: &mut Em, mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        em.run_with_timeout(50).unwrap();
    }
    panic!("condition not reached after 200 event loop rounds");
}

/// One device's driver publishes a bogus avail index: the device stops that
/// queue and asks for a reset, the event loop returns and still serves the
/// other device, and after a driver reset the first device works again.
#[test]
fn bogus_avail_index_through_transport_and_event_loop() {
    within_deadline("hostile queue scenario", || {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        let mut em = Em::new().unwrap();
        let mut a = disk(&mem, 0xaa);
        let mut b = disk(&mem, 0xbb);
        em.add_subscriber(a.dev.clone());
        em.add_subscriber(b.dev.clone());
        let vqa = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let vqb = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
        bring_up(&mut a, &vqa);
        bring_up(&mut b, &vqb);
        em.run_with_timeout(100).unwrap();

        // Device A: avail index 41 on a 16-entry queue, then a notify.
        vqa.avail().idx().store(41);
        wr(&mut a.t, 0x50, 0);
        // Device B: a valid read, notified at the same time.
        queue_read(&mem, &vqb, 0x40_0000);
        wr(&mut b.t, 0x50, 0);
        run_until(&mut em, || {
            b.t.interrupt_status() & INT_VRING != 0
                && a.t.status() & status::DEVICE_NEEDS_RESET != 0
        });
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x40_1000)).unwrap(),
            0,
            "B's status"
        );
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x40_0200)).unwrap(),
            0xbb,
            "B's data"
        );
        assert_eq!(vqb.used().idx().load(), 1);
        // A asked for a reset through the status register and a config
        // interrupt, and used nothing.
        assert_ne!(rd(&mut a.t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
        assert_ne!(a.t.interrupt_status() & INT_CONFIG, 0);
        assert_eq!(vqa.used().idx().load(), 0);
        // A stays quiet while its driver has not reset it: notifies do not
        // bring the spin back.
        wr(&mut a.t, 0x50, 0);
        em.run_with_timeout(100).unwrap();
        assert_eq!(vqa.used().idx().load(), 0);

        // The driver resets A and sets it up again on fresh rings.
        wr(&mut a.t, 0x70, 0);
        assert_eq!(a.t.status(), 0, "reset clears DEVICE_NEEDS_RESET");
        em.run_with_timeout(100).unwrap();
        let vqa2 = MockSplitQueue::create(&mem, GuestAddress(0x2_0000), 16);
        bring_up(&mut a, &vqa2);
        queue_read(&mem, &vqa2, 0x50_0000);
        wr(&mut a.t, 0x50, 0);
        run_until(&mut em, || vqa2.used().idx().load() == 1);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x50_1000)).unwrap(), 0);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x50_0200)).unwrap(), 0xaa);
        assert_eq!(a.t.status() & status::DEVICE_NEEDS_RESET, 0);
        drop(a.backend);
    });
}

/// The queue faults on a bogus index and stays faulted; pop and rearm
/// both return at once.
#[test]
fn device_queue_fault_is_sticky() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let vq = MockSplitQueue::new(&mem, 16);
    let mut q = DeviceQueue::detached(vq.create_queue().unwrap());
    assert!(!q.rearm(&mem), "empty queue");
    vq.avail().idx().store(17);
    assert!(q.pop(&mem).is_none());
    assert_eq!(
        q.fault(),
        Some(QueueFault::BogusAvailIndex {
            avail: 17,
            next: 0,
            size: 16
        })
    );
    // Even a now-valid index is ignored until reset.
    vq.avail().idx().store(1);
    assert!(!q.rearm(&mem));
    assert!(q.pop(&mem).is_none());
}

/// A head index outside the descriptor table is a fault, not a chain.
#[test]
fn device_queue_bad_head_index() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let vq = MockSplitQueue::new(&mem, 16);
    let mut q = DeviceQueue::detached(vq.create_queue().unwrap());
    vq.avail().ring().ref_at(0).unwrap().store(99);
    vq.avail().idx().store(1);
    assert!(q.rearm(&mem), "one chain pending");
    assert!(q.pop(&mem).is_none());
    assert_eq!(
        q.fault(),
        Some(QueueFault::BadHeadIndex { head: 99, size: 16 })
    );
}

/// The fuzz harness reaches the device: a valid one-chain input completes.
#[test]
fn fuzz_harness_completes_a_valid_request() {
    let mut input = vec![0u8; 0x60];
    input[2] = 1; // avail idx 1, ring[0] = head 0
    let desc = |addr: u64, len: u32, flags: u16, next: u16| {
        let mut d = Vec::new();
        d.extend_from_slice(&addr.to_le_bytes());
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&next.to_le_bytes());
        d
    };
    // A read of sector 0: header at 0x8000 (zeroes: IN, sector 0), 512 bytes of data,
    // then the status byte.
    input[0x40..0x50].copy_from_slice(&desc(0x8000, 16, 1, 1));
    input[0x50..0x60].copy_from_slice(&desc(0x9000, 512, 3, 2));
    input.extend_from_slice(&desc(0xa000, 1, 2, 0));
    let run = testing::blk_queue(&input).unwrap();
    assert_eq!(run.completed, 1);
    assert!(run.notify);
}

/// An avail ring at guest address 0 (which virtio-queue cannot serve) is
/// refused at DRIVER_OK with DEVICE_NEEDS_RESET, not activated.
#[test]
fn avail_ring_at_zero_is_refused() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let mut d = disk(&mem, 0);
    let features = d.dev.lock().unwrap().device_features();
    let t = &mut d.t;
    negotiate(t, features);
    wr(t, 0x30, 0);
    wr(t, 0x38, 16);
    for (reg, addr) in [(0x80, 0x1000u32), (0x90, 0), (0xa0, 0x2000)] {
        wr(t, reg, addr);
        wr(t, reg + 4, 0);
    }
    wr(t, 0x44, 1);
    let s = t.status();
    wr(t, 0x70, s | status::DRIVER_OK);
    assert!(!t.is_activated());
    assert_ne!(rd(t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
}

/// A full queue of REQUEST_BUDGET requests completes in one call and leaves
/// notifications enabled (the driver's next request must come with a kick).
#[test]
fn budget_run_leaves_notifications_on() {
    use virtkit_virtio::blk::REQUEST_BUDGET;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let vq = MockSplitQueue::new(&mem, 256);
    // One-descriptor chains (a lone status byte: malformed, completed with 0).
    let descs: Vec<RawDescriptor> = (0..256u64)
        .map(|i| RawDescriptor::from(SplitDescriptor::new(0x20_0000 + i, 1, 2, 0)))
        .collect();
    vq.add_desc_chains(&descs, 0).unwrap();
    let mut q = DeviceQueue::detached(vq.create_queue().unwrap());
    let d = disk(&mem, 0);
    let run = d.dev.lock().unwrap().process_queue(&mem, &mut q);
    assert_eq!(run.completed, REQUEST_BUDGET);
    assert!(!run.more);
    assert_eq!(vq.used().idx().load(), 256);
    // VRING_USED_F_NO_NOTIFY is clear again.
    assert_eq!(mem.read_obj::<u16>(vq.used_addr()).unwrap() & 1, 0);
}
