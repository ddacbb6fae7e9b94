//! Helpers shared by the integration tests: running qemu-img / qemu-io as
//! the oracle (package qemu-utils; a missing tool fails with a clear message).
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

pub fn tool(name: &str, args: &[&str]) -> Output {
    match Command::new(name).args(args).output() {
        Ok(o) => o,
        Err(e) => panic!(
            "cannot run {name} ({e}): these oracle tests need qemu-img and qemu-io \
             (apt-get install qemu-utils)"
        ),
    }
}

/// Run a tool and require exit status 0.
pub fn run(name: &str, args: &[&str]) -> String {
    let o = tool(name, args);
    assert!(
        o.status.success(),
        "{name} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn qemu_img(args: &[&str]) -> String {
    run("qemu-img", args)
}

/// qemu-io on an image (format given explicitly), each string one -c command.
pub fn qemu_io(img: &Path, fmt: &str, cmds: &[&str]) {
    let mut args = vec!["-f", fmt];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    let p = img.to_str().unwrap();
    args.push(p);
    let o = tool("qemu-io", &args);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && !out.contains("failed") && !out.contains("Pattern verification"),
        "qemu-io {args:?}: {out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `qemu-img check --output=json`: (exit status, parsed JSON).
pub fn qemu_check(img: &Path) -> (i32, serde_json::Value) {
    let o = tool(
        "qemu-img",
        &[
            "check",
            "--output=json",
            "-f",
            "qcow2",
            img.to_str().unwrap(),
        ],
    );
    let v = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o.status.code().unwrap_or(-1), v)
}

/// The whole guest content according to qemu-img (convert to raw).
pub fn qemu_raw(img: &Path, fmt: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.raw");
    qemu_img(&[
        "convert",
        "-f",
        fmt,
        "-O",
        "raw",
        img.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    std::fs::read(out).unwrap()
}

/// Read a whole backend.
pub fn read_all(d: &dyn virtkit_block::BlockBackend) -> Vec<u8> {
    let mut v = vec![0u8; d.size() as usize];
    // Odd-sized chunks exercise requests that cross cluster boundaries.
    let step = 3 * 1024 * 1024 + 512;
    let mut pos = 0;
    while pos < v.len() {
        let n = step.min(v.len() - pos);
        d.read_at(&mut v[pos..pos + n], pos as u64).unwrap();
        pos += n;
    }
    v
}

/// Compare two buffers, reporting the first difference.
pub fn assert_same(ours: &[u8], theirs: &[u8], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: length differs");
    if let Some(i) = ours.iter().zip(theirs).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i:#x}: ours {:#04x}, qemu {:#04x}",
            ours[i], theirs[i]
        );
    }
}

/// Overwrite `bytes` at `off` in the file `img`.
pub fn patch(img: &Path, off: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

/// The big-endian 64-bit value at `off` in the file `img`.
pub fn header_u64(img: &Path, off: usize) -> u64 {
    let b = std::fs::read(img).unwrap();
    u64::from_be_bytes(b[off..off + 8].try_into().unwrap())
}
