//! Linux bridges and link settings over rtnetlink (`NETLINK_ROUTE`), built
//! with the rust-netlink crates (`netlink-packet-route` messages over a
//! blocking `netlink-sys` socket): no `ip` binary, no async runtime.
//!
//! Everything acts in the network namespace of the calling thread.

use std::io;
use std::net::IpAddr;

use log::debug;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::tap::validate_ifname;

/// Errors from bridge and link operations.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// An interface name that Linux would refuse.
    #[error(transparent)]
    InvalidName(#[from] crate::tap::TapError),
    /// The bridge does not exist.
    #[error("bridge {0:?} does not exist (create it first, e.g. `ip link add {0} type bridge`)")]
    BridgeNotFound(String),
    /// The interface does not exist.
    #[error("network interface {0:?} does not exist")]
    InterfaceNotFound(String),
    /// The interface exists but is not a bridge.
    #[error("interface {0:?} exists but is not a bridge")]
    NotABridge(String),
    /// An interface or address with that name already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The caller lacks CAP_NET_ADMIN.
    #[error("permission denied for {op} on {name:?}: CAP_NET_ADMIN is needed")]
    PermissionDenied {
        /// The operation.
        op: &'static str,
        /// The interface.
        name: String,
    },
    /// The prefix length does not fit the address family.
    #[error("invalid prefix length /{prefix} for {addr}")]
    InvalidPrefix {
        /// The address.
        addr: IpAddr,
        /// The prefix length.
        prefix: u8,
    },
    /// The kernel refused the request or the socket failed.
    #[error("netlink {op} on {name:?}: {source}")]
    Netlink {
        /// The operation.
        op: &'static str,
        /// The interface.
        name: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// A bridge ioctl failed ([`attach`] uses `SIOCBRADDIF`).
    #[error("{op} on {name:?}: {source}")]
    Ioctl {
        /// The operation.
        op: &'static str,
        /// The interface.
        name: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The kernel's reply could not be parsed.
    #[error("netlink {op}: malformed reply: {detail}")]
    Protocol {
        /// The operation.
        op: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// What [`RtNetlink::link`] reports about an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfoSummary {
    /// The interface index.
    pub index: u32,
    /// The kind (`bridge`, `tun`, `veth`...) when the kernel reports one.
    pub kind: Option<String>,
    /// The index of the bridge the interface is attached to.
    pub controller: Option<u32>,
    /// Whether the interface is administratively up.
    pub up: bool,
    /// The MTU.
    pub mtu: Option<u32>,
    /// The link-layer address, when it is an Ethernet one.
    pub mac: Option<crate::MacAddr>,
}

/// A blocking rtnetlink socket in the calling thread's network namespace.
#[derive(Debug)]
pub struct RtNetlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl RtNetlink {
    /// Open and bind a `NETLINK_ROUTE` socket.
    pub fn new() -> Result<Self, BridgeError> {
        let nl = |source| BridgeError::Netlink {
            op: "socket",
            name: String::new(),
            source,
        };
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(nl)?;
        sock.bind_auto().map_err(nl)?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(nl)?;
        Ok(RtNetlink {
            sock,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Send `msg` and collect the replies up to the kernel's ACK. A NACK is
    /// returned as the `io::Error` of its errno.
    pub(crate) fn request(
        &mut self,
        op: &'static str,
        name: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, BridgeError> {
        let nl = |source: io::Error| {
            if source.raw_os_error() == Some(libc::EPERM) {
                BridgeError::PermissionDenied {
                    op,
                    name: name.to_string(),
                }
            } else {
                BridgeError::Netlink {
                    op,
                    name: name.to_string(),
                    source,
                }
            }
        };
        self.seq = self.seq.wrapping_add(1);
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        hdr.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(hdr, NetlinkPayload::from(msg));
        req.finalize();
        let mut out = vec![0; req.header.length as usize];
        req.serialize(&mut out);
        self.sock.send(&out, 0).map_err(nl)?;

        let mut replies = Vec::new();
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0).map_err(nl)?;
            let mut off = 0;
            while off < n {
                let msg: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&self.buf[off..n]).map_err(|e| {
                        BridgeError::Protocol {
                            op,
                            detail: e.to_string(),
                        }
                    })?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(BridgeError::Protocol {
                        op,
                        detail: "zero-length message".into(),
                    });
                }
                off += (len + 3) & !3;
                if msg.header.sequence_number != self.seq {
                    debug!(
                        "netlink: skipping reply for sequence {}",
                        msg.header.sequence_number
                    );
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(code) => Err(nl(io::Error::from_raw_os_error(-code.get()))),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    _ => {}
                }
            }
        }
    }

    /// Look up interface `name`; `None` when it does not exist.
    pub fn link(&mut self, name: &str) -> Result<Option<LinkInfoSummary>, BridgeError> {
        validate_ifname(name)?;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let replies = match self.request("get link", name, RouteNetlinkMessage::GetLink(msg), 0) {
            Err(BridgeError::Netlink { source, .. })
                if source.raw_os_error() == Some(libc::ENODEV) =>
            {
                return Ok(None)
            }
            r => r?,
        };
        for r in replies {
            if let RouteNetlinkMessage::NewLink(l) = r {
                let mut s = LinkInfoSummary {
                    index: l.header.index,
                    kind: None,
                    controller: None,
                    up: l.header.flags.contains(LinkFlags::Up),
                    mtu: None,
                    mac: None,
                };
                for a in &l.attributes {
                    match a {
                        LinkAttribute::LinkInfo(infos) => {
                            for i in infos {
                                if let LinkInfo::Kind(k) = i {
                                    s.kind = Some(k.to_string());
                                }
                            }
                        }
                        LinkAttribute::Controller(c) => s.controller = Some(*c),
                        LinkAttribute::Mtu(m) => s.mtu = Some(*m),
                        LinkAttribute::Address(a) => {
                            s.mac = <[u8; 6]>::try_from(a.as_slice()).ok().map(Into::into)
                        }
                        _ => {}
                    }
                }
                return Ok(Some(s));
            }
        }
        Err(BridgeError::Protocol {
            op: "get link",
            detail: "no link in the reply".into(),
        })
    }

    pub(crate) fn index_of(&mut self, name: &str) -> Result<u32, BridgeError> {
        self.link(name)?
            .map(|l| l.index)
            .ok_or_else(|| BridgeError::InterfaceNotFound(name.to_string()))
    }

    fn bridge_index(&mut self, name: &str) -> Result<u32, BridgeError> {
        match self.link(name)? {
            None => Err(BridgeError::BridgeNotFound(name.to_string())),
            Some(l) if l.kind.as_deref() == Some("bridge") => Ok(l.index),
            Some(_) => Err(BridgeError::NotABridge(name.to_string())),
        }
    }

    /// Create bridge `name` (down).
    pub fn create_bridge(&mut self, name: &str) -> Result<(), BridgeError> {
        validate_ifname(name)?;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(
            "create bridge",
            name,
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(|e| match e {
            BridgeError::Netlink { source, .. } if source.raw_os_error() == Some(libc::EEXIST) => {
                BridgeError::AlreadyExists(format!("interface {name:?}"))
            }
            e => e,
        })?;
        Ok(())
    }

    /// Delete bridge `name` (refuses interfaces that are not bridges).
    pub fn delete_bridge(&mut self, name: &str) -> Result<(), BridgeError> {
        let index = self.bridge_index(name)?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.request("delete bridge", name, RouteNetlinkMessage::DelLink(msg), 0)?;
        Ok(())
    }

    pub(crate) fn set_link(
        &mut self,
        op: &'static str,
        name: &str,
        index: u32,
        f: impl FnOnce(&mut LinkMessage),
    ) -> Result<(), BridgeError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        f(&mut msg);
        self.request(op, name, RouteNetlinkMessage::SetLink(msg), 0)?;
        Ok(())
    }

    /// Attach interface `iface` (a tap, a veth...) to bridge `bridge`.
    pub fn attach(&mut self, bridge: &str, iface: &str) -> Result<(), BridgeError> {
        let br = self.bridge_index(bridge)?;
        let index = self.index_of(iface)?;
        self.set_link("attach to bridge", iface, index, |m| {
            m.attributes.push(LinkAttribute::Controller(br))
        })
    }

    /// Detach interface `iface` from whatever bridge holds it.
    pub fn detach(&mut self, iface: &str) -> Result<(), BridgeError> {
        let index = self.index_of(iface)?;
        self.set_link("detach from bridge", iface, index, |m| {
            m.attributes.push(LinkAttribute::Controller(0))
        })
    }

    /// Bring interface `name` up or down.
    pub fn set_up(&mut self, name: &str, up: bool) -> Result<(), BridgeError> {
        let index = self.index_of(name)?;
        self.set_link(if up { "link up" } else { "link down" }, name, index, |m| {
            m.header.flags = if up {
                LinkFlags::Up
            } else {
                LinkFlags::empty()
            };
            m.header.change_mask = LinkFlags::Up;
        })
    }

    /// Set the MTU of interface `name`.
    pub fn set_mtu(&mut self, name: &str, mtu: u32) -> Result<(), BridgeError> {
        let index = self.index_of(name)?;
        self.set_link("set mtu", name, index, |m| {
            m.attributes.push(LinkAttribute::Mtu(mtu))
        })
    }

    /// Add address `addr/prefix` to interface `name`.
    pub fn add_address(&mut self, name: &str, addr: IpAddr, prefix: u8) -> Result<(), BridgeError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(BridgeError::InvalidPrefix { addr, prefix });
        }
        let index = self.index_of(name)?;
        let mut msg = AddressMessage::default();
        msg.header.family = if addr.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        msg.header.prefix_len = prefix;
        msg.header.index = index;
        if addr.is_ipv4() {
            msg.attributes.push(AddressAttribute::Local(addr));
        }
        msg.attributes.push(AddressAttribute::Address(addr));
        self.request(
            "add address",
            name,
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(|e| match e {
            BridgeError::Netlink { source, .. } if source.raw_os_error() == Some(libc::EEXIST) => {
                BridgeError::AlreadyExists(format!("address {addr}/{prefix} on {name:?}"))
            }
            e => e,
        })?;
        Ok(())
    }
}

/// Create bridge `name` and bring it up.
pub fn create(name: &str) -> Result<(), BridgeError> {
    let mut nl = RtNetlink::new()?;
    nl.create_bridge(name)?;
    nl.set_up(name, true)
}

/// Delete bridge `name`.
pub fn delete(name: &str) -> Result<(), BridgeError> {
    RtNetlink::new()?.delete_bridge(name)
}

/// Attach `iface` (e.g. a tap) to the existing bridge `bridge`, with the
/// bridge ioctl: see [`bridge_port`](crate::bridge_port) for why.
pub fn attach(bridge: &str, iface: &str) -> Result<(), BridgeError> {
    crate::bridge_port::add_port(bridge, iface)
}

/// Detach `iface` from its bridge.
pub fn detach(iface: &str) -> Result<(), BridgeError> {
    RtNetlink::new()?.detach(iface)
}

/// Bring interface `name` up or down.
pub fn set_up(name: &str, up: bool) -> Result<(), BridgeError> {
    RtNetlink::new()?.set_up(name, up)
}

/// Add `addr/prefix` to interface `name`.
pub fn add_address(name: &str, addr: IpAddr, prefix: u8) -> Result<(), BridgeError> {
    RtNetlink::new()?.add_address(name, addr, prefix)
}
