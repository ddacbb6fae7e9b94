//! Metadata state of an open image: L1 table, L2 and refcount-block caches,
//! cluster allocation and the crash-safe write-back order.
//!
//! Ordering rules (what makes a kill -9 or power loss leave only leaks):
//! - a new cluster's refcount reaches the disk (and is synced) before any L2
//!   or L1 entry that points at it;
//! - an L2 table reaches the disk (and is synced) before the L1 entry that
//!   points at it;
//! - a cluster's refcount is lowered only after the table entries that no
//!   longer reference it are on disk (frees are deferred to the next flush),
//!   so a freed cluster is never reused while the disk still points at it.
//!
//! Layout: `encoding` (on-disk encodings, no state) <- `state` (the `Meta`
//! struct) <- `refcount` (refcount blocks and cluster allocation) <- `l2`
//! (L1/L2 tables) and `flush` (write-back) <- `snapshot` (the references of
//! whole L1 tables, COPIED flags, replacing the active L1). This file only
//! re-exports.

mod encoding;
mod flush;
mod l2;
mod refcount;
mod snapshot;
mod state;

pub(crate) use encoding::{decode_l2, rb_set, Mapping, COMPRESSED, COPIED, OFF_MASK, ZERO};
pub(crate) use state::Meta;
