//! The VMM as a library: describe a VM with a [`VmConfig`], build it with [`Vmm`], run it,
//! and control it from other threads with a [`VmController`].
//!
//! * [`config`]: [`VmConfig`], one serde type for the command line, the control API and
//!   snapshots; its JSON is Cloud Hypervisor's.
//! * [`devices`]: the [`DeviceManager`]: COM1, the i8042 reset line, the ACPI sleep and
//!   reset ports, and virtio-mmio slots (window, GSI, irqfd, ioeventfds, DSDT entry), one
//!   call per virtio device.
//! * [`Vmm`]: memory, VM, devices, boot state and vCPUs from a config, on any
//!   [`virtkit_vcpu::Hypervisor`] (KVM by default; the fake one in tests), then the event
//!   loop until the guest powers off, reboots or is shut down.
//! * [`control`]: pause, resume, shutdown, power button and `info` while the VM runs.
//! * [`api`]: Cloud Hypervisor's REST API on a Unix socket over all of the above
//!   ([`api::serve`]).
//! * [`seccomp`]: a filter per thread kind (event loop, vCPU, API), as data, with `ioctl`
//!   requests checked ([`VmmBuilder::seccomp`]).
//!
//! ```no_run
//! use virtkit_vmm::{DiskConfig, ImageType, Vmm, VmConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = VmConfig::with_kernel("/boot/vmlinux");
//! config.payload.initramfs = Some("initramfs.cpio".into());
//! config.memory.size = 256 << 20;
//! config.disks = Some(vec![DiskConfig {
//!     path: Some("disk.qcow2".into()),
//!     image_type: ImageType::Qcow2,
//!     ..DiskConfig::default()
//! }]);
//! let vmm = Vmm::try_from(config)?;
//! let control = vmm.controller();
//! std::thread::spawn(move || {
//!     std::thread::sleep(std::time::Duration::from_secs(60));
//!     let _ = control.shutdown();
//! });
//! println!("{}", vmm.run()?);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod api;
mod builder;
pub mod config;
pub mod control;
pub mod devices;
mod event_loop;
pub mod migration;
pub mod seccomp;
pub mod snapshot;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
mod vmm;

pub use builder::VmmBuilder;
pub use config::{
    ConfigError, ConsoleConfig, ConsoleMode, CpusConfig, DiskConfig, ImageType, MemoryConfig,
    NetConfig, PayloadConfig, VmConfig, DEFAULT_CMDLINE,
};
pub use control::{ControlError, VmController, VmInfo, VmState};
pub use devices::{DeviceError, DeviceManager};
pub use vmm::{VmEnd, Vmm, VmmError};
