//! Raw image files: [`HostFile`], a positioned-I/O file wrapper that image
//! formats build on, and [`RawBackend`], a [`BlockBackend`] over a plain file.
//!
//! With O_DIRECT, requests whose offset, length or buffer address are not
//! aligned go through an aligned bounce buffer, so callers never need to care.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use vm_memory::VolatileSlice;

use crate::{check_range, BlockBackend, BlockError};

/// Alignment used for O_DIRECT bounce buffers (covers 512 B and 4 KiB sectors).
const DIRECT_ALIGN: usize = 4096;

/// Errors from opening raw files.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// The file could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The path given.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another I/O error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A file accessed only with positioned reads and writes.
#[derive(Debug)]
pub struct HostFile {
    file: File,
    direct: bool,
}

/// Allocate a zeroed buffer of `len` bytes whose start is aligned to
/// [`DIRECT_ALIGN`]; returns the backing vector and the start index.
fn aligned_buf(len: usize) -> (Vec<u8>, usize) {
    let v = vec![0u8; len + DIRECT_ALIGN];
    let misalign = v.as_ptr() as usize % DIRECT_ALIGN;
    let start = if misalign == 0 {
        0
    } else {
        DIRECT_ALIGN - misalign
    };
    (v, start)
}

impl HostFile {
    /// Open `path`. `direct` requests O_DIRECT (bypassing the page cache).
    pub fn open(path: &Path, read_only: bool, direct: bool) -> Result<Self, RawError> {
        let mut oo = OpenOptions::new();
        oo.read(true).write(!read_only);
        if direct {
            oo.custom_flags(libc::O_DIRECT);
        }
        let file = oo.open(path).map_err(|source| RawError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Ok(HostFile { file, direct })
    }

    /// Wrap an already open file (no O_DIRECT handling).
    pub fn from_file(file: File) -> Self {
        HostFile {
            file,
            direct: false,
        }
    }

    /// Whether the file was opened with O_DIRECT.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// The underlying file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether an I/O of `len` bytes at `offset` from memory at `ptr` must go through an
    /// aligned bounce buffer (only with O_DIRECT, when something is not sector-aligned).
    pub fn needs_bounce(&self, ptr: *const u8, len: usize, offset: u64) -> bool {
        self.direct && (ptr as usize % DIRECT_ALIGN != 0 || len % 512 != 0 || offset % 512 != 0)
    }

    /// Read exactly `buf.len()` bytes at `offset`. Bytes past the end of the
    /// file read as zeroes.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if self.needs_bounce(buf.as_ptr(), buf.len(), offset) {
            let (start, len, skip) = bounce_span(offset, buf.len())?;
            let (mut v, s) = aligned_buf(len);
            self.read_direct(&mut v[s..s + len], start)?;
            buf.copy_from_slice(&v[s + skip..s + skip + buf.len()]);
            return Ok(());
        }
        self.read_direct(buf, offset)
    }

    fn read_direct(&self, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
        while !buf.is_empty() {
            match self.file.read_at(buf, offset) {
                Ok(0) => {
                    buf.fill(0);
                    return Ok(());
                }
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset = offset.checked_add(n as u64).ok_or_else(overflow)?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Write all of `buf` at `offset`, extending the file if needed.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if self.needs_bounce(buf.as_ptr(), buf.len(), offset) {
            let (start, len, skip) = bounce_span(offset, buf.len())?;
            let (mut v, s) = aligned_buf(len);
            // Read-modify-write the partial sectors at either end.
            if skip != 0 || (skip + buf.len()) % 512 != 0 {
                self.read_direct(&mut v[s..s + len], start)?;
            }
            v[s + skip..s + skip + buf.len()].copy_from_slice(buf);
            return self.file.write_all_at(&v[s..s + len], start);
        }
        self.file.write_all_at(buf, offset)
    }

    /// Read exactly `len` bytes at `offset` into the memory at `ptr` (bytes past the
    /// end of the file read as zeroes), with `pread` straight into that memory.
    ///
    /// # Safety
    ///
    /// `ptr` must be valid for writes of `len` bytes for the whole call.
    pub unsafe fn read_raw(&self, ptr: *mut u8, len: usize, offset: u64) -> std::io::Result<()> {
        let mut done = 0usize;
        while done < len {
            let off = file_offset(offset, done)?;
            // SAFETY: the caller guarantees ptr..ptr+len is writable; done < len.
            let n = unsafe {
                libc::pread(self.file.as_raw_fd(), ptr.add(done).cast(), len - done, off)
            };
            match n {
                0 => {
                    // SAFETY: as above, for the rest of the range.
                    unsafe { std::ptr::write_bytes(ptr.add(done), 0, len - done) };
                    return Ok(());
                }
                n if n > 0 => done += n as usize,
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Write `len` bytes from the memory at `ptr` at `offset`, with `pwrite` straight
    /// from that memory.
    ///
    /// # Safety
    ///
    /// `ptr` must be valid for reads of `len` bytes for the whole call.
    pub unsafe fn write_raw(&self, ptr: *const u8, len: usize, offset: u64) -> std::io::Result<()> {
        let mut done = 0usize;
        while done < len {
            let off = file_offset(offset, done)?;
            // SAFETY: the caller guarantees ptr..ptr+len is readable; done < len.
            let n = unsafe {
                libc::pwrite(self.file.as_raw_fd(), ptr.add(done).cast(), len - done, off)
            };
            match n {
                0 => return Err(std::io::ErrorKind::WriteZero.into()),
                n if n > 0 => done += n as usize,
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Make written data durable (fdatasync).
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Current length of the file in bytes.
    pub fn len(&self) -> std::io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> std::io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Truncate or extend the file.
    pub fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> std::io::Result<()> {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let l = libc::off_t::try_from(len)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: fallocate only reads its integer arguments; the descriptor is
        // owned by `self.file` and stays open for the duration of the call.
        let r = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, l) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    fn lseek(&self, offset: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: lseek only reads its integer arguments; the descriptor is
        // owned by `self.file`. Concurrent positioned I/O does not use the
        // file position, so moving it is harmless.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), off, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        }
    }

    /// The first offset at or after `offset` that holds data (SEEK_DATA), or
    /// `None` if only a hole or the end of the file follows.
    pub fn next_data(&self, offset: u64) -> std::io::Result<Option<u64>> {
        self.lseek(offset, libc::SEEK_DATA)
    }

    /// The first offset at or after `offset` that starts a hole (SEEK_HOLE;
    /// the end of the file counts as a hole), or `None` past the end.
    pub fn next_hole(&self, offset: u64) -> std::io::Result<Option<u64>> {
        self.lseek(offset, libc::SEEK_HOLE)
    }

    /// Deallocate a range (it then reads as zeroes); the file size is kept.
    pub fn punch_hole(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// Make a range read as zeroes, preferring FALLOC_FL_ZERO_RANGE, then a
    /// hole punch (inside the file), then writing zeroes.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        if self
            .fallocate(libc::FALLOC_FL_ZERO_RANGE, offset, len)
            .is_ok()
        {
            return Ok(());
        }
        let file_len = self.len()?;
        let end = offset.checked_add(len).ok_or_else(overflow)?;
        if end <= file_len && self.punch_hole(offset, len).is_ok() {
            return Ok(());
        }
        const CHUNK: u64 = 1 << 20;
        let (v, s) = aligned_buf(CHUNK as usize);
        let mut pos = offset;
        while pos < end {
            let n = (end - pos).min(CHUNK);
            self.write_at(&v[s..s + n as usize], pos)?;
            pos += n;
        }
        Ok(())
    }
}

/// The error for an offset or length past what a file can address.
fn overflow() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        "offset plus length overflows a file offset",
    )
}

/// `offset + done` as an `off_t`, or an error when it does not fit.
fn file_offset(offset: u64, done: usize) -> std::io::Result<libc::off_t> {
    offset
        .checked_add(done as u64)
        .and_then(|o| libc::off_t::try_from(o).ok())
        .ok_or_else(overflow)
}

/// The sector-aligned span `(start, len, skip)` that covers `len` bytes at `offset`:
/// the bounce buffer reads or writes `len` bytes at `start`, and the caller's bytes
/// sit `skip` bytes into it. Checked: an offset near `u64::MAX` is an error.
fn bounce_span(offset: u64, len: usize) -> std::io::Result<(u64, usize, usize)> {
    let start = offset & !511;
    let end = offset
        .checked_add(len as u64)
        .and_then(|e| e.checked_add(511))
        .ok_or_else(overflow)?
        & !511;
    let span = usize::try_from(end - start).map_err(|_| overflow())?;
    Ok((start, span, (offset - start) as usize))
}

/// Options for [`RawBackend::open`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RawOptions {
    /// Refuse write-type requests and open the file read-only.
    pub read_only: bool,
    /// Open with O_DIRECT.
    pub direct: bool,
}

/// A [`BlockBackend`] backed by a plain file; its size is the file's size
/// when opened.
#[derive(Debug)]
pub struct RawBackend {
    file: HostFile,
    size: u64,
    read_only: bool,
}

impl RawBackend {
    /// Open `path` as a raw disk image.
    pub fn open(path: impl AsRef<Path>, opts: RawOptions) -> Result<Self, RawError> {
        let file = HostFile::open(path.as_ref(), opts.read_only, opts.direct)?;
        let size = file.len()?;
        Ok(RawBackend {
            file,
            size,
            read_only: opts.read_only,
        })
    }

    /// The underlying host file.
    pub fn host_file(&self) -> &HostFile {
        &self.file
    }

    fn check_write(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        check_range(offset, len, self.size)
    }
}

impl BlockBackend for RawBackend {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        check_range(offset, buf.len() as u64, self.size)?;
        Ok(self.file.read_at(buf, offset)?)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        self.check_write(offset, buf.len() as u64)?;
        Ok(self.file.write_at(buf, offset)?)
    }
    fn flush(&self) -> Result<(), BlockError> {
        if self.read_only {
            return Ok(());
        }
        Ok(self.file.sync()?)
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.check_write(offset, len)?;
        // Discard is advisory: a file system without hole punching keeps the data.
        match self.file.punch_hole(offset, len) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.check_write(offset, len)?;
        Ok(self.file.write_zeroes(offset, len)?)
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn read_volatile_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> Result<(), BlockError> {
        check_range(offset, buf.len() as u64, self.size)?;
        let ptr = buf.ptr_guard_mut();
        if self.file.needs_bounce(ptr.as_ptr(), buf.len(), offset) {
            let mut tmp = vec![0u8; buf.len()];
            self.file.read_at(&mut tmp, offset)?;
            buf.copy_from(&tmp);
            return Ok(());
        }
        // SAFETY: the guard keeps the slice's memory mapped; it is valid for
        // buf.len() bytes of writes, which pread fills without making a Rust
        // reference to it.
        unsafe { self.file.read_raw(ptr.as_ptr(), buf.len(), offset) }?;
        Ok(())
    }
    fn write_volatile_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> Result<(), BlockError> {
        self.check_write(offset, buf.len() as u64)?;
        let ptr = buf.ptr_guard();
        if self.file.needs_bounce(ptr.as_ptr(), buf.len(), offset) {
            let mut tmp = vec![0u8; buf.len()];
            buf.copy_to(&mut tmp[..]);
            self.file.write_at(&tmp, offset)?;
            return Ok(());
        }
        // SAFETY: the guard keeps the slice's memory mapped for buf.len() bytes,
        // which pwrite only reads.
        unsafe { self.file.write_raw(ptr.as_ptr(), buf.len(), offset) }?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(len: usize) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(len as u64).unwrap();
        f
    }

    #[test]
    fn read_write_discard_zeroes() {
        let f = image(1 << 20);
        let d = RawBackend::open(f.path(), RawOptions::default()).unwrap();
        assert_eq!(d.size(), 1 << 20);
        d.write_at(&[0xab; 8192], 4096).unwrap();
        let mut b = vec![0u8; 8192];
        d.read_at(&mut b, 4096).unwrap();
        assert!(b.iter().all(|&x| x == 0xab));
        d.write_zeroes(4096, 100).unwrap();
        d.read_at(&mut b, 4096).unwrap();
        assert!(b[..100].iter().all(|&x| x == 0));
        assert!(b[100..].iter().all(|&x| x == 0xab));
        d.discard(8192, 4096).unwrap();
        d.read_at(&mut b, 4096).unwrap();
        assert!(b[4096..].iter().all(|&x| x == 0));
        d.flush().unwrap();
        assert!(matches!(
            d.write_at(&[1], 1 << 20),
            Err(BlockError::OutOfRange { .. })
        ));
    }

    #[test]
    fn offsets_near_the_end_of_u64_are_errors_not_panics() {
        let f = image(4096);
        let host = HostFile::from_file(f.reopen().unwrap());
        let mut b = [0u8; 600];
        for off in [u64::MAX, u64::MAX - 100, i64::MAX as u64 + 1] {
            assert!(host.read_at(&mut b, off).is_err(), "read at {off:#x}");
            assert!(host.write_at(&b, off).is_err(), "write at {off:#x}");
            assert!(host.write_zeroes(off, 4096).is_err(), "zeroes at {off:#x}");
        }
        assert_eq!(bounce_span(u64::MAX - 10, 5).ok(), None);
        assert_eq!(bounce_span(1000, 100).ok(), Some((512, 1024, 488)));
    }

    #[test]
    fn read_only_refuses_writes() {
        let f = image(4096);
        let d = RawBackend::open(
            f.path(),
            RawOptions {
                read_only: true,
                direct: false,
            },
        )
        .unwrap();
        assert!(matches!(d.write_at(&[1], 0), Err(BlockError::ReadOnly)));
        assert!(matches!(d.discard(0, 512), Err(BlockError::ReadOnly)));
        assert!(d.is_read_only());
    }

    #[test]
    fn missing_file_is_an_error() {
        let e = RawBackend::open("/nonexistent/virtkit/x.img", RawOptions::default());
        assert!(matches!(e, Err(RawError::Open { .. })));
    }

    #[test]
    fn volatile_reads_and_writes_go_straight_to_memory() {
        let img = image(64 * 1024);
        let b = RawBackend::open(img.path(), RawOptions::default()).unwrap();
        let mut src: Vec<u8> = (0..8192).map(|i| (i % 251) as u8).collect();
        let vs = VolatileSlice::from(&mut src[..]);
        b.write_volatile_at(&vs, 4096).unwrap();
        let mut back = vec![0u8; 8192];
        b.read_at(&mut back, 4096).unwrap();
        assert_eq!(back, (0..8192).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        let mut dst = vec![0xffu8; 8192];
        let vd = VolatileSlice::from(&mut dst[..]);
        b.read_volatile_at(&vd, 4096).unwrap();
        assert_eq!(dst, back);
        // Range checks still apply.
        let mut big = vec![0u8; 8192];
        let vb = VolatileSlice::from(&mut big[..]);
        assert!(matches!(
            b.read_volatile_at(&vb, 60 * 1024),
            Err(BlockError::OutOfRange { .. })
        ));
        let ro = RawBackend::open(
            img.path(),
            RawOptions {
                read_only: true,
                ..RawOptions::default()
            },
        )
        .unwrap();
        assert!(matches!(
            ro.write_volatile_at(&vb, 0),
            Err(BlockError::ReadOnly)
        ));
    }

    #[test]
    fn direct_unaligned_io_bounces() {
        // O_DIRECT is not supported on tmpfs, so use the source tree's file
        // system; an EINVAL there fails the test with a clear message.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let p = dir.path().join("d.img");
        std::fs::write(&p, vec![0u8; 65536]).unwrap();
        let d = match RawBackend::open(
            &p,
            RawOptions {
                read_only: false,
                direct: true,
            },
        ) {
            Ok(d) => d,
            Err(RawError::Open { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
                panic!(
                    "file system under {} refuses O_DIRECT",
                    dir.path().display()
                )
            }
            Err(e) => panic!("{e}"),
        };
        d.write_at(b"hello world", 1001).unwrap();
        let mut b = [0u8; 11];
        d.read_at(&mut b, 1001).unwrap();
        assert_eq!(&b, b"hello world");
        let mut c = [0u8; 2];
        d.read_at(&mut c, 999).unwrap();
        assert_eq!(c, [0, 0]);
    }
}
