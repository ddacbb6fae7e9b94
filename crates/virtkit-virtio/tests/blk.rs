//! Host-side virtio-blk tests with virtio-queue's mock queues (no KVM).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use proptest::prelude::*;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtkit_block::mem::MemBackend;
use virtkit_virtio::blk::{features, request, status, Block, BlockOptions};
use virtkit_virtio::mmio::VIRTIO_F_VERSION_1;
use virtkit_virtio::{DeviceQueue, VirtioDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x11_0000;
const STATUS: u64 = 0x20_0000;
const MEM_SIZE: usize = 4 << 20;
const DISK: usize = 64 * 1024;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn disk() -> Arc<MemBackend> {
    let data: Vec<u8> = (0..DISK).map(|i| (i % 251) as u8).collect();
    Arc::new(MemBackend::from_vec(data, false))
}

fn device(backend: Arc<MemBackend>, read_only: bool) -> Block {
    let mut b = Block::new(
        backend,
        BlockOptions {
            read_only,
            serial: "virtkit-disk-0".into(),
        },
    )
    .unwrap();
    b.set_acked_features(b.device_features());
    b
}

fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

fn header(m: &GuestMemoryMmap, t: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&t.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    m.write_slice(&h, GuestAddress(HDR)).unwrap();
}

/// Run one chain through the device; returns (status byte, used len).
fn run(blk: &mut Block, m: &GuestMemoryMmap, descs: &[RawDescriptor]) -> (u8, u32) {
    m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let vq = MockSplitQueue::new(m, 16);
    vq.build_desc_chain(descs).unwrap();
    let mut q = DeviceQueue::detached(vq.create_queue().unwrap());
    blk.process_queue(m, &mut q);
    let used = vq.used().ring().ref_at(0).unwrap().load();
    assert_eq!(vq.used().idx().load(), 1, "exactly one used entry");
    (m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), used.len())
}

fn req(data_len: u32, data_flags: u16) -> Vec<RawDescriptor> {
    vec![
        desc(HDR, 16, F_NEXT),
        desc(DATA, data_len, F_NEXT | data_flags),
        desc(STATUS, 1, F_WRITE),
    ]
}

#[test]
fn read_returns_disk_data() {
    let m = mem();
    let d = disk();
    let mut blk = device(d.clone(), false);
    header(&m, request::IN, 2);
    let (st, used) = run(&mut blk, &m, &req(1024, F_WRITE));
    assert_eq!(st, status::OK);
    assert_eq!(used, 1025);
    let mut got = vec![0u8; 1024];
    m.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, d.contents()[1024..2048]);
}

#[test]
fn write_reaches_backend_and_read_only_refuses() {
    let m = mem();
    let d = disk();
    let mut blk = device(d.clone(), false);
    m.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    header(&m, request::OUT, 3);
    let (st, used) = run(&mut blk, &m, &req(512, 0));
    assert_eq!((st, used), (status::OK, 1));
    assert_eq!(&d.contents()[1536..2048], &[0xab; 512][..]);

    let d2 = disk();
    let before = d2.contents();
    let mut ro = device(d2.clone(), true);
    assert_ne!(ro.device_features() & features::RO, 0);
    assert_eq!(ro.device_features() & features::DISCARD, 0);
    let (st, _) = run(&mut ro, &m, &req(512, 0));
    assert_eq!(st, status::IOERR);
    assert_eq!(d2.contents(), before);
}

#[test]
fn flush_get_id_and_unknown_type() {
    let m = mem();
    let d = disk();
    let mut blk = device(d.clone(), false);
    header(&m, request::FLUSH, 0);
    let (st, _) = run(
        &mut blk,
        &m,
        &[desc(HDR, 16, F_NEXT), desc(STATUS, 1, F_WRITE)],
    );
    assert_eq!(st, status::OK);
    assert_eq!(d.flush_count(), 1);

    header(&m, request::GET_ID, 0);
    let (st, used) = run(&mut blk, &m, &req(20, F_WRITE));
    assert_eq!((st, used), (status::OK, 21));
    let mut id = [0u8; 20];
    m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..14], b"virtkit-disk-0");
    assert_eq!(&id[14..], &[0; 6]);

    header(&m, 99, 0);
    let (st, used) = run(&mut blk, &m, &req(512, F_WRITE));
    assert_eq!((st, used), (status::UNSUPP, 1));
}

fn segment(m: &GuestMemoryMmap, sector: u64, num: u32, flags: u32) {
    let mut s = [0u8; 16];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&num.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    m.write_slice(&s, GuestAddress(DATA)).unwrap();
}

#[test]
fn discard_and_write_zeroes() {
    let m = mem();
    let d = disk();
    let mut blk = device(d.clone(), false);
    for (t, flags) in [(request::DISCARD, 0), (request::WRITE_ZEROES, 1)] {
        header(&m, t, 0);
        segment(&m, 4, 2, flags);
        let (st, _) = run(&mut blk, &m, &req(16, 0));
        assert_eq!(st, status::OK, "type {t}");
        assert!(d.contents()[2048..3072].iter().all(|&b| b == 0));
    }
    // Discard with the unmap flag, and unknown flag bits, are unsupported.
    header(&m, request::DISCARD, 0);
    segment(&m, 4, 2, 1);
    assert_eq!(run(&mut blk, &m, &req(16, 0)).0, status::UNSUPP);
    header(&m, request::WRITE_ZEROES, 0);
    segment(&m, 4, 2, 2);
    assert_eq!(run(&mut blk, &m, &req(16, 0)).0, status::UNSUPP);
    // Past the end of the disk.
    header(&m, request::WRITE_ZEROES, 0);
    segment(&m, (DISK / 512) as u64 - 1, 2, 0);
    assert_eq!(run(&mut blk, &m, &req(16, 0)).0, status::IOERR);
    // Not acked: unsupported.
    let mut blk2 = Block::new(d, BlockOptions::default()).unwrap();
    blk2.set_acked_features(VIRTIO_F_VERSION_1);
    header(&m, request::DISCARD, 0);
    segment(&m, 4, 2, 0);
    assert_eq!(run(&mut blk2, &m, &req(16, 0)).0, status::UNSUPP);
}

#[test]
fn malformed_requests_get_ioerr() {
    let m = mem();
    let d = disk();
    let before = d.contents();
    let mut blk = device(d.clone(), false);
    // Past the end of the disk.
    header(&m, request::IN, (DISK / 512) as u64);
    assert_eq!(run(&mut blk, &m, &req(512, F_WRITE)).0, status::IOERR);
    header(&m, request::OUT, u64::MAX / 256);
    assert_eq!(run(&mut blk, &m, &req(512, 0)).0, status::IOERR);
    // Length not a multiple of 512.
    header(&m, request::IN, 0);
    assert_eq!(run(&mut blk, &m, &req(100, F_WRITE)).0, status::IOERR);
    // Short header.
    let (st, _) = run(
        &mut blk,
        &m,
        &[desc(HDR, 8, F_NEXT), desc(STATUS, 1, F_WRITE)],
    );
    assert_eq!(st, status::IOERR);
    // Data buffer outside guest memory.
    header(&m, request::IN, 0);
    let (st, used) = run(
        &mut blk,
        &m,
        &[
            desc(HDR, 16, F_NEXT),
            desc(MEM_SIZE as u64 - 256, 512, F_NEXT | F_WRITE),
            desc(STATUS, 1, F_WRITE),
        ],
    );
    assert_eq!((st, used), (status::IOERR, 1));
    // Readable descriptor after a writable one.
    header(&m, request::OUT, 0);
    let (st, _) = run(
        &mut blk,
        &m,
        &[
            desc(HDR, 16, F_NEXT),
            desc(DATA, 512, F_NEXT | F_WRITE),
            desc(DATA + 4096, 512, F_NEXT),
            desc(STATUS, 1, F_WRITE),
        ],
    );
    assert_eq!(st, status::IOERR);
    // Read with a device-readable data buffer (wrong direction).
    header(&m, request::IN, 0);
    assert_eq!(run(&mut blk, &m, &req(512, 0)).0, status::IOERR);
    // Status descriptor not writable: nothing can be reported.
    header(&m, request::FLUSH, 0);
    let (st, used) = run(&mut blk, &m, &[desc(HDR, 16, F_NEXT), desc(STATUS, 1, 0)]);
    assert_eq!((st, used), (0xff, 0));
    assert_eq!(
        d.contents(),
        before,
        "no malformed request changed the disk"
    );
}

#[test]
fn many_requests_in_one_notification() {
    let m = mem();
    let d = disk();
    let mut blk = device(d.clone(), false);
    let vq = MockSplitQueue::new(&m, 64);
    // 16 reads of one sector each, each with its own header and status.
    let mut descs = Vec::new();
    for i in 0..16u64 {
        let h = HDR + i * 16;
        let mut hdr = [0u8; 16];
        hdr[8..16].copy_from_slice(&i.to_le_bytes());
        m.write_slice(&hdr, GuestAddress(h)).unwrap();
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            h,
            16,
            F_NEXT,
            (i * 3 + 1) as u16,
        )));
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            DATA + i * 512,
            512,
            F_NEXT | F_WRITE,
            (i * 3 + 2) as u16,
        )));
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            STATUS + i,
            1,
            F_WRITE,
            0,
        )));
    }
    vq.add_desc_chains(&descs, 0).unwrap();
    let mut q = DeviceQueue::detached(vq.create_queue().unwrap());
    assert!(
        blk.process_queue(&m, &mut q).notify,
        "driver must be notified"
    );
    assert_eq!(vq.used().idx().load(), 16);
    let mut got = vec![0u8; 16 * 512];
    m.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, d.contents()[..16 * 512]);
    for i in 0..16 {
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(STATUS + i)).unwrap(),
            status::OK
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Arbitrary descriptor tables and headers: never a panic, never a
    /// disk change from a request that is not a well-formed OUT, and the
    /// status byte (when written) is a valid status.
    #[test]
    fn arbitrary_chains_are_handled(
        table in proptest::collection::vec(
            (prop_oneof![Just(HDR), Just(DATA), Just(STATUS), any::<u64>(),
                         (0u64..MEM_SIZE as u64 + 4096)],
             prop_oneof![Just(1u32), Just(16), Just(512), Just(4096), any::<u32>()],
             0u16..8, 0u16..20),
            1..20),
        req_type in prop_oneof![Just(0u32), Just(1), Just(4), Just(8), Just(11), Just(13), any::<u32>()],
        sector in prop_oneof![0u64..200, any::<u64>()],
        read_only in any::<bool>(),
    ) {
        let m = mem();
        let d = disk();
        let mut blk = device(d.clone(), read_only);
        header(&m, req_type, sector);
        m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let vq = MockSplitQueue::new(&m, 32);
        let descs: Vec<RawDescriptor> = table.iter()
            .map(|&(a, l, f, n)| RawDescriptor::from(SplitDescriptor::new(a, l, f, n)))
            .collect();
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut q = DeviceQueue::detached(vq.create_queue().unwrap());
        blk.process_queue(&m, &mut q);
        let st = m.read_obj::<u8>(GuestAddress(STATUS)).unwrap();
        prop_assert!(st == 0xff || st <= 2);
        if read_only || req_type != request::OUT && req_type != request::WRITE_ZEROES
            && req_type != request::DISCARD {
            prop_assert_eq!(d.contents(), disk().contents());
        }
    }
}
