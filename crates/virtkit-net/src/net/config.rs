//! What the device offers (virtio 1.2, 5.1.3) and its configuration space
//! (5.1.4): MAC, link status, one queue pair and the MTU. Negotiation
//! itself lives in [`DeviceConfig`], shared with the other device models.

use virtkit_virtio::DeviceConfig;

use super::{NetError, CONFIG_LEN, DEFAULT_MTU, MIN_MTU};
use crate::features::*;
use crate::tap::VNET_HDR_LEN;
use crate::MacAddr;

/// Ethernet header plus one VLAN tag: what a frame adds to the MTU.
const ETH_OVERHEAD: u16 = 18;

/// Check that `mtu` is one the device can report.
pub(super) fn validate_mtu(mtu: Option<u16>) -> Result<(), NetError> {
    match mtu {
        Some(m) if !(MIN_MTU..=u16::MAX - ETH_OVERHEAD).contains(&m) => {
            Err(NetError::InvalidMtu(m))
        }
        _ => Ok(()),
    }
}

/// The feature bits a device with `mtu` (when set, `VIRTIO_NET_F_MTU`)
/// offers.
pub(super) fn offered_features(mtu: Option<u16>) -> u64 {
    let mut features = bit(VIRTIO_F_VERSION_1)
        | bit(VIRTIO_RING_F_EVENT_IDX)
        | bit(VIRTIO_RING_F_INDIRECT_DESC)
        | bit(VIRTIO_NET_F_MAC)
        | bit(VIRTIO_NET_F_STATUS)
        | bit(VIRTIO_NET_F_CSUM)
        | bit(VIRTIO_NET_F_GUEST_CSUM)
        | bit(VIRTIO_NET_F_GUEST_TSO4)
        | bit(VIRTIO_NET_F_GUEST_TSO6)
        | bit(VIRTIO_NET_F_HOST_TSO4)
        | bit(VIRTIO_NET_F_HOST_TSO6)
        | bit(VIRTIO_NET_F_MRG_RXBUF);
    if mtu.is_some() {
        features |= bit(VIRTIO_NET_F_MTU);
    }
    features
}

/// The configuration space: `mac`, link up, one queue pair, the MTU.
pub(super) fn config_space(mac: MacAddr, mtu: Option<u16>) -> Vec<u8> {
    let mut config = vec![0u8; CONFIG_LEN];
    config[..6].copy_from_slice(&mac.bytes());
    config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
    config[8..10].copy_from_slice(&1u16.to_le_bytes());
    config[10..12].copy_from_slice(&mtu.unwrap_or(DEFAULT_MTU).to_le_bytes());
    config
}

/// Feature negotiation and config space of a device with guest MAC `mac`
/// and `mtu`.
pub(super) fn device_config(mac: MacAddr, mtu: Option<u16>) -> Result<DeviceConfig, NetError> {
    validate_mtu(mtu)?;
    Ok(DeviceConfig::new(
        "virtio-net",
        offered_features(mtu),
        config_space(mac, mtu),
    ))
}

/// The buffer space one received frame may need once `config`'s features
/// are acked: a whole segmentation-offload frame when the guest takes them,
/// else one MTU-sized frame.
pub(super) fn rx_frame_room(config: &DeviceConfig, mtu: Option<u16>) -> u64 {
    let gso = config.is_acked(bit(VIRTIO_NET_F_GUEST_TSO4))
        || config.is_acked(bit(VIRTIO_NET_F_GUEST_TSO6))
        || config.is_acked(bit(VIRTIO_NET_F_GUEST_UFO));
    if gso {
        (VNET_HDR_LEN + super::MAX_GSO_FRAME) as u64
    } else {
        (VNET_HDR_LEN + usize::from(ETH_OVERHEAD) + usize::from(mtu.unwrap_or(DEFAULT_MTU))) as u64
    }
}
