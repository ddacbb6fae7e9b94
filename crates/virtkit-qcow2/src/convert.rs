//! Conversions between raw and qcow2 images (what `qemu-img convert` does).

use std::path::Path;

use virtkit_block::{BlockBackend, HostFile, RawBackend, RawOptions};

use crate::create::{create, CreateOptions};
use crate::error::{Qcow2Error, Result};
use crate::format::ImageFormat;
use crate::image::{BackingMode, OpenOptions, Qcow2};

/// Options for [`convert`].
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Format of the source.
    pub src_format: ImageFormat,
    /// Format of the output.
    pub dst_format: ImageFormat,
    /// Write qcow2 output clusters compressed.
    pub compress: bool,
    /// Creation options for qcow2 output (`size` and `backing` are ignored).
    pub create: CreateOptions,
    /// Backing policy for a qcow2 source.
    pub src_backing: BackingMode,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            src_format: ImageFormat::Raw,
            dst_format: ImageFormat::Qcow2,
            compress: false,
            create: CreateOptions::default(),
            src_backing: BackingMode::Follow,
        }
    }
}

/// Whether `b` is all zero bytes (vectorizable: no early exit per byte).
pub fn is_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(64);
    for c in &mut chunks {
        if c.iter().fold(0u8, |a, &x| a | x) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&x| x == 0)
}

enum Src {
    Raw(RawBackend),
    Qcow2(Box<Qcow2>),
}

impl Src {
    fn dev(&self) -> &dyn BlockBackend {
        match self {
            Src::Raw(r) => r,
            Src::Qcow2(q) => &**q,
        }
    }
}

/// A heap buffer whose start is 4 KiB aligned (for O_DIRECT).
struct AlignedBuf {
    v: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let v = vec![0u8; len + 4096];
        let mis = v.as_ptr() as usize % 4096;
        let start = if mis == 0 { 0 } else { 4096 - mis };
        AlignedBuf { v, start, len }
    }
    fn as_ref(&self) -> &[u8] {
        &self.v[self.start..self.start + self.len]
    }
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.v[self.start..self.start + self.len]
    }
}

fn write_chunk(out: &Dst, compress: bool, cs: u64, b: &[u8], pos: u64) -> Result<()> {
    let n = b.len() as u64;
    let mut i = 0u64;
    while i < n {
        let l = cs.min(n - i);
        if is_zero(&b[i as usize..(i + l) as usize]) {
            i += l;
            continue;
        }
        if compress {
            if let Dst::Qcow2(q) = out {
                q.write_compressed(&b[i as usize..(i + l) as usize], pos + i)?;
            }
            i += l;
            continue;
        }
        // A run of non-zero clusters goes out in one write.
        let mut j = i + l;
        while j < n {
            let l2 = cs.min(n - j);
            if is_zero(&b[j as usize..(j + l2) as usize]) {
                break;
            }
            j += l2;
        }
        let data = &b[i as usize..j as usize];
        match out {
            Dst::Raw(f) => f.write_at(data, pos + i)?,
            Dst::Qcow2(q) => q.write_at(data, pos + i)?,
        }
        i = j;
    }
    Ok(())
}

enum Dst {
    Raw(HostFile),
    Qcow2(Box<Qcow2>),
}

/// Copy `src` to a new image `dst`, skipping zeroes (they stay unallocated
/// or sparse). `progress(done, total)` is called as bytes are processed.
pub fn convert(
    src: &Path,
    dst: &Path,
    o: &ConvertOptions,
    mut progress: impl FnMut(u64, u64),
) -> Result<()> {
    let source = match o.src_format {
        ImageFormat::Raw => Src::Raw(RawBackend::open(
            src,
            RawOptions {
                read_only: true,
                direct: false,
            },
        )?),
        ImageFormat::Qcow2 => Src::Qcow2(Box::new(Qcow2::open(
            src,
            OpenOptions {
                read_only: true,
                backing: o.src_backing,
                ..Default::default()
            },
        )?)),
    };
    let size = source.dev().size();
    if o.compress && o.dst_format != ImageFormat::Qcow2 {
        return Err(Qcow2Error::InvalidOption(
            "compression needs qcow2 output".into(),
        ));
    }
    let out = match o.dst_format {
        ImageFormat::Raw => {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(dst)
                .map_err(|source| Qcow2Error::Open {
                    path: dst.display().to_string(),
                    source,
                })?;
            f.set_len(size)?;
            Dst::Raw(HostFile::from_file(f))
        }
        ImageFormat::Qcow2 => {
            let c = CreateOptions {
                size,
                backing: None,
                ..o.create.clone()
            };
            create(dst, &c)?;
            // Like `qemu-img convert -t none`: bypass the page cache (falling
            // back to it on file systems without O_DIRECT).
            let q = match Qcow2::open(
                dst,
                OpenOptions {
                    direct: true,
                    ..Default::default()
                },
            ) {
                Ok(q) => q,
                Err(_) => Qcow2::open(dst, OpenOptions::default())?,
            };
            Dst::Qcow2(Box::new(q))
        }
    };
    let cs = match &out {
        Dst::Qcow2(q) => q.cluster_size(),
        Dst::Raw(_) => 65536,
    };
    let chunk = cs.max(2 << 20);
    // A reader thread fills aligned buffers (skipping holes of a raw source)
    // while this thread writes: reads and writes overlap.
    let (to_writer, from_reader) =
        std::sync::mpsc::sync_channel::<Result<(u64, AlignedBuf, u64)>>(3);
    let (to_reader, free_bufs) = std::sync::mpsc::channel::<AlignedBuf>();
    for _ in 0..4 {
        let _ = to_reader.send(AlignedBuf::new(chunk as usize));
    }
    let src_dev = &source;
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(move || {
            let mut pos = 0u64;
            while pos < size {
                let n = chunk.min(size - pos);
                if let Src::Raw(r) = src_dev {
                    match r.host_file().next_data(pos) {
                        Ok(None) => break,
                        Ok(Some(d)) if d >= pos + n => {
                            pos = (d / cs * cs).max(pos + n);
                            continue;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            let _ = to_writer.send(Err(e.into()));
                            return;
                        }
                    }
                }
                let Ok(mut b) = free_bufs.recv() else { return };
                if let Err(e) = src_dev.dev().read_at(&mut b.as_mut()[..n as usize], pos) {
                    let _ = to_writer.send(Err(e.into()));
                    return;
                }
                if to_writer.send(Ok((pos, b, n))).is_err() {
                    return;
                }
                pos += n;
            }
        });
        for msg in from_reader {
            let (pos, b, n) = msg?;
            write_chunk(&out, o.compress, cs, &b.as_ref()[..n as usize], pos)?;
            progress(pos + n, size);
            let _ = to_reader.send(b);
        }
        Ok(())
    })?;
    match out {
        Dst::Raw(f) => f.sync()?,
        Dst::Qcow2(q) => (*q).close()?,
    }
    progress(size, size);
    Ok(())
}
