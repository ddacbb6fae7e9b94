//! virtio-mmio transport tests: register decoding, the status state machine,
//! feature negotiation, queue validation, and a full request through the
//! event loop with a real eventfd interrupt.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtkit_block::mem::MemBackend;
use virtkit_virtio::blk::{request, Block, BlockOptions, VIRTIO_ID_BLOCK};
use virtkit_virtio::mmio::{status, MmioTransport, INT_CONFIG, INT_VRING, VIRTIO_F_VERSION_1};
use virtkit_virtio::VirtioDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

mod common;
use common::{negotiate, rd, setup_queue, wr};

const MEM_SIZE: usize = 4 << 20;

struct Fixture {
    mem: GuestMemoryMmap,
    disk: Arc<MemBackend>,
    dev: Arc<Mutex<Block>>,
    t: MmioTransport,
    irq: EventFd,
}

fn fixture() -> Fixture {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let data: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8).collect();
    let disk = Arc::new(MemBackend::from_vec(data, false));
    let dev = Arc::new(Mutex::new(
        Block::new(disk.clone(), BlockOptions::default()).unwrap(),
    ));
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let t = MmioTransport::new(dev.clone(), mem.clone(), irq.try_clone().unwrap()).unwrap();
    Fixture {
        mem,
        disk,
        dev,
        t,
        irq,
    }
}

#[test]
fn identity_registers_and_config() {
    let mut f = fixture();
    assert_eq!(rd(&mut f.t, 0x0), 0x7472_6976);
    assert_eq!(rd(&mut f.t, 0x4), 2);
    assert_eq!(rd(&mut f.t, 0x8), VIRTIO_ID_BLOCK);
    wr(&mut f.t, 0x14, 1);
    assert_eq!(rd(&mut f.t, 0x10), 1, "VERSION_1 is bit 32");
    wr(&mut f.t, 0x30, 0);
    assert_eq!(rd(&mut f.t, 0x34), 256);
    wr(&mut f.t, 0x30, 7);
    assert_eq!(rd(&mut f.t, 0x34), 0, "no such queue");
    // capacity in 512-byte sectors, read as two 32-bit halves and as a u64.
    assert_eq!(rd(&mut f.t, 0x100), (1 << 20) / 512);
    assert_eq!(rd(&mut f.t, 0x104), 0);
    let mut cap = [0u8; 8];
    f.t.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), (1 << 20) / 512);
    // Bad register widths read as zero and never panic.
    let mut b = [0xffu8; 2];
    f.t.read(0x0, &mut b);
    assert_eq!(b, [0, 0]);
    f.t.write(0x70, &[1, 2]);
    assert_eq!(f.t.status(), 0);
}

#[test]
fn features_without_version_1_are_refused() {
    let mut f = fixture();
    negotiate(&mut f.t, 0);
    assert_eq!(f.t.status() & status::FEATURES_OK, 0);
    // Features the device never offered are refused too.
    wr(&mut f.t, 0x70, 0);
    negotiate(&mut f.t, VIRTIO_F_VERSION_1 | (1 << 60));
    assert_eq!(f.t.status() & status::FEATURES_OK, 0);
    wr(&mut f.t, 0x70, 0);
    negotiate(&mut f.t, VIRTIO_F_VERSION_1);
    assert_ne!(f.t.status() & status::FEATURES_OK, 0);
    assert_eq!(f.dev.lock().unwrap().acked_features(), VIRTIO_F_VERSION_1);
}

#[test]
fn queue_registers_need_features_ok_and_valid_memory() {
    let mut f = fixture();
    // Before FEATURES_OK, queue setup is ignored.
    wr(&mut f.t, 0x30, 0);
    wr(&mut f.t, 0x44, 1);
    assert_eq!(rd(&mut f.t, 0x44), 0);
    negotiate(&mut f.t, VIRTIO_F_VERSION_1);
    // A ring outside guest memory: DRIVER_OK makes the device need a reset.
    wr(&mut f.t, 0x38, 16);
    wr(&mut f.t, 0x80, 0);
    wr(&mut f.t, 0x84, 0x10);
    wr(&mut f.t, 0x90, 0x1000);
    wr(&mut f.t, 0xa0, 0x2000);
    wr(&mut f.t, 0x44, 1);
    let s = f.t.status();
    wr(&mut f.t, 0x70, s | status::DRIVER_OK);
    assert!(!f.t.is_activated());
    assert_ne!(f.t.status() & status::DEVICE_NEEDS_RESET, 0);
    assert_ne!(f.t.interrupt_status() & INT_CONFIG, 0);
    assert_eq!(f.irq.read().unwrap(), 1);
    // Reset clears everything.
    wr(&mut f.t, 0x70, 0);
    assert_eq!(f.t.status(), 0);
    assert_eq!(f.t.interrupt_status(), 0);
}

#[test]
fn read_request_through_the_event_loop() {
    let mut f = fixture();
    let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
    em.add_subscriber(f.dev.clone());
    let vq = MockSplitQueue::new(&f.mem, 16);
    let features = f.dev.lock().unwrap().device_features();
    negotiate(&mut f.t, features);
    setup_queue(&mut f.t, &vq, 16);
    let s = f.t.status();
    wr(&mut f.t, 0x70, s | status::DRIVER_OK);
    assert!(f.t.is_activated());
    // The activation reaches the event loop.
    em.run_with_timeout(1000).unwrap();

    // A read of sectors 4..6 into guest memory.
    let (hdr, data, st) = (0x10_0000u64, 0x11_0000u64, 0x12_0000u64);
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&request::IN.to_le_bytes());
    h[8..16].copy_from_slice(&4u64.to_le_bytes());
    f.mem.write_slice(&h, GuestAddress(hdr)).unwrap();
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(hdr, 16, 1, 1)),
        RawDescriptor::from(SplitDescriptor::new(data, 1024, 3, 2)),
        RawDescriptor::from(SplitDescriptor::new(st, 1, 2, 0)),
    ];
    vq.add_desc_chains(&descs, 0).unwrap();
    wr(&mut f.t, 0x50, 0); // QueueNotify
    let start = std::time::Instant::now();
    while f.t.interrupt_status() & INT_VRING == 0 {
        em.run_with_timeout(100).unwrap();
        assert!(start.elapsed() < Duration::from_secs(10), "no interrupt");
    }
    assert_eq!(f.irq.read().unwrap(), 1);
    assert_eq!(f.mem.read_obj::<u8>(GuestAddress(st)).unwrap(), 0);
    let mut got = vec![0u8; 1024];
    f.mem.read_slice(&mut got, GuestAddress(data)).unwrap();
    assert_eq!(got, f.disk.contents()[2048..3072]);
    assert_eq!(vq.used().idx().load(), 1);
    // Acknowledge the interrupt.
    wr(&mut f.t, 0x64, INT_VRING);
    assert_eq!(rd(&mut f.t, 0x60), 0);
    // Reset stops the device; the event loop survives it.
    wr(&mut f.t, 0x70, 0);
    em.run_with_timeout(100).unwrap();
    assert!(!f.t.is_activated());
}

#[test]
fn an_unacknowledged_interrupt_is_sent_again_and_an_acknowledged_one_never() {
    let mut f = fixture();
    let edges = |irq: &EventFd| irq.read().unwrap_or(0);
    // Nothing pending: ticks send nothing.
    assert!(!f.t.resend_unacknowledged());
    assert!(!f.t.resend_unacknowledged());
    f.t.notify_config_change().unwrap();
    assert_eq!(edges(&f.irq), 1);
    // That edge is lost: the driver never acknowledges. The first tick notes it, the
    // second sends it again, and so on until the driver acknowledges.
    assert!(!f.t.resend_unacknowledged());
    assert!(f.t.resend_unacknowledged());
    assert!(f.t.resend_unacknowledged());
    assert_eq!(edges(&f.irq), 2);
    assert_eq!(f.t.resent(), 2);
    wr(&mut f.t, 0x64, INT_CONFIG);
    assert_eq!(f.t.interrupt_status(), 0);
    assert!(!f.t.resend_unacknowledged());
    // A driver that acknowledges between ticks, with an interrupt pending at each tick.
    for _ in 0..5 {
        f.t.notify_config_change().unwrap();
        assert!(!f.t.resend_unacknowledged());
        wr(&mut f.t, 0x64, INT_CONFIG);
        f.t.notify_config_change().unwrap();
    }
    assert_eq!(f.t.resent(), 2);
}
