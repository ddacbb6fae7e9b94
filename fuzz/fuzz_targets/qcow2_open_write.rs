//! Fuzz sequences of writes, discards, write-zeroes, flushes, reopens and
//! raw damage to the image file. While the file is undamaged, the image
//! must match an in-memory model and pass our check; after damage, any
//! operation may fail but none may panic.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run qcow2_open_write -- -max_len=4096`
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtkit_block::BlockBackend;
use virtkit_qcow2::{check_image, create, Compat, CreateOptions, OpenOptions, Qcow2, Repair};

const SIZE: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let cs = 512u64 << (data[0] % 6); // 512 B .. 16 KiB keeps runs fast
    let compat = if data[1] & 0x80 != 0 { Compat::V2 } else { Compat::V3 };
    let rb = if compat == Compat::V2 { 16 } else { 1u32 << (data[1] % 7) };
    let path = std::env::temp_dir().join(format!("virtkit-fuzz-write-{}.qcow2", std::process::id()));
    let opts = CreateOptions { size: SIZE, cluster_size: cs, refcount_bits: rb, compat, ..Default::default() };
    if create(&path, &opts).is_err() {
        return;
    }
    let oo = || OpenOptions { l2_cache_bytes: 0, refcount_cache_bytes: 0, ..Default::default() };
    let mut model = vec![0u8; SIZE as usize];
    let mut damaged = false;
    let mut q = match Qcow2::open(&path, oo()) {
        Ok(q) => Some(q),
        Err(e) => panic!("fresh image does not open: {e}"),
    };
    for op in data[2..].chunks_exact(6) {
        let off = (u64::from(u16::from_le_bytes([op[1], op[2]])) * 512) % SIZE;
        let len = ((u64::from(op[3]) + 1) * 512).min(SIZE - off);
        match op[0] % 7 {
            0 | 1 | 2 => {
                let buf = vec![op[4] | 1; len as usize];
                if let Some(q) = &q {
                    let r = q.write_at(&buf, off);
                    if !damaged {
                        r.expect("write");
                        model[off as usize..(off + len) as usize].copy_from_slice(&buf);
                    }
                }
            }
            3 => {
                if let Some(q) = &q {
                    let r = q.write_zeroes(off, len);
                    if !damaged {
                        r.expect("write_zeroes");
                        model[off as usize..(off + len) as usize].fill(0);
                    }
                }
            }
            4 => {
                if let Some(q) = &q {
                    let r = q.discard(off, len);
                    if !damaged {
                        r.expect("discard");
                        let first = off.div_ceil(cs) * cs;
                        let end = if off + len == SIZE { SIZE } else { (off + len) / cs * cs };
                        if first < end {
                            model[first as usize..end as usize].fill(0);
                        }
                    }
                }
            }
            5 => {
                if let Some(old) = q.take() {
                    let r = old.close();
                    if !damaged {
                        r.expect("close");
                    }
                }
                q = Qcow2::open(&path, oo()).ok();
                if !damaged {
                    assert!(q.is_some(), "reopen failed");
                }
            }
            _ => {
                // Damage a metadata byte (only where metadata lives: the
                // first few clusters), then carry on with errors allowed.
                use std::os::unix::fs::FileExt;
                if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&path) {
                    let pos = u64::from(u16::from_le_bytes([op[1], op[2]])) % (cs * 6);
                    let _ = f.write_all_at(&[op[5]], pos);
                    damaged = true;
                }
            }
        }
    }
    if let Some(q) = q {
        let mut all = vec![0u8; SIZE as usize];
        let r = q.read_at(&mut all, 0);
        if !damaged {
            r.expect("read");
            assert!(all == model, "content differs from the model");
            q.flush().expect("flush");
            let rep = check_image(&q, Repair::None).expect("check");
            assert_eq!((rep.corruptions, rep.leaks), (0, 0), "{:?}", rep.messages);
        }
    }
    let _ = std::fs::remove_file(&path);
});
