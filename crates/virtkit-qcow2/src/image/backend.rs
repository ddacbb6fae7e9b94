//! Flush and close, and the [`BlockBackend`] implementation over the read,
//! write and discard paths.

use virtkit_block::{BlockBackend, BlockError};
use vm_memory::VolatileSlice;

use super::qcow2::{lock, Qcow2};
use crate::error::Result;

impl Qcow2 {
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
