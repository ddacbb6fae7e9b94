//! The qcow2 block backend.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};

use virtkit_block::{check_range, BlockBackend, BlockError, HostFile, RawBackend, RawOptions};
use vm_memory::VolatileSlice;

use crate::error::{Qcow2Error, Result};
use crate::header::{off, CompressionType, Header, INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use crate::meta::{Mapping, Meta, COMPRESSED, COPIED, ZERO};
use crate::snapshot::{read_snapshots, Snapshot};

/// What to do with an image's backing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackingMode {
    /// Refuse to open an image that has a backing file (the default).
    #[default]
    Deny,
    /// Open the backing chain (read-only), resolving relative names against
    /// the folder of the image that names them.
    Follow,
    /// Open the image alone; unallocated clusters read as zeroes. Meant for
    /// inspection tools (`info`, `check`, `map`).
    Ignore,
}

/// Options for [`Qcow2::open`].
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Open read-only.
    pub read_only: bool,
    /// Backing file policy.
    pub backing: BackingMode,
    /// Use O_DIRECT for the image file.
    pub direct: bool,
    /// Most memory used by cached L2 tables (bytes).
    pub l2_cache_bytes: usize,
    /// Most memory used by cached refcount blocks (bytes).
    pub refcount_cache_bytes: usize,
    /// Longest backing chain accepted.
    pub max_backing_depth: usize,
    /// Rebuild refcounts when a writable image has the dirty bit set.
    pub repair_dirty: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read_only: false,
            backing: BackingMode::Deny,
            direct: false,
            l2_cache_bytes: 32 << 20,
            refcount_cache_bytes: 4 << 20,
            max_backing_depth: 16,
            repair_dirty: true,
        }
    }
}

/// A qcow2 image opened as a block device.
///
/// Metadata lives behind one mutex; reads and in-place writes of allocated
/// clusters do their data I/O outside it. Operations that allocate or free
/// clusters hold an exclusive gate so no data I/O is in flight against a
/// cluster whose mapping changes.
#[derive(Debug)]
pub struct Qcow2 {
    pub(crate) file: HostFile,
    pub(crate) path: PathBuf,
    gate: RwLock<()>,
    pub(crate) meta: Mutex<Meta>,
    inflight_cv: Condvar,
    pub(crate) backing: Option<Backing>,
    backing_path: Option<PathBuf>,
    pub(crate) size: u64,
    read_only: bool,
    pub(crate) cb: u32,
    version: u32,
    compression: CompressionType,
    snapshots: Vec<Snapshot>,
    header: Header,
    dirty_bit: Mutex<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An opened backing file.
#[derive(Debug, Clone)]
pub(crate) enum Backing {
    Qcow2(Arc<Qcow2>),
    Raw(Arc<RawBackend>),
}

impl Backing {
    pub(crate) fn dev(&self) -> &dyn BlockBackend {
        match self {
            Backing::Qcow2(q) => &**q,
            Backing::Raw(r) => &**r,
        }
    }
}

/// One piece of a planned write.
#[derive(Debug, Clone, Copy)]
enum Piece {
    /// Overwrite allocated data in place.
    InPlace {
        host: u64,
        buf_off: usize,
        len: usize,
    },
    /// Whole fresh clusters `gc..gc+count` written at `host..`.
    Run {
        gc: u64,
        count: u64,
        host: u64,
        buf_off: usize,
    },
    /// One cluster written at `host` (new, or a preallocated zero cluster).
    Alloc {
        gc: u64,
        host: u64,
        inoff: u64,
        buf_off: usize,
        len: usize,
        old: Mapping,
        fresh: bool,
    },
}

/// A piece of a request after resolving its mapping.
#[derive(Debug, Clone, Copy)]
enum Seg {
    Zero,
    Backing(u64),
    Data(u64),
    Compressed { off: u64, len: u64, skip: u64 },
}

impl Qcow2 {
    /// Open the qcow2 image at `path`.
    pub fn open(path: impl AsRef<Path>, opts: OpenOptions) -> Result<Qcow2> {
        Self::open_chain(path.as_ref(), &opts, &mut Vec::new())
    }

    fn open_chain(path: &Path, opts: &OpenOptions, chain: &mut Vec<PathBuf>) -> Result<Qcow2> {
        let canon = std::fs::canonicalize(path).map_err(|source| Qcow2Error::Open {
            path: path.display().to_string(),
            source,
        })?;
        if chain.contains(&canon) {
            return Err(Qcow2Error::BackingLoop(canon.display().to_string()));
        }
        if chain.len() > opts.max_backing_depth {
            return Err(Qcow2Error::BackingTooDeep(opts.max_backing_depth));
        }
        chain.push(canon);
        let file = HostFile::open(path, opts.read_only, opts.direct).map_err(|e| match e {
            virtkit_block::RawError::Open { path, source } => Qcow2Error::Open { path, source },
            virtkit_block::RawError::Io(e) => Qcow2Error::Io(e),
        })?;
        let len = file.len()?;
        let mut small = vec![0u8; len.min(104) as usize];
        file.read_at(&mut small, 0)?;
        if small.len() >= 4 && small[..4] != crate::header::MAGIC.to_be_bytes() {
            return Err(Qcow2Error::NotQcow2);
        }
        if small.len() < 72 {
            return Err(Qcow2Error::Truncated(len));
        }
        let cb = u32::from_be_bytes([small[20], small[21], small[22], small[23]]);
        if !(9..=21).contains(&cb) {
            return Err(Qcow2Error::InvalidClusterBits(cb));
        }
        let mut hbuf = vec![0u8; len.min(1 << cb) as usize];
        file.read_at(&mut hbuf, 0)?;
        let header = Header::parse(&hbuf, len)?;
        let mut read_only = opts.read_only;
        if header.extended_l2() && !read_only {
            return Err(Qcow2Error::UnsupportedFeature(
                "writing images with extended L2 entries (open them read-only)",
            ));
        }
        if header.incompatible_features & INCOMPAT_CORRUPT != 0 {
            if !read_only {
                log::warn!(
                    "qcow2: {} is marked corrupt; opening it read-only",
                    path.display()
                );
            }
            read_only = true;
        }
        let (backing, backing_path) = match (&header.backing_file, opts.backing) {
            (None, _) | (Some(_), BackingMode::Ignore) => (None, None),
            (Some(name), BackingMode::Deny) => {
                return Err(Qcow2Error::BackingNotAllowed(name.clone()))
            }
            (Some(name), BackingMode::Follow) => {
                let (b, p) =
                    open_backing(path, name, header.backing_format.as_deref(), opts, chain)
                        .map_err(|e| Qcow2Error::Backing {
                            name: name.clone(),
                            source: Box::new(e),
                        })?;
                (Some(b), Some(p))
            }
        };
        let snapshots = read_snapshots(&file, &header, len)?;
        let meta = Meta::new(
            &file,
            header.clone(),
            opts.l2_cache_bytes,
            opts.refcount_cache_bytes,
        )?;
        let q = Qcow2 {
            path: path.to_path_buf(),
            gate: RwLock::new(()),
            meta: Mutex::new(meta),
            inflight_cv: Condvar::new(),
            backing,
            backing_path,
            size: header.size,
            read_only,
            cb: header.cluster_bits,
            version: header.version,
            compression: header.compression,
            snapshots,
            dirty_bit: Mutex::new(header.incompatible_features & INCOMPAT_DIRTY != 0),
            header,
            file,
        };
        if !read_only {
            if q.header.autoclear_features != 0 {
                q.file.write_at(&0u64.to_be_bytes(), off::AUTOCLEAR)?;
                q.file.sync()?;
            }
            if *lock(&q.dirty_bit) && opts.repair_dirty {
                crate::check::check_image(&q, crate::check::Repair::All)?;
                q.set_dirty_bit(false)?;
            }
        }
        Ok(q)
    }

    /// Exclude all guest I/O (held while a check repairs refcounts).
    pub(crate) fn exclusive(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header as it was when the image was opened.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cb
    }

    /// Internal snapshots (listed, never modified).
    pub fn snapshots(&self) -> &[Snapshot] {
        &self.snapshots
    }

    /// The resolved path of the backing file, if it was opened.
    pub fn backing_path(&self) -> Option<&Path> {
        self.backing_path.as_deref()
    }

    /// Whether the dirty bit is currently set.
    pub fn is_dirty(&self) -> bool {
        *lock(&self.dirty_bit)
    }

    pub(crate) fn has_backing(&self) -> bool {
        self.backing.is_some() || self.header.backing_file.is_some()
    }

    pub(crate) fn set_dirty_bit(&self, on: bool) -> Result<()> {
        let mut d = lock(&self.dirty_bit);
        if *d == on {
            return Ok(());
        }
        // Header writes happen under the metadata lock (with O_DIRECT they
        // are read-modify-write of the first sector).
        let mut m = lock(&self.meta);
        let mut feat = m.h.incompatible_features & !INCOMPAT_DIRTY;
        if on {
            feat |= INCOMPAT_DIRTY;
        }
        if !on {
            self.file.sync()?;
        }
        self.file.write_at(&feat.to_be_bytes(), off::INCOMPAT)?;
        self.file.sync()?;
        m.h.incompatible_features = feat;
        *d = on;
        Ok(())
    }

    fn check_writable(&self, offset: u64, len: u64) -> Result<()> {
        if self.read_only {
            return Err(Qcow2Error::ReadOnly);
        }
        if self.header.backing_file.is_some() && self.backing.is_none() {
            // Copy-on-write would copy zeroes instead of the backing data.
            return Err(Qcow2Error::InvalidOption(
                "an image opened with BackingMode::Ignore takes no guest writes".into(),
            ));
        }
        check_range(offset, len, self.size)?;
        Ok(())
    }

    /// Resolve `offset..offset+len` into (segment, length) pieces.
    fn resolve(&self, m: &mut Meta, offset: u64, len: u64) -> Result<Vec<(Seg, u64)>> {
        let cs = 1u64 << self.cb;
        let mut out: Vec<(Seg, u64)> = Vec::new();
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let gc = pos >> self.cb;
            let inoff = pos & (cs - 1);
            let mut n = (cs - inoff).min(end - pos);
            let mut map = m.mapping(&self.file, gc)?;
            if m.l2_words == 2 && !matches!(map, Mapping::Compressed { .. }) {
                // Extended L2: 32 subclusters, each allocated, zero or absent.
                let sub = cs / 32;
                let sc = inoff / sub;
                n = n.min(sub - inoff % sub);
                let bitmap = m.l2_bitmap(&self.file, gc)?;
                map = if bitmap & (1 << sc) != 0 {
                    match map {
                        Mapping::Data { .. } => map,
                        _ => {
                            return Err(Qcow2Error::Corrupt(format!(
                                "guest cluster {gc}: allocated subcluster without a host cluster"
                            )))
                        }
                    }
                } else if bitmap & (1 << (32 + sc)) != 0 {
                    Mapping::Zero {
                        off: 0,
                        copied: false,
                    }
                } else {
                    Mapping::Unallocated
                };
            }
            let seg = match map {
                Mapping::Unallocated if self.backing.is_some() => Seg::Backing(pos),
                Mapping::Unallocated | Mapping::Zero { .. } => Seg::Zero,
                Mapping::Data { off, .. } => Seg::Data(off + inoff),
                Mapping::Compressed { off, len } => Seg::Compressed {
                    off,
                    len,
                    skip: inoff,
                },
            };
            match (out.last_mut(), seg) {
                (Some((Seg::Data(a), l)), Seg::Data(b)) if *a + *l == b => *l += n,
                (Some((Seg::Zero, l)), Seg::Zero) => *l += n,
                (Some((Seg::Backing(a), l)), Seg::Backing(b)) if *a + *l == b => *l += n,
                _ => out.push((seg, n)),
            }
            pos += n;
        }
        Ok(out)
    }

    fn read_backing(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let Some(b) = &self.backing else {
            buf.fill(0);
            return Ok(());
        };
        let b = b.dev();
        let bsize = b.size();
        let avail = bsize.saturating_sub(offset).min(buf.len() as u64) as usize;
        if avail > 0 {
            b.read_at(&mut buf[..avail], offset)?;
        }
        buf[avail..].fill(0);
        Ok(())
    }

    /// Decompress the cluster whose compressed data starts at `off`.
    pub(crate) fn decompress(&self, off: u64, len: u64) -> Result<Vec<u8>> {
        let cs = 1usize << self.cb;
        let flen = self.file.len()?;
        if off >= flen {
            return Err(Qcow2Error::Corrupt(format!(
                "compressed cluster at {off:#x} starts past the end of the file"
            )));
        }
        let avail = flen - off;
        let mut len = len;
        if len > avail {
            // The last sector may be partly past the end of the file.
            if len - avail >= 512 {
                return Err(Qcow2Error::Corrupt(format!(
                    "compressed cluster at {off:#x} ({len} bytes) runs past the end of the file"
                )));
            }
            len = avail;
        }
        let mut src = vec![0u8; crate::bounds::to_usize("compressed cluster", len)?];
        self.file.read_at(&mut src, off)?;
        let mut out = vec![0u8; cs];
        let corrupt =
            |why: String| Qcow2Error::Corrupt(format!("compressed cluster at {off:#x}: {why}"));
        match self.compression {
            CompressionType::Zlib => {
                let mut d = flate2::Decompress::new(false);
                d.decompress(&src, &mut out, flate2::FlushDecompress::Finish)
                    .map_err(|e| corrupt(e.to_string()))?;
                if d.total_out() != cs as u64 {
                    return Err(corrupt(format!("inflated to {} bytes", d.total_out())));
                }
            }
            CompressionType::Zstd => {
                let mut d = zstd::stream::read::Decoder::with_buffer(&src[..])
                    .map_err(|e| corrupt(e.to_string()))?
                    .single_frame();
                d.read_exact(&mut out).map_err(|e| corrupt(e.to_string()))?;
            }
        }
        Ok(out)
    }

    fn read_impl(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let segs = {
            let mut m = lock(&self.meta);
            self.resolve(&mut m, offset, buf.len() as u64)?
        };
        let mut pos = 0usize;
        for (seg, n) in segs {
            let n = n as usize;
            self.read_seg(seg, &mut buf[pos..pos + n])?;
            pos += n;
        }
        Ok(())
    }

    /// Fill `out` from one resolved segment.
    fn read_seg(&self, seg: Seg, out: &mut [u8]) -> Result<()> {
        match seg {
            Seg::Zero => out.fill(0),
            Seg::Data(o) => self.file.read_at(out, o)?,
            Seg::Backing(o) => self.read_backing(out, o)?,
            Seg::Compressed { off, len, skip } => {
                let c = self.decompress(off, len)?;
                out.copy_from_slice(&c[skip as usize..skip as usize + out.len()]);
            }
        }
        Ok(())
    }

    /// [`Qcow2::read_impl`] into memory behind a volatile slice: allocated data goes
    /// from the image file straight into that memory, the rest through a buffer.
    fn read_volatile_impl(&self, buf: &VolatileSlice<'_>, offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let segs = {
            let mut m = lock(&self.meta);
            self.resolve(&mut m, offset, buf.len() as u64)?
        };
        let mut pos = 0usize;
        let mut tmp = Vec::new();
        for (seg, n) in segs {
            let n = n as usize;
            let part = buf
                .subslice(pos, n)
                .map_err(|e| Qcow2Error::Corrupt(format!("segment outside the request: {e}")))?;
            let ptr = part.ptr_guard_mut();
            match seg {
                Seg::Data(o) if !self.file.needs_bounce(ptr.as_ptr(), n, o) => {
                    // SAFETY: the guard keeps `part` mapped and valid for n bytes of
                    // writes; pread fills it without a Rust reference to it.
                    unsafe { self.file.read_raw(ptr.as_ptr(), n, o) }?;
                }
                _ => {
                    tmp.resize(n, 0);
                    self.read_seg(seg, &mut tmp)?;
                    part.copy_from(&tmp[..]);
                }
            }
            pos += n;
        }
        Ok(())
    }

    /// Current contents of guest cluster `gc` given its mapping (for COW).
    fn cluster_content(&self, map: Mapping, gc: u64) -> Result<Vec<u8>> {
        let cs = 1usize << self.cb;
        Ok(match map {
            Mapping::Unallocated => {
                let mut v = vec![0u8; cs];
                self.read_backing(&mut v, gc << self.cb)?;
                v
            }
            Mapping::Zero { .. } => vec![0u8; cs],
            Mapping::Data { off, .. } => {
                let mut v = vec![0u8; cs];
                self.file.read_at(&mut v, off)?;
                v
            }
            Mapping::Compressed { off, len } => self.decompress(off, len)?,
        })
    }

    fn guard(&self, m: &Meta, off: u64, len: u64) -> Result<()> {
        if m.fixed.iter().any(|&(s, e)| off < e && s < off + len) {
            return Err(Qcow2Error::Corrupt(format!(
                "data cluster at {off:#x} overlaps image metadata"
            )));
        }
        Ok(())
    }

    fn before_slow_write(&self) -> Result<()> {
        if self.header.lazy_refcounts() && !self.is_dirty() {
            self.set_dirty_bit(true)?;
        }
        Ok(())
    }

    /// Plan a write under the metadata lock: in-place pieces, and fresh
    /// clusters allocated now (marked in flight) whose data is written
    /// outside the lock and whose L2 entries are set afterwards. `None`
    /// means a cluster of the request is in flight for another writer.
    fn plan_write(
        &self,
        m: &mut Meta,
        buf: &[u8],
        offset: u64,
        plan: &mut Vec<Piece>,
    ) -> Result<bool> {
        let f = &self.file;
        let cs = 1u64 << self.cb;
        let end = offset + buf.len() as u64;
        let first = offset >> self.cb;
        let last = (end - 1) >> self.cb;
        if (first..=last).any(|gc| m.inflight.contains(&gc)) {
            return Ok(false);
        }
        let mut file_len = None;
        let mut pos = offset;
        while pos < end {
            let gc = pos >> self.cb;
            let inoff = pos & (cs - 1);
            let n = (cs - inoff).min(end - pos);
            let b = (pos - offset) as usize;
            let l1i = (gc / m.l2_entries) as usize;
            let l1_copied = m.l1.get(l1i).is_some_and(|e| e & COPIED != 0);
            let map = m.mapping(f, gc)?;
            match map {
                Mapping::Data { off, copied: true } if l1_copied => {
                    self.guard(m, off, cs)?;
                    match plan.last_mut() {
                        Some(Piece::InPlace { host, len, .. })
                            if *host + *len as u64 == off + inoff =>
                        {
                            *len += n as usize
                        }
                        _ => plan.push(Piece::InPlace {
                            host: off + inoff,
                            buf_off: b,
                            len: n as usize,
                        }),
                    }
                    pos += n;
                    continue;
                }
                Mapping::Zero { off, copied: true } if off != 0 && l1_copied => {
                    self.guard(m, off, cs)?;
                    m.inflight.insert(gc);
                    plan.push(Piece::Alloc {
                        gc,
                        host: off,
                        inoff,
                        buf_off: b,
                        len: n as usize,
                        old: map,
                        fresh: false,
                    });
                    pos += n;
                    continue;
                }
                _ => {}
            }
            let fresh_map = matches!(map, Mapping::Unallocated | Mapping::Zero { off: 0, .. });
            if inoff == 0 && n == cs && fresh_map {
                // A run of whole fresh clusters in one L2 table: one allocation, one write.
                let table_end = (gc / m.l2_entries + 1) * m.l2_entries;
                let mut k = 1u64;
                while gc + k < table_end && pos + (k + 1) * cs <= end {
                    match m.mapping(f, gc + k)? {
                        Mapping::Unallocated | Mapping::Zero { off: 0, .. } => k += 1,
                        _ => break,
                    }
                }
                let host = m.alloc(f, k)?;
                for i in 0..k {
                    m.inflight.insert(gc + i);
                }
                plan.push(Piece::Run {
                    gc,
                    count: k,
                    host,
                    buf_off: b,
                });
                pos += k * cs;
                continue;
            }
            let host = m.alloc(f, 1)?;
            let flen = match file_len {
                Some(l) => l,
                None => *file_len.insert(f.len()?),
            };
            let reads_zero = match map {
                Mapping::Zero { .. } => true,
                Mapping::Unallocated => self.backing.is_none(),
                _ => false,
            };
            m.inflight.insert(gc);
            plan.push(Piece::Alloc {
                gc,
                host,
                inoff,
                buf_off: b,
                len: n as usize,
                old: map,
                fresh: reads_zero && host >= flen,
            });
            pos += n;
        }
        Ok(true)
    }

    fn write_pieces(&self, plan: &[Piece], buf: &[u8]) -> Result<()> {
        let f = &self.file;
        let cs = 1usize << self.cb;
        for p in plan {
            match *p {
                Piece::InPlace { host, buf_off, len } => {
                    f.write_at(&buf[buf_off..buf_off + len], host)?
                }
                Piece::Run {
                    count,
                    host,
                    buf_off,
                    ..
                } => f.write_at(&buf[buf_off..buf_off + count as usize * cs], host)?,
                Piece::Alloc {
                    gc,
                    host,
                    inoff,
                    buf_off,
                    len,
                    old,
                    fresh,
                } => {
                    let data = &buf[buf_off..buf_off + len];
                    if len == cs {
                        f.write_at(data, host)?;
                    } else if fresh {
                        // Past the end of the file: the rest already reads as zeroes.
                        f.write_at(data, host + inoff)?;
                    } else {
                        let mut c = match old {
                            Mapping::Zero { .. } => vec![0u8; cs],
                            other => self.cluster_content(other, gc)?,
                        };
                        c[inoff as usize..inoff as usize + len].copy_from_slice(data);
                        f.write_at(&c, host)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Point the L2 entries at the freshly written clusters and free what
    /// they replaced; always clears the in-flight marks.
    fn commit_pieces(&self, m: &mut Meta, plan: &[Piece], ok: bool) -> Result<()> {
        let f = &self.file;
        let cs = 1u64 << self.cb;
        let mut r = Ok(());
        for p in plan {
            let (gc0, count, host) = match *p {
                Piece::InPlace { .. } => continue,
                Piece::Run {
                    gc, count, host, ..
                } => (gc, count, host),
                Piece::Alloc { gc, host, .. } => (gc, 1, host),
            };
            for i in 0..count {
                let gc = gc0 + i;
                m.inflight.remove(&gc);
                if !ok || r.is_err() {
                    continue;
                }
                let h = host + i * cs;
                r = self.commit_one(m, f, gc, h);
            }
        }
        self.inflight_cv.notify_all();
        r
    }

    fn commit_one(&self, m: &mut Meta, f: &HostFile, gc: u64, h: u64) -> Result<()> {
        let l2 = m.l2_for_write(f, gc)?;
        let cur = m.mapping(f, gc)?;
        m.set_l2(l2, gc, h | COPIED)?;
        if let Some((c0, k)) = cur.host_clusters(self.cb) {
            if c0 != h >> self.cb {
                m.free_later(c0, k);
            }
        }
        Ok(())
    }

    fn write_impl(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_writable(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.before_slow_write()?;
        let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let mut m = lock(&self.meta);
        let mut plan = Vec::new();
        loop {
            match self.plan_write(&mut m, buf, offset, &mut plan) {
                Ok(true) => break,
                Ok(false) => {
                    m = self.inflight_cv.wait(m).unwrap_or_else(|e| e.into_inner());
                }
                Err(e) => {
                    // Clear the in-flight marks of what was planned so far.
                    let _ = self.commit_pieces(&mut m, &plan, false);
                    return Err(e);
                }
            }
        }
        drop(m);
        let res = self.write_pieces(&plan, buf);
        let mut m = lock(&self.meta);
        let c = self.commit_pieces(&mut m, &plan, res.is_ok());
        res.and(c)
    }

    fn write_slow(&self, m: &mut Meta, buf: &[u8], offset: u64) -> Result<()> {
        let f = &self.file;
        let cs = 1u64 << self.cb;
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let gc = pos >> self.cb;
            let inoff = pos & (cs - 1);
            let n = (cs - inoff).min(end - pos);
            let b = (pos - offset) as usize;
            let l2 = m.l2_for_write(f, gc)?;
            let map = m.mapping(f, gc)?;
            // A run of whole fresh clusters in this L2 table: one allocation, one write.
            if inoff == 0
                && n == cs
                && matches!(map, Mapping::Unallocated | Mapping::Zero { off: 0, .. })
            {
                let table_end = (gc / m.l2_entries + 1) * m.l2_entries;
                let mut k = 1u64;
                while gc + k < table_end && pos + (k + 1) * cs <= end {
                    match m.mapping(f, gc + k)? {
                        Mapping::Unallocated | Mapping::Zero { off: 0, .. } => k += 1,
                        _ => break,
                    }
                }
                let host = m.alloc(f, k)?;
                f.write_at(&buf[b..b + (k * cs) as usize], host)?;
                for i in 0..k {
                    m.set_l2(l2, gc + i, (host + i * cs) | COPIED)?;
                }
                pos += k * cs;
                continue;
            }
            let chunk = &buf[b..b + n as usize];
            match map {
                Mapping::Data { off, copied: true } => {
                    self.guard(m, off, cs)?;
                    f.write_at(chunk, off + inoff)?;
                }
                Mapping::Zero { off, copied: true } if off != 0 => {
                    self.guard(m, off, cs)?;
                    let mut c = vec![0u8; cs as usize];
                    c[inoff as usize..(inoff + n) as usize].copy_from_slice(chunk);
                    f.write_at(&c, off)?;
                    m.set_l2(l2, gc, off | COPIED)?;
                }
                _ => {
                    let new = m.alloc(f, 1)?;
                    let reads_zero = match map {
                        Mapping::Zero { .. } => true,
                        Mapping::Unallocated => self.backing.is_none(),
                        _ => false,
                    };
                    if n == cs {
                        f.write_at(chunk, new)?;
                    } else if reads_zero && new >= f.len()? {
                        // A fresh cluster past the end of the file already
                        // reads as zeroes: write only the new bytes.
                        f.write_at(chunk, new + inoff)?;
                    } else {
                        let mut c = self.cluster_content(map, gc)?;
                        c[inoff as usize..(inoff + n) as usize].copy_from_slice(chunk);
                        f.write_at(&c, new)?;
                    }
                    m.set_l2(l2, gc, new | COPIED)?;
                    if let Some((c0, k)) = map.host_clusters(self.cb) {
                        m.free_later(c0, k);
                    }
                }
            }
            pos += n;
        }
        Ok(())
    }

    /// Set whole clusters `first..first+count` to `target` (0 or ZERO),
    /// freeing what they held.
    fn unmap_clusters(&self, m: &mut Meta, first: u64, count: u64, target: u64) -> Result<()> {
        let f = &self.file;
        for gc in first..first + count {
            let map = m.mapping(f, gc)?;
            let same = matches!(
                (map, target),
                (Mapping::Unallocated, 0) | (Mapping::Zero { off: 0, .. }, ZERO)
            );
            if same {
                continue;
            }
            let l2 = m.l2_for_write(f, gc)?;
            m.set_l2(l2, gc, target)?;
            if let Some((c0, k)) = map.host_clusters(self.cb) {
                m.free_later(c0, k);
            }
        }
        Ok(())
    }

    fn zero_or_discard(&self, offset: u64, len: u64, discard: bool) -> Result<()> {
        self.check_writable(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let cs = 1u64 << self.cb;
        let backing = self.has_backing();
        let target = match (backing, self.version >= 3) {
            (false, _) => Some(0),
            (true, true) => Some(ZERO),
            (true, false) => None,
        };
        self.before_slow_write()?;
        let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let mut m = lock(&self.meta);
        let end = offset + len;
        // Whole clusters; the last cluster of the disk counts as whole when
        // the range reaches the end of the disk.
        let first = offset.div_ceil(cs);
        let last = if end == self.size {
            end.div_ceil(cs)
        } else {
            end / cs
        };
        let Some(target) = target else {
            if discard {
                return Ok(());
            }
            // v2 with a backing file: zeroes must be written out.
            let mut pos = offset;
            let zeros = vec![0u8; (1u64 << 20).min(len) as usize];
            while pos < end {
                let n = (end - pos).min(zeros.len() as u64);
                self.write_slow(&mut m, &zeros[..n as usize], pos)?;
                pos += n;
            }
            return Ok(());
        };
        if first >= last {
            if !discard {
                let zeros = vec![0u8; len as usize];
                self.write_slow(&mut m, &zeros, offset)?;
            }
            return Ok(());
        }
        if !discard {
            let head = (first * cs).min(end) - offset;
            if head > 0 {
                self.write_slow(&mut m, &vec![0u8; head as usize], offset)?;
            }
            let tail_start = (last * cs).min(end);
            if tail_start < end {
                self.write_slow(&mut m, &vec![0u8; (end - tail_start) as usize], tail_start)?;
            }
        }
        self.unmap_clusters(&mut m, first, last - first, target)
    }

    /// Write one whole guest cluster compressed (used by conversions).
    /// `offset` must be cluster aligned and `data` one cluster long (or
    /// reach the end of the disk). Falls back to a normal write when the
    /// cluster does not compress or is already allocated.
    pub fn write_compressed(&self, data: &[u8], offset: u64) -> Result<()> {
        let cs = 1u64 << self.cb;
        self.check_writable(offset, data.len() as u64)?;
        if offset % cs != 0 || (data.len() as u64 != cs && offset + data.len() as u64 != self.size)
        {
            return Err(Qcow2Error::InvalidOption(
                "compressed writes must cover one whole cluster".into(),
            ));
        }
        let padded: Vec<u8>;
        let data: &[u8] = if data.len() as u64 != cs {
            let mut v = vec![0u8; cs as usize];
            v[..data.len()].copy_from_slice(data);
            padded = v;
            &padded
        } else {
            data
        };
        let comp = crate::compress::compress(self.compression, data)?;
        if comp.len() as u64 >= cs - 512 {
            return self.write_impl(&data[..(self.size - offset).min(cs) as usize], offset);
        }
        self.before_slow_write()?;
        let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let mut m = lock(&self.meta);
        let gc = offset >> self.cb;
        let l2 = m.l2_for_write(&self.file, gc)?;
        if m.mapping(&self.file, gc)? != Mapping::Unallocated {
            let n = (self.size - offset).min(cs) as usize;
            return self.write_slow(&mut m, &data[..n], offset);
        }
        let len = comp.len() as u64;
        let host = m.alloc_compressed(&self.file, len)?;
        self.file.write_at(&comp, host)?;
        let x = 62 - (self.cb - 8);
        let sectors = ((host + len - 1) >> 9) - (host >> 9);
        m.set_l2(l2, gc, COMPRESSED | (sectors << x) | host)
    }

    fn flush_impl(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let frees = lock(&self.meta).has_pending_frees();
        // Freed clusters become reusable here: no data I/O may be in flight.
        let _g = frees.then(|| self.gate.write().unwrap_or_else(|e| e.into_inner()));
        let mut m = lock(&self.meta);
        m.flush(&self.file)
    }

    /// Flush everything, clear the dirty bit if we set it, and close.
    pub fn close(self) -> Result<()> {
        self.close_ref()
    }

    fn close_ref(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.flush_impl()?;
        if self.is_dirty() && self.header.lazy_refcounts() {
            self.set_dirty_bit(false)?;
        }
        Ok(())
    }
}

impl Drop for Qcow2 {
    fn drop(&mut self) {
        if let Err(e) = self.close_ref() {
            log::error!("qcow2: closing {}: {e}", self.path.display());
        }
    }
}

fn open_backing(
    image: &Path,
    name: &str,
    format: Option<&str>,
    opts: &OpenOptions,
    chain: &mut Vec<PathBuf>,
) -> Result<(Backing, PathBuf)> {
    if name.starts_with("json:") || name.contains("://") {
        return Err(Qcow2Error::BadBackingName(format!(
            "{name:?} is not a file name"
        )));
    }
    let p = Path::new(name);
    let path = if p.is_absolute() {
        p.to_path_buf()
    } else {
        image.parent().unwrap_or_else(|| Path::new(".")).join(p)
    };
    let fmt = format.ok_or_else(|| Qcow2Error::BackingFormatMissing(name.to_string()))?;
    let sub = OpenOptions {
        read_only: true,
        repair_dirty: false,
        ..opts.clone()
    };
    let b = match fmt {
        "qcow2" => Backing::Qcow2(Arc::new(Qcow2::open_chain(&path, &sub, chain)?)),
        "raw" => {
            let canon = std::fs::canonicalize(&path).map_err(|source| Qcow2Error::Open {
                path: path.display().to_string(),
                source,
            })?;
            if chain.contains(&canon) {
                return Err(Qcow2Error::BackingLoop(canon.display().to_string()));
            }
            Backing::Raw(Arc::new(RawBackend::open(
                &path,
                RawOptions {
                    read_only: true,
                    direct: opts.direct,
                },
            )?))
        }
        other => return Err(Qcow2Error::BackingFormatUnsupported(other.to_string())),
    };
    Ok((b, path))
}

impl BlockBackend for Qcow2 {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::result::Result<(), BlockError> {
        Ok(self.read_impl(buf, offset)?)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::result::Result<(), BlockError> {
        Ok(self.write_impl(buf, offset)?)
    }
    fn flush(&self) -> std::result::Result<(), BlockError> {
        Ok(self.flush_impl()?)
    }
    fn discard(&self, offset: u64, len: u64) -> std::result::Result<(), BlockError> {
        Ok(self.zero_or_discard(offset, len, true)?)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> std::result::Result<(), BlockError> {
        Ok(self.zero_or_discard(offset, len, false)?)
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn read_volatile_at(
        &self,
        buf: &VolatileSlice<'_>,
        offset: u64,
    ) -> std::result::Result<(), BlockError> {
        Ok(self.read_volatile_impl(buf, offset)?)
    }
}
