//! Networking for virtkit VMs: tap devices ([`tap::Tap`]), Linux bridges
//! driven over rtnetlink ([`bridge`]), the [`MacAddr`] newtype, and the
//! virtio-net device model ([`net::Net`]) that moves frames between a guest's
//! virtqueues and a tap with `readv`/`writev` straight on guest memory
//! ([`GuestIoVec`]: guest buffers as iovecs, made only from vm-memory
//! slices, so the I/O needs no `unsafe` from callers).
//!
//! ```
//! use virtkit_net::MacAddr;
//!
//! let mac: MacAddr = "52:54:00:12:34:56".parse().unwrap();
//! assert_eq!(mac.to_string(), "52:54:00:12:34:56");
//! let random = MacAddr::random_local().unwrap();
//! assert!(random.is_local() && !random.is_multicast());
//! // Bad input is an error, not a panic.
//! assert!("52:54:00:12:34".parse::<MacAddr>().is_err());
//! assert!(virtkit_net::tap::validate_ifname("a-name-longer-than-15").is_err());
//! ```
//!
//! A VMM wires a device like this (needs CAP_NET_ADMIN, so not run here):
//!
//! ```no_run
//! use std::sync::{Arc, Mutex};
//! use virtkit_net::{bridge, net::Net, tap::{Tap, TapOptions}, MacAddr};
//!
//! let tap = Tap::open("vmtap0", &TapOptions::default())?;
//! bridge::attach("br0", tap.name())?;
//! let net = Arc::new(Mutex::new(Net::new(tap, MacAddr::random_local()?, None)?));
//! // Hand `net.clone()` to the virtio-mmio transport as `Arc<Mutex<dyn VirtioDevice>>`
//! // and to the event manager as a `MutEventSubscriber`.
//!
//! // Or all in one from a command-line spec:
//! let spec: virtkit_net::NetSpec = "tap=vmtap1,mac=52:54:00:12:34:56,bridge=br0".parse()?;
//! let net2 = Arc::new(Mutex::new(spec.build()?));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bridge;
pub mod bridge_port;
pub mod container;
pub mod features;
pub mod firewall;
mod iface;
pub mod iovec;
pub mod ipam;
pub mod mac;
pub mod net;
pub mod netns;
pub mod ports;
pub mod spec;
pub mod tap;
pub mod tap_share;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod veth;

pub use iovec::GuestIoVec;
pub use mac::{MacAddr, MacError};
pub use spec::{NetSpec, SpecError};
