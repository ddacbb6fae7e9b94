//! Booting x86_64 Linux guests.
//!
//! [`LinuxBoot::load`] loads a kernel (ELF vmlinux, entered through PVH when the ELF has the
//! PVH note, else through its 64-bit entry; or a bzImage) and an optional initrd into guest RAM
//! built by `virtkit-memory`, then writes everything the kernel expects to find: the command
//! line, the zero page with the e820 map (or PVH `hvm_start_info`), an MP table, minimal ACPI
//! tables (hardware-reduced FADT with sleep and reset ports, DSDT with `_S5`, MADT), a GDT, an
//! IDT and identity page tables. It returns the boot vCPU's [`CpuEntry`], which `virtkit-vcpu`
//! turns into registers.
//!
//! The pieces are public for VMMs that lay out memory differently ([`cpu`], [`kernel`],
//! [`params`], [`mptable`], [`acpi`], [`layout`]).
//!
//! ```
//! use virtkit_boot::{cpu::EntryMode, cpu::setup_entry, layout};
//! use virtkit_memory::GuestMemoryBuilder;
//!
//! // The 64-bit entry state for a hand-made guest at 0x10_0000.
//! let ram = GuestMemoryBuilder::from_mib(4).build().unwrap();
//! let entry = setup_entry(ram.memory(), EntryMode::Long64, 0x10_0000, layout::ZERO_PAGE_START)
//!     .unwrap();
//! assert_eq!(entry.cr3, layout::PML4_START);
//! assert_eq!(entry.rip, 0x10_0000);
//! ```
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod acpi;
pub mod cpu;
pub mod kernel;
pub mod layout;
pub mod mptable;
pub mod params;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;

use std::fs::File;
use std::path::Path;

use virtkit_memory::GuestRam;
use vm_memory::{Bytes, GuestAddress};

pub use cpu::{CpuEntry, EntryMode};
pub use kernel::{KernelKind, LoadedKernel};

/// Errors from booting Linux.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be opened.
    #[error("cannot open kernel {path}: {error}")]
    OpenKernel {
        /// The path.
        path: String,
        /// The error.
        error: std::io::Error,
    },
    /// The initrd file could not be opened.
    #[error("cannot open initrd {path}: {error}")]
    OpenInitrd {
        /// The path.
        path: String,
        /// The error.
        error: std::io::Error,
    },
    /// Loading the kernel or initrd failed.
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    /// The command line is too long or has a NUL byte.
    #[error("kernel command line is invalid: {0}")]
    Cmdline(&'static str),
    /// Writing the boot parameters failed.
    #[error(transparent)]
    Params(#[from] params::ParamsError),
    /// Writing the MP table failed.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// Writing the ACPI tables failed.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// Writing GDT/IDT/page tables failed.
    #[error(transparent)]
    Cpu(#[from] cpu::CpuSetupError),
}

/// What to boot.
#[derive(Debug, Clone, Default)]
pub struct LinuxBoot {
    /// The kernel image (ELF vmlinux or bzImage).
    pub kernel: std::path::PathBuf,
    /// An optional initrd/initramfs.
    pub initrd: Option<std::path::PathBuf>,
    /// The kernel command line.
    pub cmdline: String,
    /// Number of vCPUs (for the MP table and MADT).
    pub cpus: u8,
    /// Whether to write ACPI tables (needed for `poweroff`).
    pub acpi: bool,
    /// Devices to describe in the DSDT (COM1 needs to be there for its interrupt to work).
    pub acpi_devices: Vec<acpi::AcpiDevice>,
}

/// The result of [`LinuxBoot::load`].
#[derive(Debug, Clone)]
pub struct BootSetup {
    /// The boot vCPU's entry state.
    pub entry: CpuEntry,
    /// The loaded kernel.
    pub kernel: LoadedKernel,
    /// Where the initrd went (address, size).
    pub initrd: Option<(GuestAddress, u64)>,
    /// The RSDP's address, when ACPI tables were written.
    pub rsdp: Option<GuestAddress>,
}

/// Writes the command line (with its NUL) at [`layout::CMDLINE_START`].
pub fn write_cmdline(ram: &GuestRam, cmdline: &str) -> Result<usize, BootError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::Cmdline("contains a NUL byte"));
    }
    if cmdline.len() + 1 > layout::CMDLINE_MAX_SIZE {
        return Err(BootError::Cmdline("longer than 64 KiB"));
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    ram.memory()
        .write_slice(&bytes, GuestAddress(layout::CMDLINE_START))
        .map_err(|_| BootError::Cmdline("does not fit in guest memory"))?;
    Ok(bytes.len())
}

fn open(path: &Path) -> std::io::Result<File> {
    let f = File::open(path)?;
    if f.metadata()?.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "is a directory",
        ));
    }
    Ok(f)
}

impl LinuxBoot {
    /// Loads everything into `ram` and returns the boot vCPU's entry state.
    pub fn load(&self, ram: &GuestRam) -> Result<BootSetup, BootError> {
        let mem = ram.memory();
        let mut kf = open(&self.kernel).map_err(|error| BootError::OpenKernel {
            path: self.kernel.display().to_string(),
            error,
        })?;
        let e820 = params::e820_map(ram.regions())?;
        let kernel = kernel::load_kernel(mem, &mut kf)?;
        let low_end = ram.regions().first().map(|r| r.end().0).unwrap_or(0);
        let initrd = match &self.initrd {
            Some(p) => {
                let mut f = open(p).map_err(|error| BootError::OpenInitrd {
                    path: p.display().to_string(),
                    error,
                })?;
                Some(kernel::load_initrd(mem, &kernel, low_end, &mut f)?)
            }
            None => None,
        };
        let cmdline_size = write_cmdline(ram, &self.cmdline)?;
        mptable::write(mem, self.cpus)?;
        let rsdp = if self.acpi {
            Some(acpi::write(mem, self.cpus, &self.acpi_devices)?)
        } else {
            None
        };
        let entry = match kernel.kind {
            KernelKind::ElfPvh => {
                params::write_pvh_start_info(mem, &e820, initrd, rsdp)?;
                cpu::setup_entry(
                    mem,
                    EntryMode::Protected32,
                    kernel.entry.0,
                    layout::PVH_INFO_START,
                )?
            }
            KernelKind::Elf64 | KernelKind::BzImage => {
                params::write_zero_page(mem, &kernel, &e820, cmdline_size, initrd, rsdp)?;
                cpu::setup_entry(
                    mem,
                    EntryMode::Long64,
                    kernel.entry.0,
                    layout::ZERO_PAGE_START,
                )?
            }
        };
        log::debug!(
            "kernel {:?} entry {:#x}, initrd {:?}",
            kernel.kind,
            entry.rip,
            initrd
        );
        Ok(BootSetup {
            entry,
            kernel,
            initrd,
            rsdp,
        })
    }
}
