//! Guest memory for x86_64 virtual machines.
//!
//! * [`layout`]: where guest RAM goes in the guest-physical address space: below the 32-bit
//!   MMIO gap (`0xC000_0000..4 GiB`), and the rest above 4 GiB.
//! * [`GuestMemoryBuilder`]: anonymous guest RAM from a size, with optional transparent or
//!   hugetlbfs huge pages and a dirty-page tracking flag that VMMs pass to KVM.
//! * [`DeviceAllocator`]: MMIO windows and IRQ lines (GSIs) for devices.
//! * [`dirty`]: turning KVM dirty-log bitmaps into guest page addresses.
//!
//! ```
//! use virtkit_memory::{DeviceAllocator, GuestMemoryBuilder, GuestAddress, MIB};
//! use vm_memory::{Bytes, GuestMemoryBackend};
//!
//! let mem = GuestMemoryBuilder::new(64 * MIB).build().unwrap();
//! assert_eq!(mem.size(), 64 * MIB);
//! mem.memory().write_obj(0xdead_beef_u32, GuestAddress(0x1000)).unwrap();
//! assert_eq!(mem.memory().read_obj::<u32>(GuestAddress(0x1000)).unwrap(), 0xdead_beef);
//!
//! let mut devices = DeviceAllocator::new();
//! let window = devices.allocate_mmio(0x1000).unwrap();
//! let irq = devices.allocate_irq().unwrap();
//! assert_eq!(window.start, GuestAddress(0xd000_0000));
//! assert_eq!(irq.0, 5);
//! ```
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod align;
pub mod allocator;
pub mod dirty;
pub mod layout;
mod memory;
mod save;

pub use allocator::{AllocatorError, DeviceAllocator, Irq, MmioRange};
pub use layout::{LayoutError, RamRegion};
pub use memory::{host_ram_bytes, GuestMemoryBuilder, GuestRam, HugePages, MemoryError};
pub use save::SaveStats;
pub use vm_memory::{GuestAddress, GuestMemoryMmap};

/// One KiB.
pub const KIB: u64 = 1 << 10;
/// One MiB.
pub const MIB: u64 = 1 << 20;
/// One GiB.
pub const GIB: u64 = 1 << 30;
/// The guest page size.
pub const PAGE_SIZE: u64 = 4 * KIB;
