//! veth pairs, moving links between network namespaces, renaming and deleting links and
//! default routes: what a container's network needs, over the same rtnetlink socket as
//! [`crate::bridge`].

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::bridge::{BridgeError, RtNetlink};
use crate::tap::validate_ifname;

fn exists(name: &str) -> impl FnOnce(BridgeError) -> BridgeError + '_ {
    move |e| match e {
        BridgeError::Netlink { source, .. } if source.raw_os_error() == Some(libc::EEXIST) => {
            BridgeError::AlreadyExists(format!("interface {name:?}"))
        }
        e => e,
    }
}

impl RtNetlink {
    /// Creates the veth pair `host` <-> `peer`, both down, in this namespace.
    pub fn create_veth(&mut self, host: &str, peer: &str) -> Result<(), BridgeError> {
        validate_ifname(host)?;
        validate_ifname(peer)?;
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.to_string()));
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(host.to_string()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.request(
            "create veth",
            host,
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(exists(host))?;
        Ok(())
    }

    /// Moves link `name` into the network namespace `netns` (an open `/proc/PID/ns/net`
    /// or a bind-mounted namespace file).
    pub fn move_to_netns(&mut self, name: &str, netns: BorrowedFd<'_>) -> Result<(), BridgeError> {
        let index = self.index_of(name)?;
        let fd = netns.as_raw_fd();
        self.set_link("move to netns", name, index, |m| {
            m.attributes.push(LinkAttribute::NetNsFd(fd))
        })
    }

    /// Renames link `from` (which must be down) to `to`.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<(), BridgeError> {
        validate_ifname(to)?;
        let index = self.index_of(from)?;
        self.set_link("rename link", from, index, |m| {
            m.attributes.push(LinkAttribute::IfName(to.to_string()))
        })
        .map_err(exists(to))
    }

    /// Deletes link `name` of any kind (a veth takes its peer with it); `false` when it did
    /// not exist.
    pub fn delete_link(&mut self, name: &str) -> Result<bool, BridgeError> {
        let Some(l) = self.link(name)? else {
            return Ok(false);
        };
        let mut msg = LinkMessage::default();
        msg.header.index = l.index;
        match self.request("delete link", name, RouteNetlinkMessage::DelLink(msg), 0) {
            Ok(_) => Ok(true),
            Err(BridgeError::Netlink { source, .. })
                if source.raw_os_error() == Some(libc::ENODEV) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Adds the IPv4 default route via `gateway` (reachable on a connected link).
    pub fn add_default_route(&mut self, gateway: Ipv4Addr) -> Result<(), BridgeError> {
        let mut msg = RouteMessage::default();
        msg.header = RouteHeader {
            address_family: AddressFamily::Inet,
            destination_prefix_length: 0,
            table: RouteHeader::RT_TABLE_MAIN,
            protocol: RouteProtocol::Boot,
            scope: RouteScope::Universe,
            kind: RouteType::Unicast,
            ..msg.header
        };
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        self.request(
            "add default route",
            &gateway.to_string(),
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(|e| match e {
            BridgeError::Netlink { source, .. } if source.raw_os_error() == Some(libc::EEXIST) => {
                BridgeError::AlreadyExists("a default route".into())
            }
            e => e,
        })?;
        Ok(())
    }
}
