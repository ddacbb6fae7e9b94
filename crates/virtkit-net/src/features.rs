//! virtio-net feature bit numbers (virtio 1.2, 5.1.3) and the virtio
//! transport bits the device offers.

/// Device handles packets with partial checksum (guest → host).
pub const VIRTIO_NET_F_CSUM: u32 = 0;
/// Driver handles packets with partial checksum (host → guest).
pub const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
/// Device reports its maximum MTU in the config space.
pub const VIRTIO_NET_F_MTU: u32 = 3;
/// Device has a MAC address in the config space.
pub const VIRTIO_NET_F_MAC: u32 = 5;
/// Driver can receive TSOv4.
pub const VIRTIO_NET_F_GUEST_TSO4: u32 = 7;
/// Driver can receive TSOv6.
pub const VIRTIO_NET_F_GUEST_TSO6: u32 = 8;
/// Driver can receive TSO with ECN.
pub const VIRTIO_NET_F_GUEST_ECN: u32 = 9;
/// Driver can receive UFO.
pub const VIRTIO_NET_F_GUEST_UFO: u32 = 10;
/// Device can receive TSOv4.
pub const VIRTIO_NET_F_HOST_TSO4: u32 = 11;
/// Device can receive TSOv6.
pub const VIRTIO_NET_F_HOST_TSO6: u32 = 12;
/// Device can receive TSO with ECN.
pub const VIRTIO_NET_F_HOST_ECN: u32 = 13;
/// Device can receive UFO.
pub const VIRTIO_NET_F_HOST_UFO: u32 = 14;
/// Driver can merge receive buffers (`num_buffers`).
pub const VIRTIO_NET_F_MRG_RXBUF: u32 = 15;
/// Config space has a link status field.
pub const VIRTIO_NET_F_STATUS: u32 = 16;
/// Indirect descriptor tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// `used_event`/`avail_event` notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
/// virtio 1.0 or later.
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// Link status bit of the config `status` field.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// `flags` bit of the net header: the checksum at `csum_start +
/// csum_offset` must be completed.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `flags` bit of the net header: the checksum is already validated.
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
/// `gso_type`: no segmentation.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4.
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP.
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6.
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;

/// `1 << bit` as a feature mask.
pub const fn bit(b: u32) -> u64 {
    1u64 << b
}
