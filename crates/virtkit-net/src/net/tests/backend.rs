//! A backend that is not a socket: frames copied in and out of guest memory
//! through [`GuestIoVec::as_volatile_slice`], as a benchmark's in-memory
//! backend or a userspace switch would, with no `unsafe`.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, RawFd};

use super::*;

/// Hands out queued frames and keeps the frames it is sent.
#[derive(Debug)]
struct MemBackend {
    evt: EventFd,
    inbound: RefCell<Vec<Vec<u8>>>,
    sent: RefCell<Vec<Vec<u8>>>,
}

impl AsRawFd for MemBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}

impl NetBackend for MemBackend {
    fn read_frame(&self, bufs: &[GuestIoVec<'_>]) -> io::Result<usize> {
        let mut inbound = self.inbound.borrow_mut();
        if inbound.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let frame = inbound.remove(0);
        let mut done = 0;
        for b in bufs {
            let n = b.len().min(frame.len() - done);
            b.as_volatile_slice().copy_from(&frame[done..done + n]);
            done += n;
        }
        Ok(done)
    }

    fn write_frame(&self, bufs: &[GuestIoVec<'_>]) -> io::Result<usize> {
        let mut frame = Vec::new();
        for b in bufs {
            let start = frame.len();
            frame.resize(start + b.len(), 0);
            b.as_volatile_slice().copy_to(&mut frame[start..]);
        }
        let n = frame.len();
        self.sent.borrow_mut().push(frame);
        Ok(n)
    }

    fn set_features(&self, _acked: u64) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn an_in_memory_backend_moves_frames_both_ways() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), 0x20_0000),
        (GuestAddress(0x20_0000), 0x20_0000),
    ])
    .unwrap();
    let backend = MemBackend {
        evt: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        inbound: RefCell::new(vec![[vec![0u8; 12], frame(900, 2)].concat()]),
        sent: RefCell::new(Vec::new()),
    };
    let mut net = Net::new(backend, MacAddr::default(), None).unwrap();
    let mut rxq = DriverQueue::new(&mem, RXQ, 256);
    let mut txq = DriverQueue::new(&mem, TXQ, 256);
    net.set_acked_features(base_features());
    let kick = EventFd::new(0).unwrap();
    let queues = active_queues(rxq.queue(), txq.queue(), &kick, &kick);
    net.activate(mem.clone(), Arc::new(CountIrq::default()), queues)
        .unwrap();

    // TX: a frame split across the region boundary arrives whole.
    let f = [vec![0u8; 12], frame(500, 1)].concat();
    let at = 0x20_0000 - 100;
    mem.write_slice(&f, GuestAddress(at)).unwrap();
    txq.add_chain(&[(GuestAddress(at), f.len() as u32, false)])
        .unwrap();
    assert_eq!(net.process_tx(), 1);
    assert_eq!(net.backend().sent.borrow().as_slice(), [f]);
    assert_eq!(txq.take_used().len(), 1);

    // RX: the queued frame lands in a two-descriptor chain.
    rxq.add_chain(&[
        (GuestAddress(BUF), 100, true),
        (GuestAddress(BUF + 0x1000), 2000, true),
    ])
    .unwrap();
    assert_eq!(net.process_rx(), 1);
    let used = rxq.take_used();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].1, 912);
    let mut got = vec![0u8; 100];
    mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    let mut rest = vec![0u8; 812];
    mem.read_slice(&mut rest, GuestAddress(BUF + 0x1000))
        .unwrap();
    got.extend(rest);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    assert_eq!(&got[12..], &frame(900, 2)[..]);
}
