//! A hostile qcow2 header (issue #19) is an error with exit status 1 that
//! names the bad field, never a panic (exit status 101). qemu-img, when it
//! is installed, answers the same file with "Invalid backing file offset".
#![allow(clippy::unwrap_used)]

use std::process::Command;

/// A 257-byte v2 header whose backing_file_offset is u64::MAX and
/// backing_file_size 256 (64 KiB clusters, 1 MiB virtual size).
fn backing_offset_overflow() -> Vec<u8> {
    let mut b = vec![0u8; 257];
    b[0..4].copy_from_slice(b"QFI\xfb");
    b[4..8].copy_from_slice(&2u32.to_be_bytes());
    b[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
    b[16..20].copy_from_slice(&256u32.to_be_bytes());
    b[20..24].copy_from_slice(&16u32.to_be_bytes());
    b[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes());
    b
}

#[test]
fn backing_offset_overflow_is_exit_1_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("backing-offset-overflow");
    std::fs::write(&img, backing_offset_overflow()).unwrap();
    let p = img.to_str().unwrap();
    for args in [
        vec!["info", p],
        vec!["info", "--output=json", p],
        vec!["info", "-f", "qcow2", p],
        vec!["check", p],
        vec!["map", p],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_virtkit-img"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            err.contains("backing file offset 0xffffffffffffffff is invalid"),
            "{args:?}: {err}"
        );
        assert!(o.stdout.is_empty(), "{args:?}: {o:?}");
    }
    // The oracle, where installed (the other CLI tests require it).
    match Command::new("qemu-img").args(["info", p]).output() {
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "qemu-img: {err}");
            assert!(err.contains("Invalid backing file offset"), "{err}");
        }
        Err(e) => eprintln!("qemu-img not run ({e}); skipping the comparison"),
    }
}
