//! Port I/O and MMIO dispatch: a sorted map from address ranges to devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on a [`Bus`]. Offsets are relative to the start of the range it was inserted at.
/// vCPU threads call it under a mutex, so it needs no locking of its own.
pub trait BusDevice: Send {
    /// A guest read of `data.len()` bytes at `offset`; fill `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else drives it (an event loop).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors from building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// A zero-length range.
    #[error("bus range at {0:#x} has zero length")]
    ZeroLength(u64),
    /// The range overlaps one already on the bus (or wraps around).
    #[error("bus range {start:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Start of the new range.
        start: u64,
        /// Length of the new range.
        len: u64,
    },
}

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// Address ranges mapped to devices.
#[derive(Clone, Default)]
pub struct Bus {
    devices: BTreeMap<u64, Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.devices.iter().map(|(s, e)| (*s, e.len)))
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `start..start+len`.
    pub fn insert(&mut self, device: SharedDevice, start: u64, len: u64) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength(start));
        }
        let end = start
            .checked_add(len)
            .ok_or(BusError::Overlap { start, len })?;
        let overlaps_prev = self
            .devices
            .range(..=start)
            .next_back()
            .is_some_and(|(s, e)| s + e.len > start);
        let overlaps_next = self.devices.range(start..end).next().is_some();
        if overlaps_prev || overlaps_next {
            return Err(BusError::Overlap { start, len });
        }
        self.devices.insert(start, Entry { len, device });
        Ok(())
    }

    /// The device covering `addr` and the offset of `addr` in it.
    pub fn resolve(&self, addr: u64) -> Option<(&SharedDevice, u64)> {
        let (start, e) = self.devices.range(..=addr).next_back()?;
        let off = addr - start;
        (off < e.len).then_some((&e.device, off))
    }

    /// Dispatches a read; returns false (and leaves `data` alone) when no device is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((d, off)) => {
                d.lock().unwrap_or_else(|e| e.into_inner()).read(off, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false when no device is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((d, off)) => {
                d.lock().unwrap_or_else(|e| e.into_inner()).write(off, data);
                true
            }
            None => false,
        }
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether the bus has no device.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

/// The port I/O and MMIO buses a vCPU dispatches to.
#[derive(Debug, Clone, Default)]
pub struct Buses {
    /// Port I/O (addresses are port numbers).
    pub pio: Bus,
    /// MMIO (guest-physical addresses).
    pub mmio: Bus,
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_and_overlap() {
        let dev = Arc::new(Mutex::new(Reg(vec![])));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x100, 0x10).unwrap();
        assert_eq!(
            bus.insert(dev.clone(), 0x10f, 1),
            Err(BusError::Overlap {
                start: 0x10f,
                len: 1
            })
        );
        assert_eq!(
            bus.insert(dev.clone(), 0xf8, 0x10),
            Err(BusError::Overlap {
                start: 0xf8,
                len: 0x10
            })
        );
        assert_eq!(
            bus.insert(dev.clone(), 0x0, 0),
            Err(BusError::ZeroLength(0))
        );
        assert!(bus.insert(dev.clone(), u64::MAX, 2).is_err());
        bus.insert(dev.clone(), 0x110, 1).unwrap();
        let mut b = [0u8; 2];
        assert!(bus.read(0x105, &mut b));
        assert_eq!(b, [5, 5]);
        assert!(!bus.read(0x111, &mut b));
        assert!(!bus.read(0xff, &mut b));
        assert!(bus.write(0x10f, &[1, 2, 3]));
        assert!(bus.write(0x110, &[9]));
        assert_eq!(
            dev.lock().unwrap().0,
            vec![(0xf, vec![1, 2, 3]), (0, vec![9])]
        );
        assert_eq!(bus.len(), 2);
    }
}
