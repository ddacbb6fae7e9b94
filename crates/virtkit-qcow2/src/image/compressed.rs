//! Compressed cluster writes (used by conversions).

use super::qcow2::{lock, Qcow2};
use crate::compress::compress;
use crate::error::{Qcow2Error, Result};
use crate::meta::{Mapping, COMPRESSED};

impl Qcow2 {
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
        let comp = compress(self.compression, data)?;
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
}
