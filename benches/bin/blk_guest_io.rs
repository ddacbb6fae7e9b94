//! Guest-side disk benchmark tool, carried into the test guest statically by
//! `blk-vs-qemu`. Uses O_DIRECT so the guest page cache is out of the way.
//!
//! ```text
//! blk-guest-io seq-write|seq-read DEV MIB
//! blk-guest-io rand-read DEV MIB COUNT
//! ```
//! Prints `BLK-RESULT test=<name> bytes=<n> ops=<n> us=<elapsed>`.

use std::ffi::CString;
use std::time::Instant;

const ALIGN: usize = 4096;

struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    fn new(len: usize, fill: u8) -> Self {
        let layout = std::alloc::Layout::from_size_align(len, ALIGN).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        assert!(!ptr.is_null(), "out of memory");
        // SAFETY: ptr points to len writable bytes just allocated.
        unsafe { std::ptr::write_bytes(ptr, fill, len) };
        AlignedBuf { ptr, layout }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

fn open(dev: &str, write: bool) -> i32 {
    let c = CString::new(dev).expect("device path");
    let flags = if write {
        libc::O_WRONLY
    } else {
        libc::O_RDONLY
    } | libc::O_DIRECT;
    // SAFETY: c is a valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    assert!(fd >= 0, "open {dev}: {}", std::io::Error::last_os_error());
    fd
}

fn io(fd: i32, buf: &AlignedBuf, len: usize, off: u64, write: bool) {
    // SAFETY: buf holds at least len bytes; the kernel reads or fills them.
    let n = unsafe {
        if write {
            libc::pwrite(fd, buf.ptr.cast(), len, off as i64)
        } else {
            libc::pread(fd, buf.ptr.cast(), len, off as i64)
        }
    };
    assert!(
        n == len as isize,
        "I/O at {off}: {n} ({})",
        std::io::Error::last_os_error()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: blk-guest-io seq-write|seq-read|rand-read DEV MIB [COUNT]");
        std::process::exit(2);
    }
    let (test, dev) = (args[1].as_str(), args[2].as_str());
    let mib: u64 = args[3].parse().expect("MIB");
    let bytes = mib << 20;
    let start;
    let ops;
    match test {
        "seq-write" | "seq-read" => {
            let write = test == "seq-write";
            let fd = open(dev, write);
            let chunk = 1 << 20;
            let buf = AlignedBuf::new(chunk, 0x5a);
            start = Instant::now();
            for i in 0..mib {
                io(fd, &buf, chunk, i << 20, write);
            }
            if write {
                // SAFETY: fd is open.
                unsafe { libc::fsync(fd) };
            }
            ops = mib;
        }
        "rand-read" => {
            let count: u64 = args.get(4).and_then(|c| c.parse().ok()).unwrap_or(10000);
            let fd = open(dev, false);
            let buf = AlignedBuf::new(ALIGN, 0);
            let blocks = bytes / ALIGN as u64;
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            start = Instant::now();
            for _ in 0..count {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                io(fd, &buf, ALIGN, (x % blocks) * ALIGN as u64, false);
            }
            ops = count;
        }
        other => {
            eprintln!("unknown test {other}");
            std::process::exit(2);
        }
    }
    let us = start.elapsed().as_micros();
    let moved = if test == "rand-read" {
        ops * ALIGN as u64
    } else {
        bytes
    };
    println!("BLK-RESULT test={test} bytes={moved} ops={ops} us={us}");
}
