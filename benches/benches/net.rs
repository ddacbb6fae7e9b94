//! virtio-net device model throughput: packets per second through
//! `virtkit_net::net::Net` on the TX path (guest ring → backend) and the RX
//! path (backend → guest ring), with 64-byte and 1500-byte frames.
//!
//! Two backends:
//! - `model`: an in-memory backend (RX copies a prepared frame into the
//!   guest buffers like the tap does; TX gathers the frame into a scratch
//!   buffer). This isolates the device model: descriptor walking, guest
//!   address translation, used-ring updates, notification checks.
//! - `tap`: a real tap in a private network namespace (root only): TX
//!   frames go into the host stack and are dropped there; RX frames are
//!   injected by an AF_PACKET socket on the host side in the same thread,
//!   so its send cost is included.
//!
//! Run: `cargo bench -p virtkit-benches --bench net`.

#![allow(clippy::unwrap_used)]

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use virtkit_net::features::*;
use virtkit_net::net::{GuestIoVec, Net, NetBackend};
use virtkit_net::tap::{Tap, TapOptions};
use virtkit_net::testing::DriverQueue;
use virtkit_net::MacAddr;
use virtkit_virtio::{ActiveQueue, Interrupt, InterruptReason, VirtioDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Frames per measured batch (half the queue).
const BATCH: u64 = 128;
const BUF: u64 = 0x10_0000;
const RX_BUF_LEN: u32 = 2048;

#[derive(Debug)]
struct NoIrq;
impl Interrupt for NoIrq {
    fn signal(&self, _: InterruptReason) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Debug)]
struct MemBackend {
    evt: EventFd,
    rx_frame: Vec<u8>,
    /// Frames left to deliver before reads would block.
    rx_budget: Cell<usize>,
    scratch: RefCell<Vec<u8>>,
}

impl AsRawFd for MemBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}

impl NetBackend for MemBackend {
    fn read_frame(&self, bufs: &[GuestIoVec<'_>]) -> io::Result<usize> {
        if self.rx_budget.get() == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.rx_budget.set(self.rx_budget.get() - 1);
        let mut done = 0;
        for b in bufs {
            if done == self.rx_frame.len() {
                break;
            }
            let n = b.len().min(self.rx_frame.len() - done);
            b.as_volatile_slice()
                .copy_from(&self.rx_frame[done..done + n]);
            done += n;
        }
        Ok(done)
    }

    fn write_frame(&self, bufs: &[GuestIoVec<'_>]) -> io::Result<usize> {
        let mut s = self.scratch.borrow_mut();
        s.clear();
        for b in bufs {
            let start = s.len();
            s.resize(start + b.len(), 0);
            b.as_volatile_slice().copy_to(&mut s[start..]);
        }
        Ok(s.len())
    }

    fn set_features(&self, _: u64) -> io::Result<()> {
        Ok(())
    }
}

struct Rig<B: NetBackend> {
    net: Net<B>,
    rxq: DriverQueue,
    txq: DriverQueue,
    frame_len: usize,
}

fn features() -> u64 {
    bit(VIRTIO_F_VERSION_1)
        | bit(VIRTIO_NET_F_MAC)
        | bit(VIRTIO_NET_F_CSUM)
        | bit(VIRTIO_NET_F_GUEST_CSUM)
        | bit(VIRTIO_NET_F_MRG_RXBUF)
        | bit(VIRTIO_RING_F_EVENT_IDX)
}

impl<B: NetBackend> Rig<B> {
    fn new(backend: B, frame_len: usize) -> Self {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x200_0000)]).unwrap();
        let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let mut net = Net::new(backend, mac, None).unwrap();
        let rxq = DriverQueue::new(&mem, GuestAddress(0), 256);
        let txq = DriverQueue::new(&mem, GuestAddress(0x1_0000), 256);
        net.set_acked_features(features());
        net.activate(
            mem.clone(),
            Arc::new(NoIrq),
            vec![
                ActiveQueue {
                    queue: rxq.queue(),
                    notify: EventFd::new(0).unwrap(),
                },
                ActiveQueue {
                    queue: txq.queue(),
                    notify: EventFd::new(0).unwrap(),
                },
            ],
        )
        .unwrap();
        // TX frames: a header and a broadcast frame of an unused ethertype,
        // one descriptor each (as Linux lays them out).
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(&mac.bytes());
        f.extend_from_slice(&0x88b5u16.to_be_bytes());
        f.resize(12 + frame_len, 0xa5);
        for i in 0..256u64 {
            mem.write_slice(&f, GuestAddress(BUF + i * 0x1_0000))
                .unwrap();
        }
        Rig {
            net,
            rxq,
            txq,
            frame_len,
        }
    }

    /// Queue BATCH TX chains, run the device, reclaim them.
    fn tx_batch(&mut self) -> usize {
        for i in 0..BATCH {
            self.txq
                .add_chain(&[(
                    GuestAddress(BUF + i * 0x1_0000),
                    12 + self.frame_len as u32,
                    false,
                )])
                .unwrap();
        }
        let sent = self.net.process_tx();
        let used = self.txq.take_used().len();
        assert_eq!(used as u64, BATCH);
        sent
    }

    /// Top the RX ring up with 2 KiB buffers.
    fn refill_rx(&mut self) {
        let mut i = 0u64;
        while self.rxq.in_flight() < 255 {
            let at = BUF + 0x100_0000 + (i % 256) * 0x1000;
            self.rxq
                .add_chain(&[(GuestAddress(at), RX_BUF_LEN, true)])
                .unwrap();
            i += 1;
        }
    }

    fn rx_batch(&mut self) -> usize {
        let got = self.net.process_rx();
        self.rxq.take_used();
        self.refill_rx();
        got
    }
}

fn rx_frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 1]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    f.extend_from_slice(&0x88b5u16.to_be_bytes());
    f.resize(12 + len, 0x5a);
    f
}

fn bench_model(c: &mut Criterion) {
    let mut g = c.benchmark_group("virtio-net/model");
    g.throughput(Throughput::Elements(BATCH));
    for len in [64usize, 1500] {
        let backend = || MemBackend {
            evt: EventFd::new(0).unwrap(),
            rx_frame: rx_frame(len),
            rx_budget: Cell::new(0),
            scratch: RefCell::new(Vec::with_capacity(70_000)),
        };
        let mut tx = Rig::new(backend(), len);
        g.bench_function(format!("tx/{len}B"), |b| {
            b.iter(|| assert_eq!(tx.tx_batch(), BATCH as usize))
        });
        // Each iteration makes BATCH frames readable and drains them.
        let mut rx = Rig::new(backend(), len);
        rx.refill_rx();
        g.bench_function(format!("rx/{len}B"), |b| {
            b.iter(|| {
                rx.net.backend().rx_budget.set(BATCH as usize);
                let mut n = 0;
                while n < BATCH as usize {
                    n += rx.rx_batch();
                }
                assert_eq!(n, BATCH as usize);
            })
        });
    }
    g.finish();
}

/// A packet socket on `ifname` for injecting frames into the tap.
fn packet_socket(ifname: &str) -> OwnedFd {
    // SAFETY: socket(2) has no memory arguments.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "{}", io::Error::last_os_error());
    // SAFETY: fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    // SAFETY: all-zero sockaddr_ll is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = index as i32;
    // SAFETY: sll is a valid sockaddr_ll of that size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(r, 0, "{}", io::Error::last_os_error());
    fd
}

fn bench_tap(c: &mut Criterion) {
    // SAFETY: geteuid has no arguments.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("virtio-net/tap benchmarks need root (a tap in a private netns): not run");
        return;
    }
    // SAFETY: no memory arguments; moves this (the benchmark) thread to a
    // new network namespace so the host's network is untouched.
    let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "unshare: {}", io::Error::last_os_error());
    let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
    let mut g = c.benchmark_group("virtio-net/tap");
    g.throughput(Throughput::Elements(BATCH));
    for len in [64usize, 1500] {
        let tap = Tap::open("vkbench%d", &TapOptions::default()).unwrap();
        let mut tx = Rig::new(tap, len);
        g.bench_function(format!("tx/{len}B"), |b| {
            b.iter(|| assert_eq!(tx.tx_batch(), BATCH as usize))
        });
        drop(tx);

        let tap = Tap::open("vkbench%d", &TapOptions::default()).unwrap();
        let sock = packet_socket(tap.name());
        let mut rx = Rig::new(tap, len);
        rx.refill_rx();
        let frame = rx_frame(len);
        let eth = &frame[12..];
        g.bench_function(format!("rx/{len}B"), |b| {
            b.iter(|| {
                for _ in 0..BATCH {
                    // SAFETY: eth is a valid buffer of that length.
                    let n =
                        unsafe { libc::send(sock.as_raw_fd(), eth.as_ptr().cast(), eth.len(), 0) };
                    assert_eq!(n as usize, eth.len(), "{}", io::Error::last_os_error());
                }
                let mut n = 0;
                while n < BATCH as usize {
                    n += rx.rx_batch();
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_model, bench_tap);
criterion_main!(benches);
