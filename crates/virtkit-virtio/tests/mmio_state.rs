//! Transport and device state for snapshots: a virtio-blk device that completed a request
//! is saved (through JSON) and restored into a new device and transport over the same
//! guest memory; the restored device goes on at the next ring entry (it does not redo the
//! first request, nor skip the second). States that do not fit are refused.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtkit_block::mem::MemBackend;
use virtkit_virtio::blk::{request, Block, BlockOptions};
use virtkit_virtio::mmio::{status, MmioState, MmioTransport, INT_VRING};
use virtkit_virtio::VirtioDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

mod common;
use common::{negotiate, setup_queue, wr};

type Loop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

fn device(disk: &Arc<MemBackend>, mem: &GuestMemoryMmap) -> (Arc<Mutex<Block>>, MmioTransport) {
    let dev = Arc::new(Mutex::new(
        Block::new(disk.clone(), BlockOptions::default()).unwrap(),
    ));
    let t = MmioTransport::new(
        dev.clone(),
        mem.clone(),
        EventFd::new(EFD_NONBLOCK).unwrap(),
    )
    .unwrap();
    (dev, t)
}

/// Queues a read of 2 sectors at `sector` as chain `head` (descriptors head..head+3).
fn read_request(
    mem: &GuestMemoryMmap,
    vq: &MockSplitQueue<'_, GuestMemoryMmap>,
    n: u64,
    sector: u64,
) {
    let base = 0x10_0000 + n * 0x1_0000;
    let (hdr, data, st) = (base, base + 0x1000, base + 0x2000);
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&request::IN.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(hdr)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(st)).unwrap();
    let first = (n * 3) as u16;
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(hdr, 16, 1, first + 1)),
        RawDescriptor::from(SplitDescriptor::new(data, 1024, 3, first + 2)),
        RawDescriptor::from(SplitDescriptor::new(st, 1, 2, 0)),
    ];
    vq.add_desc_chains(&descs, first).unwrap();
}

fn run_until_used(
    em: &mut Loop,
    t: &mut MmioTransport,
    vq: &MockSplitQueue<'_, GuestMemoryMmap>,
    idx: u16,
) {
    wr(t, 0x50, 0);
    let start = Instant::now();
    while vq.used().idx().load() < idx {
        em.run_with_timeout(100).unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "request not completed"
        );
    }
    // (With EVENT_IDX the driver's used_event decides whether an interrupt comes.)
    wr(t, 0x64, INT_VRING);
}

#[test]
fn a_restored_block_device_goes_on_at_the_next_ring_entry() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let disk = Arc::new(MemBackend::from_vec(data, false));
    let (dev, mut t) = device(&disk, &mem);
    let mut em = Loop::new().unwrap();
    em.add_subscriber(dev.clone());
    let vq = MockSplitQueue::new(&mem, 16);
    let features = dev.lock().unwrap().device_features();
    negotiate(&mut t, features);
    setup_queue(&mut t, &vq, 16);
    let s = t.status();
    wr(&mut t, 0x70, s | status::DRIVER_OK);
    em.run_with_timeout(1000).unwrap();
    read_request(&mem, &vq, 0, 4);
    run_until_used(&mut em, &mut t, &vq, 1);

    let saved = t.save_state();
    assert!(saved.activated);
    assert_eq!(
        (saved.queues[0].next_avail, saved.queues[0].next_used),
        (1, 1)
    );
    let saved: MmioState = serde_json::from_str(&serde_json::to_string(&saved).unwrap()).unwrap();
    drop((em, t, dev));

    // A new device and transport, same guest memory (the snapshot's), same disk.
    let (dev2, mut t2) = device(&disk, &mem);
    t2.restore_state(&saved).unwrap();
    assert!(t2.is_activated());
    assert_eq!(t2.status(), saved.status);
    let mut em2 = Loop::new().unwrap();
    em2.add_subscriber(dev2.clone());
    em2.run_with_timeout(1000).unwrap();
    read_request(&mem, &vq, 1, 8);
    run_until_used(&mut em2, &mut t2, &vq, 2);
    let mut got = vec![0u8; 1024];
    mem.read_slice(&mut got, GuestAddress(0x11_1000)).unwrap();
    assert_eq!(got, disk.contents()[4096..5120]);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x11_2000)).unwrap(), 0);
    // The first request was not redone: exactly two used entries.
    std::thread::sleep(Duration::from_millis(50));
    em2.run_with_timeout(10).unwrap();
    assert_eq!(vq.used().idx().load(), 2);
}

/// A request the driver queued and notified, saved before the device saw the notification
/// (a snapshot or migration taken between the two): the restored device serves it without
/// a new notification. (virtio-blk looks at its ring when activated; the transport also
/// kicks every ready queue on restore, for devices that do not, such as virtio-net's TX.)
#[test]
fn a_request_pending_at_the_save_is_served_after_the_restore() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let disk = Arc::new(MemBackend::from_vec(data, false));
    let (dev, mut t) = device(&disk, &mem);
    let vq = MockSplitQueue::new(&mem, 16);
    let features = dev.lock().unwrap().device_features();
    negotiate(&mut t, features);
    setup_queue(&mut t, &vq, 16);
    let s = t.status();
    wr(&mut t, 0x70, s | status::DRIVER_OK);
    read_request(&mem, &vq, 0, 4);
    let saved = t.save_state();
    assert_eq!(saved.queues[0].next_avail, 0, "not seen yet");
    drop((t, dev));

    let (dev2, mut t2) = device(&disk, &mem);
    t2.restore_state(&saved).unwrap();
    let mut em = Loop::new().unwrap();
    em.add_subscriber(dev2.clone());
    let start = Instant::now();
    while vq.used().idx().load() < 1 {
        em.run_with_timeout(100).unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the pending request was not served after the restore"
        );
    }
    let mut got = vec![0u8; 1024];
    mem.read_slice(&mut got, GuestAddress(0x10_1000)).unwrap();
    assert_eq!(got, disk.contents()[2048..3072]);
}

#[test]
fn states_that_do_not_fit_are_refused() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let disk = Arc::new(MemBackend::new(4096));
    let (_d, t) = device(&disk, &mem);
    let good = t.save_state();
    assert!(!good.activated);
    let (_d, mut t2) = device(&disk, &mem);
    let mut s = good.clone();
    s.device_type = 1;
    assert!(t2
        .restore_state(&s)
        .unwrap_err()
        .to_string()
        .contains("device type"));
    let mut s = good.clone();
    s.queues.push(s.queues[0]);
    assert!(t2.restore_state(&s).is_err());
    let mut s = good.clone();
    s.queues[0].max_size = 8;
    assert!(t2.restore_state(&s).is_err());
    let mut s = good.clone();
    s.driver_features = u64::MAX;
    assert!(t2.restore_state(&s).is_err());
    // Activated with queues in memory that does not exist: refused, not a panic.
    let mut s = good;
    s.activated = true;
    s.status = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
    s.queues[0].ready = true;
    s.queues[0].desc_table = 0xffff_0000;
    s.queues[0].avail_ring = 0xffff_1000;
    s.queues[0].used_ring = 0xffff_2000;
    assert!(t2.restore_state(&s).is_err());
    assert!(serde_json::from_str::<MmioState>("{\"status\": 1}").is_err());
}
