//! MMIO windows and IRQ lines for devices.

use crate::layout::{DEVICE_MMIO_END, DEVICE_MMIO_START};
use crate::{GuestAddress, PAGE_SIZE};

/// The first IRQ line handed to devices: 0–4 are taken by the PIT, keyboard, cascade and the
/// serial ports (COM1 uses 4).
pub const FIRST_DEVICE_IRQ: u32 = 5;
/// The last IRQ line handed to devices (the IOAPIC has 24 pins).
pub const LAST_DEVICE_IRQ: u32 = 23;

/// Errors from [`DeviceAllocator`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocatorError {
    /// No MMIO space left for the request.
    #[error("no MMIO space left for {0:#x} bytes")]
    MmioExhausted(u64),
    /// A zero-sized MMIO request.
    #[error("zero-sized MMIO window requested")]
    ZeroSize,
    /// Every IRQ line is taken.
    #[error("no IRQ line left (lines {FIRST_DEVICE_IRQ}..={LAST_DEVICE_IRQ} are all taken)")]
    IrqExhausted,
}

/// A guest IRQ line (a GSI on the IOAPIC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Irq(pub u32);

/// An MMIO window handed to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioRange {
    /// Guest-physical start.
    pub start: GuestAddress,
    /// Length in bytes.
    pub len: u64,
}

/// A bump allocator for device MMIO windows (page-aligned, inside the 32-bit MMIO gap) and IRQ
/// lines.
#[derive(Debug, Clone)]
pub struct DeviceAllocator {
    next_mmio: u64,
    mmio_end: u64,
    next_irq: u32,
}

impl Default for DeviceAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceAllocator {
    /// An allocator over the standard device window and IRQ lines.
    pub fn new() -> Self {
        DeviceAllocator {
            next_mmio: DEVICE_MMIO_START,
            mmio_end: DEVICE_MMIO_END,
            next_irq: FIRST_DEVICE_IRQ,
        }
    }

    /// A page-aligned MMIO window of at least `len` bytes.
    pub fn allocate_mmio(&mut self, len: u64) -> Result<MmioRange, AllocatorError> {
        if len == 0 {
            return Err(AllocatorError::ZeroSize);
        }
        let rounded = len
            .checked_add(PAGE_SIZE - 1)
            .map(|l| l & !(PAGE_SIZE - 1))
            .ok_or(AllocatorError::MmioExhausted(len))?;
        let start = self.next_mmio;
        let end = start
            .checked_add(rounded)
            .filter(|e| *e <= self.mmio_end)
            .ok_or(AllocatorError::MmioExhausted(len))?;
        self.next_mmio = end;
        Ok(MmioRange {
            start: GuestAddress(start),
            len: rounded,
        })
    }

    /// The next free IRQ line.
    pub fn allocate_irq(&mut self) -> Result<Irq, AllocatorError> {
        if self.next_irq > LAST_DEVICE_IRQ {
            return Err(AllocatorError::IrqExhausted);
        }
        let irq = Irq(self.next_irq);
        self.next_irq += 1;
        Ok(irq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmio_windows_are_aligned_and_disjoint() {
        let mut a = DeviceAllocator::new();
        let w1 = a.allocate_mmio(0x200).unwrap();
        let w2 = a.allocate_mmio(0x1000).unwrap();
        assert_eq!(w1.start.0 % PAGE_SIZE, 0);
        assert_eq!(w1.len, PAGE_SIZE);
        assert_eq!(w2.start.0, w1.start.0 + PAGE_SIZE);
        assert_eq!(a.allocate_mmio(0), Err(AllocatorError::ZeroSize));
        assert!(matches!(
            a.allocate_mmio(DEVICE_MMIO_END),
            Err(AllocatorError::MmioExhausted(_))
        ));
        assert!(matches!(
            a.allocate_mmio(u64::MAX),
            Err(AllocatorError::MmioExhausted(_))
        ));
    }

    #[test]
    fn irqs_run_out() {
        let mut a = DeviceAllocator::new();
        let irqs: Vec<_> = std::iter::from_fn(|| a.allocate_irq().ok()).collect();
        assert_eq!(irqs.first(), Some(&Irq(FIRST_DEVICE_IRQ)));
        assert_eq!(irqs.len() as u32, LAST_DEVICE_IRQ - FIRST_DEVICE_IRQ + 1);
        assert_eq!(a.allocate_irq(), Err(AllocatorError::IrqExhausted));
    }
}
