//! An in-memory [`BlockBackend`] for tests (feature `test-utils`).

use std::sync::Mutex;

use crate::{check_range, BlockBackend, BlockError};

/// A block device held in a `Vec<u8>`.
#[derive(Debug)]
pub struct MemBackend {
    data: Mutex<Vec<u8>>,
    read_only: bool,
    flushes: std::sync::atomic::AtomicU64,
}

impl MemBackend {
    /// A zero-filled writable device of `size` bytes.
    pub fn new(size: usize) -> Self {
        Self::from_vec(vec![0; size], false)
    }

    /// A device holding `data`.
    pub fn from_vec(data: Vec<u8>, read_only: bool) -> Self {
        MemBackend {
            data: Mutex::new(data),
            read_only,
            flushes: Default::default(),
        }
    }

    /// A copy of the whole contents.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().clone()
    }

    /// How many times `flush` was called.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fill(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let mut d = self.lock();
        check_range(offset, len, d.len() as u64)?;
        d[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
}

impl BlockBackend for MemBackend {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        let d = self.lock();
        check_range(offset, buf.len() as u64, d.len() as u64)?;
        let o = offset as usize;
        buf.copy_from_slice(&d[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let mut d = self.lock();
        check_range(offset, buf.len() as u64, d.len() as u64)?;
        let o = offset as usize;
        d[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> Result<(), BlockError> {
        self.flushes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.fill(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.fill(offset, len)
    }
    fn size(&self) -> u64 {
        self.lock().len() as u64
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_and_read_only() {
        let d = MemBackend::new(1024);
        let mut b = [0u8; 16];
        assert!(matches!(
            d.read_at(&mut b, 1020),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            d.write_at(&b, u64::MAX - 3),
            Err(BlockError::OutOfRange { .. })
        ));
        let ro = MemBackend::from_vec(vec![1; 64], true);
        assert!(matches!(ro.write_at(&b, 0), Err(BlockError::ReadOnly)));
        assert!(matches!(ro.write_zeroes(0, 8), Err(BlockError::ReadOnly)));
        ro.read_at(&mut b, 0).unwrap();
        assert_eq!(b, [1; 16]);
    }
}
