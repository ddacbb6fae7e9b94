//! `--disk`: virtio-blk devices on the virtio-mmio transport, over raw or qcow2 images.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use vm_memory::GuestMemoryMmap;

use virtkit_qcow2::{open_image, BackingMode, ImageFormat, OpenOptions};
use virtkit_vcpu::Vm;
use virtkit_virtio::blk::{Block, BlockOptions};

use crate::devices::DeviceManager;
use crate::virtio::{attach_virtio, VirtioDevices};

/// One `--disk path=PATH[,format=raw|qcow2][,readonly=on][,backing=on]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The image file.
    pub path: PathBuf,
    /// Its format (raw unless said otherwise; never probed).
    pub format: ImageFormat,
    /// Refuse guest writes.
    pub read_only: bool,
    /// Follow the image's backing file (qcow2 only; off unless asked for).
    pub backing: bool,
}

fn on_off(key: &str, v: &str) -> Result<bool> {
    match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => bail!("--disk: {key}= takes on or off, not {v:?}"),
    }
}

/// Parses the value of one `--disk`.
pub fn parse_disk(value: &str) -> Result<DiskSpec> {
    let mut path = None;
    let mut format = ImageFormat::Raw;
    let mut read_only = false;
    let mut backing = false;
    for part in value.split(',') {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("--disk: expected key=value, not {part:?}"))?;
        match k {
            "path" if !v.is_empty() => path = Some(PathBuf::from(v)),
            "format" => {
                format = match v {
                    "raw" => ImageFormat::Raw,
                    "qcow2" => ImageFormat::Qcow2,
                    _ => bail!("--disk: format must be raw or qcow2, not {v:?}"),
                }
            }
            "readonly" => read_only = on_off(k, v)?,
            "backing" => backing = on_off(k, v)?,
            _ => bail!("--disk: unknown key {k:?} (path, format, readonly, backing)"),
        }
    }
    let Some(path) = path else {
        bail!("--disk: path=PATH is required")
    };
    if backing && format != ImageFormat::Qcow2 {
        bail!("--disk: backing=on needs format=qcow2");
    }
    Ok(DiskSpec {
        path,
        format,
        read_only,
        backing,
    })
}

/// Opens every disk and puts a virtio-blk device for it on the MMIO bus.
pub fn attach_disks(
    vm: &Vm,
    devices: &mut DeviceManager,
    mem: &GuestMemoryMmap,
    disks: &[DiskSpec],
    out: &mut VirtioDevices,
) -> Result<()> {
    for (i, d) in disks.iter().enumerate() {
        let opts = OpenOptions {
            read_only: d.read_only,
            backing: if d.backing {
                BackingMode::Follow
            } else {
                BackingMode::Deny
            },
            ..OpenOptions::default()
        };
        let backend = open_image(&d.path, d.format, &opts)
            .with_context(|| format!("--disk {}", d.path.display()))?;
        let blk = Arc::new(Mutex::new(
            Block::new(
                backend,
                BlockOptions {
                    read_only: d.read_only,
                    serial: format!("virtkit{i}"),
                },
            )
            .context("creating a virtio-blk device")?,
        ));
        attach_virtio(vm, devices, mem, blk, out)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_disk_options() {
        let d = parse_disk("path=/x.qcow2,format=qcow2,readonly=on,backing=on").unwrap();
        assert_eq!(
            d,
            DiskSpec {
                path: "/x.qcow2".into(),
                format: ImageFormat::Qcow2,
                read_only: true,
                backing: true
            }
        );
        let d = parse_disk("path=disk.img").unwrap();
        assert_eq!(d.format, ImageFormat::Raw);
        assert!(!d.read_only && !d.backing);
        for bad in [
            "",
            "format=raw",
            "path=a,format=vmdk",
            "path=a,readonly=maybe",
            "path=a,backing=on",
            "path=a,size=3",
            "path=a,junk",
        ] {
            assert!(parse_disk(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
