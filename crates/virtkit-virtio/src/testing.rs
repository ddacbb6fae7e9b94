//! Test and fuzzing entry points (feature `test-utils`).
//!
//! The fuzz targets in `fuzz/` call these functions, and ordinary tests
//! replay every committed corpus input through them, so an input that once
//! crashed or hung stays covered on stable Rust.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use virtkit_block::mem::MemBackend;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::blk::{Block, BlockOptions};
use crate::device::{Interrupt, InterruptReason, VirtioDevice};
use crate::queue::{DeviceQueue, QueueFault};

/// Guest memory of the [`blk_queue`] harness.
pub const BLK_FUZZ_MEM: usize = 1 << 20;

/// Where [`blk_queue`] lays its input: the avail ring's address. (Not 0:
/// virtio-queue takes an avail ring at 0 for a queue that was never set up.)
pub const BLK_FUZZ_BASE: u64 = 0x1000;

/// virtio-blk over arbitrary guest memory: `data` is laid into guest memory
/// at [`BLK_FUZZ_BASE`], where the avail ring (+0x0, so the first bytes are
/// its flags and index), the descriptor table (+0x40) and the used ring
/// (+0x200) of a 16-entry queue live, so descriptors, headers, segments and
/// ring indices are all input-controlled. The first byte's low bit makes the
/// disk read-only. Returns what the device did; it must never panic or hang.
pub fn blk_queue(data: &[u8]) -> Option<crate::blk::QueueRun> {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), BLK_FUZZ_MEM)]).ok()?;
    let n = data.len().min(BLK_FUZZ_MEM - BLK_FUZZ_BASE as usize);
    mem.write_slice(&data[..n], GuestAddress(BLK_FUZZ_BASE))
        .ok()?;
    let read_only = data.first().is_some_and(|b| b & 1 == 1);
    let disk = Arc::new(MemBackend::new(64 * 1024));
    let mut blk = Block::new(
        disk,
        BlockOptions {
            read_only,
            serial: "fuzz".into(),
        },
    )
    .ok()?;
    blk.set_acked_features(blk.device_features());
    let mut q = Queue::new(16).ok()?;
    q.set_size(16);
    let base = BLK_FUZZ_BASE as u32;
    q.set_desc_table_address(Some(base + 0x40), Some(0));
    q.set_avail_ring_address(Some(base), Some(0));
    q.set_used_ring_address(Some(base + 0x200), Some(0));
    q.set_ready(true);
    let mut q = DeviceQueue::detached(q);
    Some(blk.process_queue(&mem, &mut q))
}

/// Guest memory of the [`device_queue`] harness: `[0, 0xc000)` and
/// `[0xd000, 0x10000)`, so a ring, table or buffer can also fall into the
/// hole between them or run off the end.
pub const QUEUE_FUZZ_RANGES: [(u64, usize); 2] = [(0, 0xc000), (0xd000, 0x3000)];

/// The largest queue [`device_queue`] sets up.
pub const QUEUE_FUZZ_MAX_SIZE: u16 = 256;

/// What [`device_queue`] saw: chains taken, returned and the fault, if any.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct QueueFuzzRun {
    /// Chains [`DeviceQueue::pop`] returned.
    pub popped: u64,
    /// Chains returned with [`DeviceQueue::add_used`].
    pub used: u64,
    /// Descriptors walked in the popped chains.
    pub descriptors: u64,
    /// Needs-reset interrupts raised.
    pub needs_reset: u64,
    /// The fault that stopped the queue.
    pub fault: Option<QueueFault>,
    /// A chain was returned that was never taken (the device loop's end is
    /// then not checked).
    pub contract_broken: bool,
}

#[derive(Debug, Default)]
struct CountingIrq(AtomicU64);

impl Interrupt for CountingIrq {
    fn signal(&self, reason: InterruptReason) -> std::io::Result<()> {
        if reason == InterruptReason::NeedsReset {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// A fuzz input read front to back; past its end every read is 0. The fuzz
/// harnesses of this crate and of the crates above it (virtkit-vmm's) decode
/// their inputs with it.
#[derive(Debug)]
pub struct FuzzInput<'a>(&'a [u8]);

impl<'a> FuzzInput<'a> {
    /// Reads `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self(data)
    }
    /// The next byte.
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    /// The next two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    /// The next four bytes, little-endian.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    /// The next `n` bytes, fewer at the end of the input.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
    /// The next `n` bytes, padded with zeros past the end of the input.
    pub fn bytes_padded(&mut self, n: usize) -> Vec<u8> {
        let mut v = self.bytes(n).to_vec();
        v.resize(n, 0);
        v
    }
    /// Whether the input is used up.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Where the ring addresses of [`device_queue`] go with their "top" flag:
/// the last 64 KiB of the address space, so offsets into them overflow.
const TOP: u64 = 0xffff_ffff_ffff_0000;

/// The shared queue handling ([`DeviceQueue`]: pop, rearm, add_used,
/// undo_pop, notifications) driven by a hostile driver over
/// [`QUEUE_FUZZ_RANGES`]. Layout of `data`:
///
/// - bytes 0-1: queue size: with bit 15 set, the low 15 bits as is (invalid
///   sizes are refused and leave 256), else `1 << (w % 9)`;
/// - byte 2: bit 0 EVENT_IDX, bit 1 not ready, bits 2-4 put the descriptor
///   table, avail ring or used ring at the top of the address space, bit 5
///   a detached queue (no interrupt);
/// - bytes 3-8: descriptor table, avail ring and used ring addresses (u16
///   each, aligned down as the transport requires);
/// - bytes 9-10: the start index (next avail and next used);
/// - then operations, one byte each and their arguments: pop, add_used
///   (of a chain taken, or of any head), undo_pop (right after a pop, as
///   devices do), rearm, notification calls, a raw memory write, publish a
///   head (entry plus avail index), write a descriptor, check pending, and
///   drain (the canonical device loop).
///
/// Checked on every call: heads below the queue size, chains of bounded
/// length, a pending count no larger than the queue, a faulted queue yields
/// nothing, and the device loop ends. Any violation panics.
pub fn device_queue(data: &[u8]) -> QueueFuzzRun {
    let mut input = FuzzInput::new(data);
    let mut run = QueueFuzzRun::default();
    let Ok(mem) =
        GuestMemoryMmap::<()>::from_ranges(&QUEUE_FUZZ_RANGES.map(|(a, l)| (GuestAddress(a), l)))
    else {
        return run;
    };
    let Ok(mut q) = Queue::new(QUEUE_FUZZ_MAX_SIZE) else {
        return run;
    };
    let w = input.u16();
    let size = if w & 0x8000 != 0 {
        w & 0x7fff
    } else {
        1 << (w % 9)
    };
    q.set_size(size);
    let flags = input.u8();
    let addr = |input: &mut FuzzInput<'_>, top: bool, align: u64| {
        let a = u64::from(input.u16()) & !(align - 1);
        if top {
            a | TOP
        } else {
            a
        }
    };
    let desc = addr(&mut input, flags & 4 != 0, 16);
    let avail = addr(&mut input, flags & 8 != 0, 2);
    let used = addr(&mut input, flags & 16 != 0, 4);
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (lo, hi) = split(desc);
    q.set_desc_table_address(lo, hi);
    let (lo, hi) = split(avail);
    q.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(used);
    q.set_used_ring_address(lo, hi);
    q.set_event_idx(flags & 1 != 0);
    q.set_ready(flags & 2 == 0);
    let start = input.u16();
    q.set_next_avail(start);
    q.set_next_used(start);
    let irq = Arc::new(CountingIrq::default());
    let mut dq = if flags & 32 != 0 {
        DeviceQueue::detached(q)
    } else {
        DeviceQueue::new(q, 0, irq.clone())
    };
    let size = dq.size();
    assert!(size > 0, "queue size 0");
    // Chains taken and not yet returned, in order.
    let mut held: Vec<u16> = Vec::new();
    let mut just_popped = false;
    while !input.is_empty() {
        let op = input.u8();
        let popped_before = just_popped;
        just_popped = false;
        match op % 10 {
            0 => {
                if let Some(head) = pop_checked(&mut dq, &mem, &mut run) {
                    if held.len() < 4096 {
                        held.push(head);
                    }
                    just_popped = true;
                }
            }
            1 => {
                // A chain taken, or any head at all: a device that returns a
                // chain it never took breaks the contract the loop check
                // below relies on (its used-ring writes may then publish
                // work when the rings overlap), so that check is off after.
                let head = held.pop().unwrap_or_else(|| {
                    run.contract_broken = true;
                    input.u16()
                });
                let len = input.u32();
                let r = dq.add_used(&mem, head, len);
                if dq.fault().is_some() {
                    assert!(r.is_err(), "add_used on a faulted queue succeeded");
                }
                if r.is_ok() {
                    run.used += 1;
                }
            }
            2 => {
                // Devices put a chain back only right after taking it.
                if popped_before {
                    held.pop();
                    dq.undo_pop();
                }
            }
            3 => {
                let more = dq.rearm(&mem);
                assert!(
                    !(more && dq.fault().is_some()),
                    "rearm asks for more work on a faulted queue"
                );
            }
            4 => {
                dq.disable_notification(&mem);
                let _ = dq.needs_notification(&mem);
            }
            5 => {
                let at = u64::from(input.u16());
                let n = usize::from(input.u8() % 64) + 1;
                let bytes = input.bytes(n).to_vec();
                let _ = mem.write_slice(&bytes, GuestAddress(at));
            }
            6 => {
                // The driver publishes a head: ring entry, then the index.
                let head = input.u16();
                let q = dq.queue();
                let (ring, sz) = (q.avail_ring(), q.size());
                if let Ok(idx) = mem.read_obj::<u16>(GuestAddress(ring.wrapping_add(2))) {
                    let slot = u64::from(idx % sz.max(1));
                    let _ = mem.write_obj(head, GuestAddress(ring.wrapping_add(4 + slot * 2)));
                    let _ = mem.write_obj(idx.wrapping_add(1), GuestAddress(ring.wrapping_add(2)));
                }
            }
            7 => {
                let index = u64::from(input.u16() % size.max(1));
                let (a, l, f, n) = (input.u16(), input.u32(), input.u8(), input.u16());
                let mut raw = [0u8; 16];
                raw[0..8].copy_from_slice(&u64::from(a).to_le_bytes());
                raw[8..12].copy_from_slice(&l.to_le_bytes());
                raw[12..14].copy_from_slice(&u16::from(f & 7).to_le_bytes());
                raw[14..16].copy_from_slice(&n.to_le_bytes());
                let at = dq.queue().desc_table().wrapping_add(index * 16);
                let _ = mem.write_slice(&raw, GuestAddress(at));
            }
            8 => {
                let p = dq.pending(&mem);
                assert!(p <= size, "{p} chains pending on a queue of {size}");
                if dq.fault().is_some() {
                    assert_eq!(p, 0, "chains pending on a faulted queue");
                }
            }
            _ => drain(&mut dq, &mem, &mut run),
        }
    }
    drain(&mut dq, &mem, &mut run);
    run.fault = dq.fault();
    run.needs_reset = irq.0.load(Ordering::Relaxed);
    if run.fault.is_some() {
        assert!(dq.pop(&mem).is_none(), "a faulted queue yields a chain");
        assert!(
            !dq.rearm(&mem),
            "rearm asks for more work on a faulted queue"
        );
        if flags & 32 == 0 {
            assert_eq!(
                run.needs_reset, 1,
                "a fault raises one needs-reset interrupt"
            );
        }
    } else {
        assert_eq!(run.needs_reset, 0, "needs-reset without a fault");
    }
    run
}

/// [`DeviceQueue::pop`] with its promises checked: a head inside the queue, a
/// chain that ends, nothing from a faulted queue.
fn pop_checked(dq: &mut DeviceQueue, mem: &GuestMemoryMmap, run: &mut QueueFuzzRun) -> Option<u16> {
    let faulted = dq.fault().is_some();
    let size = dq.size();
    let chain = dq.pop(mem)?;
    assert!(!faulted, "a faulted queue yields a chain");
    let head = chain.head_index();
    assert!(head < size, "head {head} on a queue of {size}");
    // A chain is at most the queue (ttl), plus one indirect table.
    let mut n = 0u64;
    for _ in chain {
        n += 1;
        assert!(
            n <= u64::from(size) + 65536,
            "a chain of more than {n} descriptors"
        );
    }
    run.popped += 1;
    run.descriptors += n;
    Some(head)
}

/// The loop every device runs: take and return chains until the queue is
/// empty, rearm, again while more arrived. It must end: guest memory does
/// not change meanwhile except through the device's own used-ring writes
/// (which, with overlapping rings, may rewrite the avail ring).
fn drain(dq: &mut DeviceQueue, mem: &GuestMemoryMmap, run: &mut QueueFuzzRun) {
    let limit = 8 * u64::from(dq.size()) + 64;
    let mut pops = 0u64;
    for _ in 0..256 {
        while let Some(head) = pop_checked(dq, mem, run) {
            pops += 1;
            if run.contract_broken && pops > limit {
                return;
            }
            assert!(
                pops <= limit,
                "the device loop took {pops} chains: it does not end"
            );
            if dq.add_used(mem, head, 0).is_ok() {
                run.used += 1;
            }
        }
        if !dq.rearm(mem) {
            return;
        }
    }
    assert!(
        run.contract_broken,
        "the device loop rearmed 256 times: it does not end"
    );
}
