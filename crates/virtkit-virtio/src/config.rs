//! Feature negotiation and the device configuration space, kept once for
//! every device model: [`DeviceConfig`] holds the features a device offers,
//! those its driver acked, and its read-only configuration bytes, and
//! answers the [`VirtioDevice`](crate::VirtioDevice) calls about them.
//!
//! ```
//! use virtkit_virtio::config::DeviceConfig;
//! use virtkit_virtio::mmio::VIRTIO_F_VERSION_1;
//!
//! let mut cfg = DeviceConfig::new("virtio-demo", VIRTIO_F_VERSION_1 | 1 << 5, vec![1, 2, 3]);
//! // The driver cannot ack what the device does not offer.
//! cfg.ack(VIRTIO_F_VERSION_1 | 1 << 7);
//! assert_eq!(cfg.acked_features(), VIRTIO_F_VERSION_1);
//! assert!(cfg.is_acked(VIRTIO_F_VERSION_1) && !cfg.is_acked(1 << 5));
//! // Reads past the end of the space are zero; writes are ignored.
//! let mut d = [0xff; 4];
//! cfg.read(1, &mut d);
//! assert_eq!(d, [2, 3, 0, 0]);
//! cfg.write(0, &[9]);
//! assert_eq!(cfg.space(), &[1, 2, 3]);
//! cfg.reset();
//! assert_eq!(cfg.acked_features(), 0);
//! ```

use log::debug;

/// Read `data.len()` bytes at `offset` from a config space held in `space`;
/// bytes past its end read as zero.
pub fn read_config_bytes(space: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= space.len() {
        return;
    }
    let n = data.len().min(space.len() - start);
    data[..n].copy_from_slice(&space[start..start + n]);
}

/// The features a device offers, the subset its driver acked, and its
/// device-specific configuration space, which the driver may read but not
/// change (as for virtio-blk and virtio-net without their writable fields).
///
/// A device model keeps one and forwards
/// [`device_features`](crate::VirtioDevice::device_features),
/// [`set_acked_features`](crate::VirtioDevice::set_acked_features),
/// [`read_config`](crate::VirtioDevice::read_config) and
/// [`write_config`](crate::VirtioDevice::write_config) to it, and calls
/// [`DeviceConfig::reset`] when the driver resets the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    name: &'static str,
    offered: u64,
    acked: u64,
    space: Vec<u8>,
}

impl DeviceConfig {
    /// A device called `name` in logs (`"virtio-blk"`), offering
    /// `features`, with the configuration space `space`.
    pub fn new(name: &'static str, features: u64, space: Vec<u8>) -> Self {
        DeviceConfig {
            name,
            offered: features,
            acked: 0,
            space,
        }
    }

    /// The feature bits offered.
    pub fn device_features(&self) -> u64 {
        self.offered
    }

    /// The feature bits the driver acked (0 before negotiation and after a
    /// reset).
    pub fn acked_features(&self) -> u64 {
        self.acked
    }

    /// Whether the driver acked every bit of `mask`.
    pub fn is_acked(&self, mask: u64) -> bool {
        self.acked & mask == mask
    }

    /// Record the features the driver accepted, keeping only offered ones.
    pub fn ack(&mut self, features: u64) {
        self.acked = features & self.offered;
    }

    /// Forget the acked features (the driver reset the device).
    pub fn reset(&mut self) {
        self.acked = 0;
    }

    /// The configuration space.
    pub fn space(&self) -> &[u8] {
        &self.space
    }

    /// Read the configuration space at `offset`; bytes past its end read as
    /// zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.space, offset, data);
    }

    /// A driver write to the configuration space: ignored, since the space
    /// is read-only.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        debug!(
            "{}: guest wrote {} bytes to read-only config at {offset:#x}, ignored",
            self.name,
            data.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_clip_and_zero_fill() {
        let space = [1u8, 2, 3, 4];
        let mut d = [0xffu8; 3];
        read_config_bytes(&space, 2, &mut d);
        assert_eq!(d, [3, 4, 0]);
        let mut d = [0xffu8; 2];
        read_config_bytes(&space, 4, &mut d);
        assert_eq!(d, [0, 0]);
        read_config_bytes(&space, u64::MAX, &mut d);
        assert_eq!(d, [0, 0]);
    }

    #[test]
    fn ack_masks_and_reset_clears() {
        let mut c = DeviceConfig::new("t", 0b1011, vec![7; 8]);
        assert_eq!(c.device_features(), 0b1011);
        c.ack(0b1111);
        assert_eq!(c.acked_features(), 0b1011);
        assert!(c.is_acked(0b11));
        assert!(!c.is_acked(0b100));
        c.write(0, &[0; 8]);
        assert_eq!(c.space(), &[7; 8]);
        c.reset();
        assert_eq!(c.acked_features(), 0);
        assert!(!c.is_acked(1));
    }
}
