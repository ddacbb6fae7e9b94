//! Request parsing and execution: a chain is validated whole before any data moves.

use super::*;

impl Block {
    pub(super) fn handle_request(&mut self, mem: &GuestMem, descs: &[Desc]) -> u32 {
        // The status byte: last byte of the last descriptor, which must be
        // writable and inside guest memory.
        let Some(last) = descs.last() else {
            return 0;
        };
        if !last.write || last.len == 0 {
            warn!("virtio-blk: chain has no writable status byte");
            return 0;
        }
        let Some(status_addr) = last.addr.0.checked_add(u64::from(last.len) - 1) else {
            return 0;
        };
        let status_addr = GuestAddress(status_addr);
        if !mem.address_in_range(status_addr) {
            warn!("virtio-blk: status byte outside guest memory");
            return 0;
        }
        let (st, written) = match self.parse_and_execute(mem, descs) {
            Ok(n) => (status::OK, n),
            Err(ReqError::Unsupported(t)) => {
                debug!("virtio-blk: unsupported request type {t}");
                (status::UNSUPP, 0)
            }
            Err(e) => {
                warn!("virtio-blk: request failed: {e}");
                (status::IOERR, 0)
            }
        };
        if mem.write_obj(st, status_addr).is_err() {
            return 0;
        }
        written.saturating_add(1)
    }

    fn parse_and_execute(&mut self, mem: &GuestMem, descs: &[Desc]) -> Result<u32, ReqError> {
        // Split into readable then writable descriptors, checking order and
        // that every buffer is inside guest memory.
        let first_write = descs.iter().position(|d| d.write).unwrap_or(descs.len());
        if descs[first_write..].iter().any(|d| !d.write) {
            return Err(ReqError::Layout("readable descriptor after a writable one"));
        }
        for d in descs {
            if !mem.check_range(d.addr, d.len as usize) {
                return Err(ReqError::OutsideMemory(d.addr.0, d.len));
            }
        }
        let mut readable = Segments::new(&descs[..first_write]);
        let mut writable = Segments::new(&descs[first_write..]);
        // The status byte is not data.
        writable.truncate(writable.total - 1);

        let mut hdr = [0u8; 16];
        if readable.total < 16 {
            return Err(ReqError::Layout("request header shorter than 16 bytes"));
        }
        readable.read_into(mem, &mut hdr)?;
        let req_type = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let sector = u64::from_le_bytes([
            hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15],
        ]);
        let size = self.backend.size();
        let data_range = |len: u64| -> Result<u64, ReqError> {
            if len % SECTOR_SIZE != 0 {
                return Err(ReqError::Unaligned(len));
            }
            let off = sector
                .checked_mul(SECTOR_SIZE)
                .ok_or(ReqError::OutOfRange(sector))?;
            match off.checked_add(len) {
                Some(end) if end <= size => Ok(off),
                _ => Err(ReqError::OutOfRange(sector)),
            }
        };
        match req_type {
            request::IN => {
                if readable.remaining() != 0 {
                    return Err(ReqError::Layout("IN request with readable data"));
                }
                let len = writable.total;
                let mut off = data_range(len)?;
                // Straight from the backend into guest memory, piece by piece; a
                // piece that spans two memory regions goes through the bounce buffer.
                while let Some((a, n)) = writable.next_piece(CHUNK) {
                    match mem.get_slice(a, n) {
                        Ok(vs) => self.backend.read_volatile_at(&vs, off)?,
                        Err(_) => {
                            self.buf.resize(n, 0);
                            self.backend.read_at(&mut self.buf[..n], off)?;
                            mem.write_slice(&self.buf[..n], a)
                                .map_err(|_| ReqError::OutsideMemory(a.0, n as u32))?;
                        }
                    }
                    off += n as u64;
                }
                u32::try_from(len).map_err(|_| ReqError::Layout("request too long"))
            }
            request::OUT => {
                if self.read_only {
                    return Err(ReqError::ReadOnly);
                }
                if writable.total != 0 {
                    return Err(ReqError::Layout("OUT request with writable data"));
                }
                let len = readable.remaining();
                let mut off = data_range(len)?;
                while let Some((a, n)) = readable.next_piece(CHUNK) {
                    match mem.get_slice(a, n) {
                        Ok(vs) => self.backend.write_volatile_at(&vs, off)?,
                        Err(_) => {
                            self.buf.resize(n, 0);
                            mem.read_slice(&mut self.buf[..n], a)
                                .map_err(|_| ReqError::OutsideMemory(a.0, n as u32))?;
                            self.backend.write_at(&self.buf[..n], off)?;
                        }
                    }
                    off += n as u64;
                }
                Ok(0)
            }
            request::FLUSH => {
                self.backend.flush()?;
                Ok(0)
            }
            request::GET_ID => {
                let n = (writable.total as usize).min(ID_LEN);
                let id = self.id;
                writable.write_from(mem, &id[..n])?;
                Ok(n as u32)
            }
            request::DISCARD | request::WRITE_ZEROES => {
                let zeroes = req_type == request::WRITE_ZEROES;
                if self.read_only {
                    return Err(ReqError::ReadOnly);
                }
                let feature = if zeroes {
                    features::WRITE_ZEROES
                } else {
                    features::DISCARD
                };
                if !self.config.is_acked(feature) {
                    return Err(ReqError::Unsupported(req_type));
                }
                let len = readable.remaining();
                if len == 0 || len % 16 != 0 || len / 16 > u64::from(MAX_DISCARD_SEG) {
                    return Err(ReqError::Layout("bad discard/write-zeroes segment list"));
                }
                let mut segs = vec![0u8; len as usize];
                readable.read_into(mem, &mut segs)?;
                for s in segs.chunks_exact(16) {
                    let mut b8 = [0u8; 8];
                    b8.copy_from_slice(&s[0..8]);
                    let start = u64::from_le_bytes(b8);
                    let num = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
                    let flags = u32::from_le_bytes([s[12], s[13], s[14], s[15]]);
                    // Bit 0 is "unmap", only meaningful for write-zeroes.
                    if (zeroes && flags & !1 != 0) || (!zeroes && flags != 0) {
                        return Err(ReqError::Unsupported(req_type));
                    }
                    if num > MAX_DISCARD_SECTORS {
                        return Err(ReqError::Layout("segment longer than advertised"));
                    }
                    let off = start
                        .checked_mul(SECTOR_SIZE)
                        .ok_or(ReqError::OutOfRange(start))?;
                    let bytes = u64::from(num) * SECTOR_SIZE;
                    match off.checked_add(bytes) {
                        Some(end) if end <= size => {}
                        _ => return Err(ReqError::OutOfRange(start)),
                    }
                    if zeroes {
                        self.backend.write_zeroes(off, bytes)?;
                    } else {
                        self.backend.discard(off, bytes)?;
                    }
                }
                Ok(0)
            }
            t => Err(ReqError::Unsupported(t)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Desc {
    pub(super) addr: GuestAddress,
    pub(super) len: u32,
    pub(super) write: bool,
}

/// A cursor over a list of guest buffers.
struct Segments {
    bufs: Vec<(GuestAddress, u64)>,
    idx: usize,
    pos: u64,
    total: u64,
    consumed: u64,
}

impl Segments {
    fn new(descs: &[Desc]) -> Self {
        let bufs: Vec<(GuestAddress, u64)> =
            descs.iter().map(|d| (d.addr, u64::from(d.len))).collect();
        let total = bufs.iter().map(|b| b.1).sum();
        Segments {
            bufs,
            idx: 0,
            pos: 0,
            total,
            consumed: 0,
        }
    }

    fn remaining(&self) -> u64 {
        self.total - self.consumed
    }

    /// Forget everything past `len` bytes.
    fn truncate(&mut self, len: u64) {
        let mut left = len;
        for b in &mut self.bufs {
            b.1 = b.1.min(left);
            left -= b.1;
        }
        self.total = len;
    }

    fn next_piece(&mut self, want: usize) -> Option<(GuestAddress, usize)> {
        while self.idx < self.bufs.len() {
            let (addr, len) = self.bufs[self.idx];
            if self.pos < len {
                let n = (len - self.pos).min(want as u64) as usize;
                let a = GuestAddress(addr.0 + self.pos);
                self.pos += n as u64;
                self.consumed += n as u64;
                return Some((a, n));
            }
            self.idx += 1;
            self.pos = 0;
        }
        None
    }

    fn read_into(&mut self, mem: &GuestMem, out: &mut [u8]) -> Result<(), ReqError> {
        let mut done = 0;
        while done < out.len() {
            let (a, n) = self
                .next_piece(out.len() - done)
                .ok_or(ReqError::Layout("request shorter than its header says"))?;
            mem.read_slice(&mut out[done..done + n], a)
                .map_err(|_| ReqError::OutsideMemory(a.0, n as u32))?;
            done += n;
        }
        Ok(())
    }

    fn write_from(&mut self, mem: &GuestMem, data: &[u8]) -> Result<(), ReqError> {
        let mut done = 0;
        while done < data.len() {
            let (a, n) = self
                .next_piece(data.len() - done)
                .ok_or(ReqError::Layout("buffers too short"))?;
            mem.write_slice(&data[done..done + n], a)
                .map_err(|_| ReqError::OutsideMemory(a.0, n as u32))?;
            done += n;
        }
        Ok(())
    }
}

/// Why one request failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReqError {
    #[error("malformed request: {0}")]
    Layout(&'static str),
    #[error("buffer {0:#x}+{1} is outside guest memory")]
    OutsideMemory(u64, u32),
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(u64),
    #[error("sector {0} is outside the disk")]
    OutOfRange(u64),
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    #[error(transparent)]
    Backend(#[from] BlockError),
}
