//! Fuzz qcow2 opening and reading: the input is the image file itself.
//! Any input must be refused with an error or read without panicking, and
//! without unbounded memory (libFuzzer's -rss_limit_mb catches that).
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run qcow2_open_read -- -max_len=262144 -rss_limit_mb=512`
//! (seed the corpus with small images, e.g. `qemu-img create -f qcow2 corpus/qcow2_open_read/a 1M`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtkit_block::BlockBackend;
use virtkit_qcow2::{check_image, BackingMode, OpenOptions, Qcow2, Repair};

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("virtkit-fuzz-read-{}.qcow2", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let opts = OpenOptions {
        read_only: true,
        backing: BackingMode::Ignore,
        l2_cache_bytes: 1 << 20,
        refcount_cache_bytes: 1 << 20,
        ..Default::default()
    };
    if let Ok(q) = Qcow2::open(&path, opts) {
        let size = q.size();
        let mut buf = vec![0u8; 65536];
        for off in [0, size / 3, size.saturating_sub(65536)] {
            let n = (size - off.min(size)).min(buf.len() as u64) as usize;
            let _ = q.read_at(&mut buf[..n], off);
        }
        if size <= 64 << 20 {
            let _ = q.map();
        }
        let _ = check_image(&q, Repair::None);
    }
    let _ = std::fs::remove_file(&path);
});
