//! Disks: an image (raw or qcow2, never probed) opened as a virtio-blk device.

use std::sync::{Arc, Mutex};

use virtkit_qcow2::{open_image, BackingMode, OpenOptions};
use virtkit_virtio::blk::{Block, BlockOptions};

use super::DeviceError;
use crate::config::DiskConfig;

/// An opened disk: its virtio-blk device and the backend under it (kept to flush it).
pub type OpenedDisk = (Arc<Mutex<Block>>, Arc<dyn virtkit_block::BlockBackend>);

/// Opens disk number `index` as a virtio-blk device (serial `virtkit<index>`).
pub fn open_disk(index: usize, d: &DiskConfig) -> Result<OpenedDisk, DeviceError> {
    let path = d.path.clone().unwrap_or_default();
    let err = |why: String| DeviceError::Disk {
        path: path.display().to_string(),
        why,
    };
    let opts = OpenOptions {
        read_only: d.readonly,
        direct: d.direct,
        backing: if d.backing_files {
            BackingMode::Follow
        } else {
            BackingMode::Deny
        },
        ..OpenOptions::default()
    };
    let backend = open_image(&path, d.format(), &opts).map_err(|e| err(e.to_string()))?;
    let blk = Block::new(
        backend.clone(),
        BlockOptions {
            read_only: d.readonly,
            serial: format!("virtkit{index}"),
        },
    )
    .map_err(|e| err(format!("creating the virtio-blk device: {e}")))?;
    Ok((Arc::new(Mutex::new(blk)), backend))
}
