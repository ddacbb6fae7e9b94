//! Header round trip and rejected fields.

use super::build::build_header;
use super::fields::{CompressionType, Header};
use crate::error::Qcow2Error;

fn base() -> Vec<u8> {
    build_header(
        65536,
        3,
        1 << 30,
        16,
        2,
        3 * 65536,
        65536,
        1,
        4,
        false,
        CompressionType::Zlib,
        Some(("base.raw", "raw")),
    )
    .unwrap()
}

#[test]
fn round_trip() {
    let b = base();
    let h = Header::parse(&b, 4 * 65536).unwrap();
    assert_eq!(h.version, 3);
    assert_eq!(h.cluster_size(), 65536);
    assert_eq!(h.size, 1 << 30);
    assert_eq!(h.backing_file.as_deref(), Some("base.raw"));
    assert_eq!(h.backing_format.as_deref(), Some("raw"));
    assert_eq!(h.refcount_bits(), 16);
}

#[test]
fn rejects_bad_fields() {
    let mut b = base();
    b[20..24].copy_from_slice(&8u32.to_be_bytes());
    assert!(matches!(
        Header::parse(&b, 1 << 20),
        Err(Qcow2Error::InvalidClusterBits(8))
    ));
    let mut b = base();
    b[96..100].copy_from_slice(&7u32.to_be_bytes());
    assert!(matches!(
        Header::parse(&b, 1 << 20),
        Err(Qcow2Error::InvalidRefcountOrder(7))
    ));
    let mut b = base();
    b[72..80].copy_from_slice(&(1u64 << 40).to_be_bytes());
    assert!(matches!(
        Header::parse(&b, 1 << 20),
        Err(Qcow2Error::UnknownIncompatibleFeatures { .. })
    ));
    let mut b = base();
    b[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        Header::parse(&b, 1 << 20),
        Err(Qcow2Error::TableTooLarge { .. })
    ));
    let b = base();
    assert!(matches!(
        Header::parse(&b, 2 * 65536),
        Err(Qcow2Error::BadOffset { .. })
    ));
    let mut b = base();
    b[40..48].copy_from_slice(&65536u64.to_be_bytes());
    assert!(matches!(
        Header::parse(&b, 1 << 20),
        Err(Qcow2Error::Overlap(..))
    ));
    assert!(matches!(
        Header::parse(&[0u8; 100], 100),
        Err(Qcow2Error::NotQcow2)
    ));
}
