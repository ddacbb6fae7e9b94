//! Tests of the virtio-net device: a [`Rig`] runs one over a
//! `UnixDatagram` backend on an event loop, with the driver side of both
//! queues in guest memory. The receive and transmit paths, property tests
//! and a backend that is neither a tap nor a socket have files of their
//! own; configuration, activation, malformed rings and reset are here.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use virtkit_virtio::{
    ActivateError, ActiveQueue, GuestMem, Interrupt, InterruptReason, VirtioDevice,
};

use super::*;
use crate::features::*;
use crate::tap::Tap;
use crate::testing::DriverQueue;
use crate::MacAddr;

mod backend;
mod prop;
mod rx;
mod tx;

/// Counts queue interrupts per queue, and needs-reset reports.
#[derive(Debug, Default)]
struct CountIrq([AtomicUsize; 2], AtomicUsize);
impl Interrupt for CountIrq {
    fn signal(&self, r: InterruptReason) -> io::Result<()> {
        match r {
            InterruptReason::Queue(i) => {
                self.0[usize::from(i)].fetch_add(1, Ordering::SeqCst);
            }
            InterruptReason::NeedsReset => {
                self.1.fetch_add(1, Ordering::SeqCst);
            }
            InterruptReason::Config => {}
        }
        Ok(())
    }
}

const RXQ: GuestAddress = GuestAddress(0);
const TXQ: GuestAddress = GuestAddress(0x1_0000);
const BUF: u64 = 0x4_0000;
const MEM_END: u64 = 0x40_0000;

type Dev = Arc<Mutex<Net<UnixDatagram>>>;

struct Rig {
    mem: GuestMem,
    net: Dev,
    em: EventManager<Dev>,
    peer: UnixDatagram,
    rxq: DriverQueue,
    txq: DriverQueue,
    irq: Arc<CountIrq>,
    rx_kick: EventFd,
    tx_kick: EventFd,
}

fn rig(features: u64, mtu: Option<u16>) -> Rig {
    // Two adjacent regions, so buffers can straddle a boundary.
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), 0x20_0000),
        (GuestAddress(0x20_0000), (MEM_END - 0x20_0000) as usize),
    ])
    .unwrap();
    let (dev, peer) = UnixDatagram::pair().unwrap();
    dev.set_nonblocking(true).unwrap();
    peer.set_nonblocking(true).unwrap();
    let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
    let net = Arc::new(Mutex::new(Net::new(dev, mac, mtu).unwrap()));
    let mut em = EventManager::<Dev>::new().unwrap();
    em.add_subscriber(net.clone());
    let rxq = DriverQueue::new(&mem, RXQ, 256);
    let txq = DriverQueue::new(&mem, TXQ, 256);
    let irq = Arc::new(CountIrq::default());
    let rx_kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let tx_kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    {
        let mut n = net.lock().unwrap();
        let offered = n.device_features();
        n.set_acked_features(features & offered);
        n.activate(
            mem.clone(),
            irq.clone(),
            active_queues(rxq.queue(), txq.queue(), &rx_kick, &tx_kick),
        )
        .unwrap();
    }
    let mut r = Rig {
        mem,
        net,
        em,
        peer,
        rxq,
        txq,
        irq,
        rx_kick,
        tx_kick,
    };
    r.run();
    r
}

impl Rig {
    /// Dispatch everything pending; returns the number of events.
    fn run(&mut self) -> usize {
        let mut total = 0;
        loop {
            let n = self.em.run_with_timeout(0).unwrap();
            total += n;
            if n == 0 {
                return total;
            }
        }
    }
    fn stats(&self) -> NetStats {
        self.net.lock().unwrap().stats()
    }
    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

/// The receive and transmit queues of an activation, notified through
/// clones of `rx_kick` and `tx_kick`.
fn active_queues(
    rx: virtio_queue::Queue,
    tx: virtio_queue::Queue,
    rx_kick: &EventFd,
    tx_kick: &EventFd,
) -> Vec<ActiveQueue> {
    vec![
        ActiveQueue {
            queue: rx,
            notify: rx_kick.try_clone().unwrap(),
        },
        ActiveQueue {
            queue: tx,
            notify: tx_kick.try_clone().unwrap(),
        },
    ]
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn base_features() -> u64 {
    bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MAC)
}

#[test]
fn config_space_and_features() {
    let (a, _b) = UnixDatagram::pair().unwrap();
    let mac: MacAddr = "52:54:00:ab:cd:ef".parse().unwrap();
    let net = Net::new(a, mac, Some(9000)).unwrap();
    assert_eq!(net.device_type(), 1);
    assert_eq!(net.queue_max_sizes(), &[256, 256]);
    let f = net.device_features();
    for b in [
        VIRTIO_F_VERSION_1,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MTU,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_MRG_RXBUF,
    ] {
        assert_ne!(f & bit(b), 0, "feature bit {b}");
    }
    let mut cfg = [0u8; 12];
    net.read_config(0, &mut cfg);
    assert_eq!(&cfg[..6], &mac.bytes());
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), 1, "link up");
    assert_eq!(u16::from_le_bytes([cfg[10], cfg[11]]), 9000);
    let mut past = [0xffu8; 4];
    net.read_config(10, &mut past);
    assert_eq!(past, [0x28, 0x23, 0, 0]);

    let (a, _b) = UnixDatagram::pair().unwrap();
    let net = Net::new(a, mac, None).unwrap();
    assert_eq!(net.device_features() & bit(VIRTIO_NET_F_MTU), 0);
    let (a, _b) = UnixDatagram::pair().unwrap();
    assert!(matches!(
        Net::new(a, mac, Some(10)),
        Err(NetError::InvalidMtu(10))
    ));
}

#[test]
fn works_behind_the_mmio_transport_and_a_dyn_event_loop() {
    use virtkit_virtio::mmio::MmioTransport;
    type DynSub = Arc<Mutex<dyn MutEventSubscriber + Send>>;
    fn send<T: Send>() {}
    send::<Net<Tap>>();

    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
    let (dev, peer) = UnixDatagram::pair().unwrap();
    dev.set_nonblocking(true).unwrap();
    let net = Arc::new(Mutex::new(Net::new(dev, MacAddr::default(), None).unwrap()));
    let mut em = EventManager::<DynSub>::new().unwrap();
    em.add_subscriber(net.clone());
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut t = MmioTransport::new(net.clone(), mem.clone(), irq.try_clone().unwrap()).unwrap();
    let w = |t: &mut MmioTransport, off: u64, v: u32| t.write(off, &v.to_le_bytes());
    w(&mut t, 0x70, 1);
    w(&mut t, 0x70, 3);
    let acked = base_features() | bit(VIRTIO_RING_F_EVENT_IDX);
    w(&mut t, 0x24, 0);
    w(&mut t, 0x20, acked as u32);
    w(&mut t, 0x24, 1);
    w(&mut t, 0x20, (acked >> 32) as u32);
    w(&mut t, 0x70, 0xb);
    let rxq = DriverQueue::new(&mem, RXQ, 256);
    let mut txq = DriverQueue::new(&mem, TXQ, 256);
    for (i, q) in [&rxq, &txq].into_iter().enumerate() {
        let qq = q.queue();
        w(&mut t, 0x30, i as u32);
        w(&mut t, 0x38, 256);
        w(&mut t, 0x80, qq.desc_table() as u32);
        w(&mut t, 0x84, 0);
        w(&mut t, 0x90, qq.avail_ring() as u32);
        w(&mut t, 0x94, 0);
        w(&mut t, 0xa0, qq.used_ring() as u32);
        w(&mut t, 0xa4, 0);
        w(&mut t, 0x44, 1);
    }
    w(&mut t, 0x70, 0xf);
    assert!(t.is_activated());
    assert_eq!(net.lock().unwrap().acked_features(), acked);
    while em.run_with_timeout(0).unwrap() > 0 {}

    let f = [vec![0u8; 12], frame(80, 1)].concat();
    mem.write_slice(&f, GuestAddress(BUF)).unwrap();
    txq.add_chain(&[(GuestAddress(BUF), f.len() as u32, false)])
        .unwrap();
    w(&mut t, 0x50, 1); // QueueNotify without an ioeventfd
    while em.run_with_timeout(0).unwrap() > 0 {}
    let mut got = [0u8; 256];
    assert_eq!(peer.recv(&mut got).unwrap(), f.len());
    assert_eq!(txq.take_used().len(), 1);
    assert_eq!(irq.read().unwrap(), 1);
    assert_eq!(t.interrupt_status() & 1, 1);

    // Driver reset: the device stops and forgets its queues.
    w(&mut t, 0x70, 0);
    while em.run_with_timeout(0).unwrap() > 0 {}
    assert!(!net.lock().unwrap().is_active());
}

#[test]
fn activate_needs_two_queues() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let (a, _b) = UnixDatagram::pair().unwrap();
    let mut net = Net::new(a, MacAddr::default(), None).unwrap();
    let q = DriverQueue::new(&mem, GuestAddress(0), 16);
    let e = net
        .activate(
            mem.clone(),
            Arc::new(CountIrq::default()),
            vec![ActiveQueue {
                queue: q.queue(),
                notify: EventFd::new(0).unwrap(),
            }],
        )
        .unwrap_err();
    assert!(matches!(
        e,
        ActivateError::QueueCount {
            expected: 2,
            got: 1
        }
    ));
}

#[test]
fn indirect_chains_work_both_ways() {
    let mut r = rig(base_features() | bit(VIRTIO_RING_F_INDIRECT_DESC), None);
    let f = [vec![0u8; 12], frame(300, 4)].concat();
    r.mem.write_slice(&f, GuestAddress(BUF)).unwrap();
    r.txq
        .add_indirect_chain(
            GuestAddress(BUF + 0x10000),
            &[
                (GuestAddress(BUF), 12, false),
                (GuestAddress(BUF + 12), 300, false),
            ],
        )
        .unwrap();
    r.tx_kick.write(1).unwrap();
    r.run();
    let mut got = vec![0u8; 1024];
    let n = r.peer.recv(&mut got).unwrap();
    assert_eq!(&got[..n], &f[..]);

    r.rxq
        .add_indirect_chain(
            GuestAddress(BUF + 0x20000),
            &[
                (GuestAddress(BUF + 0x30000), 100, true),
                (GuestAddress(BUF + 0x40000), 1000, true),
            ],
        )
        .unwrap();
    r.peer.send(&f).unwrap();
    r.rx_kick.write(1).unwrap();
    r.run();
    let used = r.rxq.take_used();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].1 as usize, f.len());
    let mut back = r.read(BUF + 0x30000, 100);
    back.extend(r.read(BUF + 0x40000, f.len() - 100));
    assert_eq!(&back[12..], &f[12..]);
}

#[test]
fn malformed_chains_are_returned_empty() {
    let mut r = rig(base_features(), None);
    let ok = [vec![0u8; 12], frame(64, 0)].concat();
    r.mem.write_slice(&ok, GuestAddress(BUF)).unwrap();
    let cases: Vec<Vec<crate::testing::Buf>> = vec![
        // writable descriptor in a TX chain
        vec![(GuestAddress(BUF), 76, true)],
        // outside guest memory
        vec![(GuestAddress(MEM_END - 10), 76, false)],
        // shorter than the net header
        vec![(GuestAddress(BUF), 11, false)],
        // huge length
        vec![(GuestAddress(BUF), u32::MAX, false)],
        vec![
            (GuestAddress(BUF), 12, false),
            (GuestAddress(BUF), 70_000, false),
        ],
        // a good one after the bad ones still goes out
        vec![(GuestAddress(BUF), 76, false)],
    ];
    for c in &cases {
        r.txq.add_chain(c).unwrap();
    }
    r.tx_kick.write(1).unwrap();
    r.run();
    let used = r.txq.take_used();
    assert_eq!(used.len(), cases.len());
    assert!(used.iter().all(|&(_, len)| len == 0));
    let s = r.stats();
    assert_eq!((s.tx_malformed, s.tx_frames), (5, 1));
    let mut buf = [0u8; 256];
    assert_eq!(r.peer.recv(&mut buf).unwrap(), 76);

    // RX: readable, out of memory, too short; then a good chain.
    r.rxq
        .add_chain(&[(GuestAddress(BUF), 2048, false)])
        .unwrap();
    r.rxq
        .add_chain(&[(GuestAddress(MEM_END - 100), 2048, true)])
        .unwrap();
    r.rxq.add_chain(&[(GuestAddress(BUF), 4, true)]).unwrap();
    r.rxq
        .add_chain(&[(GuestAddress(BUF + 0x8000), 2048, true)])
        .unwrap();
    r.peer.send(&ok).unwrap();
    r.rx_kick.write(1).unwrap();
    r.run();
    let used = r.rxq.take_used();
    assert_eq!(used.len(), 4);
    assert_eq!(used[..3].iter().map(|u| u.1).collect::<Vec<_>>(), [0, 0, 0]);
    assert_eq!(used[3].1 as usize, ok.len());
    assert_eq!(r.stats().rx_malformed, 3);
}

#[test]
fn bogus_avail_index_does_not_hang() {
    for mrg in [false, true] {
        let mut f = base_features();
        if mrg {
            f |= bit(VIRTIO_NET_F_MRG_RXBUF);
        }
        let mut r = rig(f, None);
        r.rxq.set_avail_idx(1000);
        r.txq.set_avail_idx(1000);
        r.peer.send(&[0u8; 64]).unwrap();
        r.tx_kick.write(1).unwrap();
        r.rx_kick.write(1).unwrap();
        r.run();
        assert!(r.txq.take_used().is_empty());
        assert!(r.rxq.take_used().is_empty());
        assert!(r.net.lock().unwrap().rx_stalled());
        // Stalled, not spinning; both queues asked for a reset once.
        assert_eq!(r.em.run_with_timeout(20).unwrap(), 0);
        assert_eq!(r.irq.1.load(Ordering::SeqCst), 2);
        // More kicks do not bring the queues back before a reset.
        r.tx_kick.write(1).unwrap();
        r.rx_kick.write(1).unwrap();
        r.run();
        assert!(r.txq.take_used().is_empty());
        assert_eq!(r.irq.1.load(Ordering::SeqCst), 2);
    }
}

#[test]
fn reset_unregisters_and_reactivates() {
    let mut r = rig(base_features(), None);
    r.net.lock().unwrap().reset();
    r.run();
    assert!(!r.net.lock().unwrap().is_active());
    // After reset, kicks and backend data are ignored without spinning.
    r.peer.send(&[0u8; 60]).unwrap();
    r.tx_kick.write(1).unwrap();
    assert!(r.run() <= 1);
    assert_eq!(r.em.run_with_timeout(20).unwrap(), 0);
    // Activate again with fresh rings.
    let rxq = DriverQueue::new(&r.mem, GuestAddress(0x2_0000), 64);
    let mut rxq = rxq;
    rxq.add_chain(&[(GuestAddress(BUF), 2048, true)]).unwrap();
    let txq = DriverQueue::new(&r.mem, GuestAddress(0x3_0000), 64);
    {
        let mut n = r.net.lock().unwrap();
        n.set_acked_features(base_features());
        n.activate(
            r.mem.clone(),
            r.irq.clone(),
            active_queues(rxq.queue(), txq.queue(), &r.rx_kick, &r.tx_kick),
        )
        .unwrap();
    }
    r.run();
    let used = rxq.take_used();
    assert_eq!(used, vec![(used[0].0, 60)]);
}
