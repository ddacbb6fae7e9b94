//! [`VmConfig`]: one serde type for the command line, the control API and (later)
//! snapshots. Its JSON is Cloud Hypervisor's `VmConfig` (the subset virtkit implements), so a
//! `vm.create` body written for Cloud Hypervisor works unchanged; fields virtkit does not
//! know are ignored, and virtkit's own additions (`image_type`, `backing_files`, `bridge`,
//! `huge_pages`) are optional.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use virtkit_memory::HugePages;
use virtkit_net::{MacAddr, NetSpec};
use virtkit_qcow2::ImageFormat;

/// The default kernel command line: serial console, `quiet` (every console byte is a vCPU
/// exit, so boot messages cost real time), reboot and panic through the i8042 reset, no PCI
/// probing, no i8042 AUX/MUX probing (the ACPI tables list no i8042, so Linux skips it).
/// ACPI stays on: poweroff needs it.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 quiet reboot=k panic=-1 pci=off \
     8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.dumbkbd";

/// The most guest RAM a config may ask for (1 TiB): larger is refused as absurd.
pub const MAX_MEMORY: u64 = 1 << 40;

/// Errors in a [`VmConfig`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// No kernel.
    #[error("a kernel is required (payload.kernel)")]
    NoKernel,
    /// A file the VM needs does not exist.
    #[error("cannot open {what} {path}: it does not exist")]
    Missing {
        /// What it is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A vCPU count outside 1..=max.
    #[error("{got} vCPUs: the count must be at least 1 and not above the maximum of {max}")]
    Cpus {
        /// Asked for.
        got: u32,
        /// The most allowed.
        max: u32,
    },
    /// A memory size that is zero, unaligned or absurd.
    #[error("memory size {0} bytes is invalid (a multiple of 1 MiB, from 1 MiB to 1 TiB)")]
    Memory(u64),
    /// A bad MAC address.
    #[error("net {tap}: {why}")]
    Net {
        /// The tap.
        tap: String,
        /// What is wrong.
        why: String,
    },
    /// `backing_files` on a raw image.
    #[error("disk {0}: backing_files needs image_type Qcow2")]
    BackingOnRaw(PathBuf),
    /// A disk with no path.
    #[error("a disk needs a path")]
    DiskPath,
    /// A serial `File` mode without a file.
    #[error("serial mode File needs a file")]
    SerialFile,
}

/// vCPUs (Cloud Hypervisor's `CpusConfig`; hot-plug is not supported, so only
/// `boot_vcpus` matters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpusConfig {
    /// vCPUs at boot.
    pub boot_vcpus: u32,
    /// The most vCPUs (must be at least `boot_vcpus`).
    pub max_vcpus: u32,
}

impl Default for CpusConfig {
    fn default() -> Self {
        CpusConfig {
            boot_vcpus: 1,
            max_vcpus: 1,
        }
    }
}

fn yes() -> bool {
    true
}

/// Guest RAM (Cloud Hypervisor's `MemoryConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryConfig {
    /// Bytes.
    pub size: u64,
    /// Back RAM with hugetlbfs pages.
    #[serde(default)]
    pub hugepages: bool,
    /// Ask for transparent huge pages (when not `hugepages`).
    #[serde(default = "yes")]
    pub thp: bool,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            size: 128 << 20,
            hugepages: false,
            thp: true,
        }
    }
}

impl MemoryConfig {
    /// The backing these flags select.
    pub fn huge_pages(&self) -> HugePages {
        if self.hugepages {
            HugePages::Hugetlbfs
        } else if self.thp {
            HugePages::Transparent
        } else {
            HugePages::None
        }
    }
}

/// What to boot (Cloud Hypervisor's `PayloadConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadConfig {
    /// The kernel (vmlinux ELF or bzImage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// The kernel command line ([`DEFAULT_CMDLINE`] when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// An initramfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
}

/// Disk image formats. Never probed: raw unless said otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageType {
    /// A plain image.
    #[default]
    Raw,
    /// qcow2.
    Qcow2,
}

/// One virtio-blk disk (Cloud Hypervisor's `DiskConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    /// The image file.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Refuse guest writes.
    #[serde(default)]
    pub readonly: bool,
    /// Open with O_DIRECT.
    #[serde(default)]
    pub direct: bool,
    /// The image format.
    #[serde(default)]
    pub image_type: ImageType,
    /// Follow a qcow2 image's backing file (off unless asked for).
    #[serde(default)]
    pub backing_files: bool,
    /// A name for the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl DiskConfig {
    /// The qcow2 crate's format for [`DiskConfig::image_type`].
    pub fn format(&self) -> ImageFormat {
        match self.image_type {
            ImageType::Raw => ImageFormat::Raw,
            ImageType::Qcow2 => ImageFormat::Qcow2,
        }
    }
}

/// One virtio-net interface over a tap (Cloud Hypervisor's `NetConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// The tap (created when missing).
    #[serde(default)]
    pub tap: Option<String>,
    /// The guest MAC ("52:54:00:12:34:56"); random locally administered when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// MTU for the tap and the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// An existing bridge to attach the tap to (virtkit's addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// A name for the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl NetConfig {
    /// The virtkit-net spec this config describes (validated).
    pub fn spec(&self, index: usize) -> Result<NetSpec, ConfigError> {
        let tap = self.tap.clone().unwrap_or_else(|| format!("vmtap{index}"));
        let mac = match &self.mac {
            Some(m) => Some(m.parse::<MacAddr>().map_err(|e| ConfigError::Net {
                tap: tap.clone(),
                why: e.to_string(),
            })?),
            None => None,
        };
        Ok(NetSpec {
            tap,
            mac,
            bridge: self.bridge.clone(),
            mtu: self.mtu,
        })
    }
}

/// Where a console goes (Cloud Hypervisor's `ConsoleOutputMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleMode {
    /// No device.
    Off,
    /// The device exists; output is dropped.
    Null,
    /// The VMM's standard input and output.
    #[default]
    Tty,
    /// A file (no input).
    File,
}

/// A console (Cloud Hypervisor's `ConsoleConfig`); virtkit has the serial port (COM1) only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleConfig {
    /// Where output goes.
    pub mode: ConsoleMode,
    /// The file for [`ConsoleMode::File`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// Everything that describes a VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    /// vCPUs.
    #[serde(default)]
    pub cpus: CpusConfig,
    /// RAM.
    #[serde(default)]
    pub memory: MemoryConfig,
    /// Kernel, initramfs and command line.
    #[serde(default)]
    pub payload: PayloadConfig,
    /// virtio-blk disks, in guest order (`/dev/vda`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<DiskConfig>>,
    /// virtio-net interfaces, in guest order (`eth0`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<Vec<NetConfig>>,
    /// COM1.
    #[serde(default)]
    pub serial: ConsoleConfig,
}

impl VmConfig {
    /// A VM booting `kernel` with the defaults (1 vCPU, 128 MiB, serial on the terminal).
    pub fn with_kernel(kernel: impl Into<PathBuf>) -> VmConfig {
        VmConfig {
            payload: PayloadConfig {
                kernel: Some(kernel.into()),
                ..PayloadConfig::default()
            },
            ..VmConfig::default()
        }
    }

    /// The command line the guest gets before device additions.
    pub fn cmdline(&self) -> &str {
        self.payload.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE)
    }

    /// The disks (empty when none).
    pub fn disks(&self) -> &[DiskConfig] {
        self.disks.as_deref().unwrap_or_default()
    }

    /// The network interfaces (empty when none).
    pub fn nets(&self) -> &[NetConfig] {
        self.net.as_deref().unwrap_or_default()
    }

    /// The host files a VM of this config opens, with whether it only reads them: the
    /// kernel and initramfs, each disk, the serial output file, `/dev/kvm` and, with a
    /// network, `/dev/net/tun` (what a jail must hold; see virtkit-jail). A qcow2 disk's
    /// backing files are not listed (`backing_files` reads them by name).
    pub fn host_files(&self) -> Vec<(PathBuf, bool)> {
        let mut v = Vec::new();
        v.extend(self.payload.kernel.iter().map(|k| (k.clone(), true)));
        v.extend(self.payload.initramfs.iter().map(|i| (i.clone(), true)));
        for d in self.disks() {
            v.extend(d.path.iter().map(|p| (p.clone(), d.readonly)));
        }
        if self.serial.mode == ConsoleMode::File {
            v.extend(self.serial.file.iter().map(|f| (f.clone(), false)));
        }
        v.push((PathBuf::from("/dev/kvm"), false));
        if !self.nets().is_empty() {
            v.push((PathBuf::from("/dev/net/tun"), false));
        }
        v
    }

    /// Checks what can be checked without building the VM: a kernel that exists, sizes in
    /// range, well-formed devices. `max_cpus` is the hypervisor's limit.
    pub fn validate(&self, max_cpus: u32) -> Result<(), ConfigError> {
        let kernel = self.payload.kernel.as_ref().ok_or(ConfigError::NoKernel)?;
        exists("kernel", kernel)?;
        if let Some(i) = &self.payload.initramfs {
            exists("initramfs", i)?;
        }
        let c = &self.cpus;
        if c.boot_vcpus == 0 || c.boot_vcpus > max_cpus || c.max_vcpus < c.boot_vcpus {
            return Err(ConfigError::Cpus {
                got: c.boot_vcpus,
                max: max_cpus,
            });
        }
        let size = self.memory.size;
        if size == 0 || size % (1 << 20) != 0 || size > MAX_MEMORY {
            return Err(ConfigError::Memory(size));
        }
        for d in self.disks() {
            let path = d.path.as_ref().ok_or(ConfigError::DiskPath)?;
            exists("disk", path)?;
            if d.backing_files && d.image_type != ImageType::Qcow2 {
                return Err(ConfigError::BackingOnRaw(path.clone()));
            }
        }
        for (i, n) in self.nets().iter().enumerate() {
            n.spec(i)?;
        }
        if self.serial.mode == ConsoleMode::File && self.serial.file.is_none() {
            return Err(ConfigError::SerialFile);
        }
        Ok(())
    }
}

fn exists(what: &'static str, path: &std::path::Path) -> Result<(), ConfigError> {
    if path.exists() {
        Ok(())
    } else {
        Err(ConfigError::Missing {
            what,
            path: path.to_path_buf(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cloud_hypervisor_json_parses() {
        // A vm.create body as ch-remote sends it, with fields virtkit ignores.
        let j = r#"{"cpus":{"boot_vcpus":2,"max_vcpus":2,"kvm_hyperv":false},
            "memory":{"size":268435456,"shared":false,"hugepages":false},
            "payload":{"kernel":"/k","cmdline":"console=ttyS0","initramfs":"/i"},
            "disks":[{"path":"/d.qcow2","readonly":true,"image_type":"Qcow2","num_queues":1}],
            "net":[{"tap":"tap0","mac":"52:54:00:12:34:56","num_queues":2}],
            "serial":{"mode":"File","file":"/tmp/s"},"console":{"mode":"Off"},
            "rng":{"src":"/dev/urandom"}}"#;
        let c: VmConfig = serde_json::from_str(j).unwrap();
        assert_eq!(c.cpus.boot_vcpus, 2);
        assert_eq!(c.memory.size, 256 << 20);
        assert_eq!(c.memory.huge_pages(), HugePages::Transparent);
        assert_eq!(c.payload.kernel, Some("/k".into()));
        assert_eq!(c.cmdline(), "console=ttyS0");
        assert_eq!(c.disks()[0].format(), ImageFormat::Qcow2);
        assert!(c.disks()[0].readonly);
        assert_eq!(c.nets()[0].spec(0).unwrap().tap, "tap0");
        assert_eq!(c.serial.mode, ConsoleMode::File);
        let back: VmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn validation_gives_clear_errors() {
        let k = tempfile::NamedTempFile::new().unwrap();
        let mut c = VmConfig::with_kernel(k.path());
        assert_eq!(c.validate(4), Ok(()));
        assert_eq!(c.cmdline(), DEFAULT_CMDLINE);
        assert_eq!(VmConfig::default().validate(4), Err(ConfigError::NoKernel));
        let missing = VmConfig::with_kernel("/nonexistent/vmlinux").validate(4);
        assert!(matches!(
            missing,
            Err(ConfigError::Missing { what: "kernel", .. })
        ));
        c.cpus.boot_vcpus = 5;
        c.cpus.max_vcpus = 5;
        assert!(matches!(
            c.validate(4),
            Err(ConfigError::Cpus { got: 5, max: 4 })
        ));
        c.cpus = CpusConfig::default();
        for bad in [0, 1 << 19, u64::MAX, MAX_MEMORY + (1 << 20)] {
            c.memory.size = bad;
            assert_eq!(c.validate(4), Err(ConfigError::Memory(bad)), "{bad}");
        }
        c.memory = MemoryConfig::default();
        c.disks = Some(vec![DiskConfig {
            path: Some(k.path().into()),
            backing_files: true,
            ..DiskConfig::default()
        }]);
        assert!(matches!(c.validate(4), Err(ConfigError::BackingOnRaw(_))));
        c.disks = None;
        c.net = Some(vec![NetConfig {
            mac: Some("52:54:00".into()),
            ..NetConfig::default()
        }]);
        assert!(matches!(c.validate(4), Err(ConfigError::Net { .. })));
        c.net = None;
        c.serial.mode = ConsoleMode::File;
        assert_eq!(c.validate(4), Err(ConfigError::SerialFile));
        assert!(serde_json::from_str::<VmConfig>(r#"{"memory":{"size":-1}}"#).is_err());
    }
}
