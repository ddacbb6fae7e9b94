//! A container's place on a network: the network's bridge (made on first use, with the
//! gateway address and NAT), a veth pair with one end on the bridge and the other as
//! `eth0` in the container's network namespace (address, `lo` up, default route), and
//! published ports; each undone by [`detach`] and [`remove_network`].

use std::net::{IpAddr, Ipv4Addr};

use crate::bridge::{BridgeError, RtNetlink};
use crate::firewall::{self, FirewallError};
use crate::ipam::Network;
use crate::netns::{NetNs, NetNsError};
use crate::ports::PortMapping;

/// Errors from attaching containers to networks.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// A link operation failed.
    #[error(transparent)]
    Link(#[from] BridgeError),
    /// The firewall refused.
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    /// The namespace could not be entered.
    #[error(transparent)]
    NetNs(#[from] NetNsError),
}

/// Makes network `net`'s bridge if missing (up, holding the gateway address) and its NAT
/// rules.
pub fn ensure_network(net: &Network) -> Result<(), AttachError> {
    let mut nl = RtNetlink::new()?;
    if nl.link(&net.bridge)?.is_none() {
        match nl.create_bridge(&net.bridge) {
            Ok(()) | Err(BridgeError::AlreadyExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    match nl.add_address(
        &net.bridge,
        IpAddr::V4(net.subnet.gateway()),
        net.subnet.prefix(),
    ) {
        Ok(()) | Err(BridgeError::AlreadyExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    nl.set_up(&net.bridge, true)?;
    firewall::add_network(net)?;
    Ok(())
}

/// Deletes network `net`'s bridge and rules (what is already gone is no error).
pub fn remove_network(net: &Network) -> Result<(), AttachError> {
    firewall::remove_rules(&firewall::network_comment(&net.name))?;
    let mut nl = RtNetlink::new()?;
    if nl.link(&net.bridge)?.is_some() {
        nl.delete_bridge(&net.bridge)?;
    }
    Ok(())
}

/// The host-side interface name for container `id` (`vkv` + 12 characters of the id).
pub fn host_ifname(id: &str) -> String {
    let tail: String = id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    format!("vkv{tail}")
}

/// Puts the namespace `ns` on `net` with address `ip`: a veth pair (`host_if` on the
/// bridge, `eth0` inside), `lo` up, and a default route via the gateway. Nothing is
/// left when it fails.
pub fn attach(net: &Network, ip: Ipv4Addr, ns: &NetNs, host_if: &str) -> Result<(), AttachError> {
    ensure_network(net)?;
    let peer = format!("vkp{}", host_if.trim_start_matches("vkv"));
    let mut nl = RtNetlink::new()?;
    // A veth left by a crash is replaced.
    nl.delete_link(host_if)?;
    nl.create_veth(host_if, &peer)?;
    let done = (|| -> Result<(), AttachError> {
        nl.attach(&net.bridge, host_if)?;
        nl.set_up(host_if, true)?;
        let f = ns.open()?;
        nl.move_to_netns(&peer, std::os::fd::AsFd::as_fd(&f))?;
        let (gw, prefix) = (net.subnet.gateway(), net.subnet.prefix());
        ns.run(move || -> Result<(), BridgeError> {
            let mut inner = RtNetlink::new()?;
            inner.rename(&peer, "eth0")?;
            inner.add_address("eth0", IpAddr::V4(ip), prefix)?;
            inner.set_up("eth0", true)?;
            inner.set_up("lo", true)?;
            inner.add_default_route(gw)
        })??;
        Ok(())
    })();
    if done.is_err() {
        let _ = nl.delete_link(host_if);
    }
    done
}

/// Publishes `ports` (host ports chosen) of container `id` at `ip`.
pub fn publish(id: &str, ip: Ipv4Addr, ports: &[PortMapping]) -> Result<(), AttachError> {
    firewall::add_ports(id, ip, ports)?;
    Ok(())
}

/// Undoes [`attach`] and [`publish`] for container `id`: its rules and its veth (the
/// namespace itself is the caller's). Idempotent.
pub fn detach(id: &str, host_if: &str) -> Result<(), AttachError> {
    firewall::remove_rules(&firewall::container_comment(id))?;
    RtNetlink::new()?.delete_link(host_if)?;
    Ok(())
}
