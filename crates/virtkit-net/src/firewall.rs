//! NAT for container networks with nftables, through the `nftables` crate (the JSON API
//! of the `nft` tool, as netavark uses it): one table, `ip virtkit`, with
//! - `postrouting`: masquerade from each network's subnet to the outside, from the host's
//!   loopback into a network (published ports reached as `127.0.0.1:PORT`), and for
//!   hairpin traffic (a container reaching a published port of its own network);
//! - `prerouting` and `output`: one DNAT rule per published port, for traffic arriving
//!   from other hosts and for the host's own connections.
//!
//! Every rule carries a comment naming its owner (`net NAME` or `ctr ID`), so an owner's
//! rules are found and removed by handle, including those a crashed process left.

use std::borrow::Cow;
use std::net::Ipv4Addr;

use nftables::helper::{self, NftablesError};
use nftables::schema::{NfListObject, NfObject, Nftables};
use serde_json::{json, Value};

use crate::ipam::Network;
use crate::ports::PortMapping;

/// The table (family `ip`).
pub const TABLE: &str = "virtkit";

/// Errors from the firewall.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// `nft` is missing, failed or answered nonsense.
    #[error("nftables ({what}): {detail}")]
    Nft {
        /// What was being done.
        what: String,
        /// What `nft` said, or why it could not run.
        detail: String,
    },
    /// Another container already publishes the host port.
    #[error("host port {port} is already in use by container {owner}")]
    PortTaken {
        /// The port, as `tcp 8080`.
        port: String,
        /// The container's id.
        owner: String,
    },
    /// The lock that serializes rule changes could not be taken.
    #[error("cannot lock {path}: {source}")]
    Lock {
        /// The lock file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A batch we built does not fit the nftables schema (a bug).
    #[error("nftables batch: {0}")]
    Schema(String),
    /// A sysctl could not be set.
    #[error("cannot set {path}: {source}")]
    Sysctl {
        /// The `/proc/sys` file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn nft_err(what: impl Into<String>) -> impl FnOnce(NftablesError) -> FirewallError {
    let what = what.into();
    move |e| FirewallError::Nft {
        what,
        detail: match e {
            NftablesError::NftExecution { inner, .. } => format!(
                "cannot run nft: {inner} (is nftables installed? Debian: apt-get install nftables)"
            ),
            NftablesError::NftFailed { stderr, .. } => stderr.trim().to_string(),
            e => e.to_string(),
        },
    }
}

/// The lock every change to the table takes (the table is the host's, shared by every
/// state directory and process).
pub const LOCK: &str = "/run/virtkit-nftables.lock";

fn locked<T>(f: impl FnOnce() -> Result<T, FirewallError>) -> Result<T, FirewallError> {
    use std::os::fd::AsRawFd;
    let lock_err = |source| FirewallError::Lock {
        path: LOCK.into(),
        source,
    };
    let file = std::fs::File::create(LOCK).map_err(lock_err)?;
    // SAFETY: flock on a descriptor we own; released when `file` is dropped.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(lock_err(std::io::Error::last_os_error()));
    }
    let out = f();
    drop(file);
    out
}

fn apply(what: &str, cmds: Vec<Value>) -> Result<(), FirewallError> {
    if cmds.is_empty() {
        return Ok(());
    }
    let objects = cmds
        .into_iter()
        .map(|c| {
            serde_json::from_value::<NfObject<'static>>(c.clone())
                .map_err(|e| FirewallError::Schema(format!("{e}: {c}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let parsed = Nftables {
        objects: Cow::Owned(objects),
    };
    helper::apply_ruleset(&parsed).map_err(nft_err(what))
}

fn rule(chain: &str, comment: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {
        "family": "ip", "table": TABLE, "chain": chain, "comment": comment, "expr": expr
    }}})
}

fn matches(left: Value, op: &str, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

fn payload(proto: &str, field: &str) -> Value {
    json!({"payload": {"protocol": proto, "field": field}})
}

fn prefix(addr: Ipv4Addr, len: u8) -> Value {
    json!({"prefix": {"addr": addr.to_string(), "len": len}})
}

/// Writes a sysctl under `/proc/sys`.
pub fn sysctl(path: &str, value: &str) -> Result<(), FirewallError> {
    let p = format!("/proc/sys/{path}");
    std::fs::write(&p, value).map_err(|source| FirewallError::Sysctl { path: p, source })
}

/// Makes the table and its chains (idempotent) and turns IPv4 forwarding on.
pub fn ensure_table() -> Result<(), FirewallError> {
    sysctl("net/ipv4/ip_forward", "1")?;
    let chain = |name: &str, hook: &str, prio: i32| {
        json!({"add": {"chain": {
            "family": "ip", "table": TABLE, "name": name,
            "type": "nat", "hook": hook, "prio": prio, "policy": "accept"
        }}})
    };
    apply(
        "create the virtkit table",
        vec![
            json!({"add": {"table": {"family": "ip", "name": TABLE}}}),
            chain("prerouting", "prerouting", -100),
            chain("output", "output", -100),
            chain("postrouting", "postrouting", 100),
        ],
    )
}

/// Every rule of the table: chain, handle and comment.
fn listed_rules() -> Result<Vec<(String, u32, Option<String>)>, FirewallError> {
    let listed = match helper::get_current_ruleset_with_args(
        helper::DEFAULT_NFT,
        &["list", "table", "ip", TABLE],
    ) {
        Ok(l) => l,
        // No table: no rules.
        Err(NftablesError::NftFailed { stderr, .. }) if stderr.contains("No such file") => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(nft_err("list the virtkit table")(e)),
    };
    Ok(listed
        .objects
        .iter()
        .filter_map(|o| match o {
            NfObject::ListObject(NfListObject::Rule(r)) => r.handle.map(|h| {
                (
                    r.chain.to_string(),
                    h,
                    r.comment.as_ref().map(Cow::to_string),
                )
            }),
            _ => None,
        })
        .collect())
}

/// The handles of the rules whose comment is `comment` or starts with it and a space,
/// by chain.
pub fn rules_of(comment: &str) -> Result<Vec<(String, u32)>, FirewallError> {
    Ok(listed_rules()?
        .into_iter()
        .filter(|(_, _, c)| {
            c.as_deref()
                .is_some_and(|c| c == comment || c.starts_with(&format!("{comment} ")))
        })
        .map(|(chain, h, _)| (chain, h))
        .collect())
}

/// Removes every rule of owner `comment` (see [`rules_of`]); the number removed.
pub fn remove_rules(comment: &str) -> Result<usize, FirewallError> {
    locked(|| remove_rules_unlocked(comment))
}

fn remove_rules_unlocked(comment: &str) -> Result<usize, FirewallError> {
    let found = rules_of(comment)?;
    let cmds = found
        .iter()
        .map(|(chain, handle)| {
            json!({"delete": {"rule": {
                "family": "ip", "table": TABLE, "chain": chain, "handle": handle, "expr": []
            }}})
        })
        .collect();
    apply(&format!("remove the rules of {comment}"), cmds)?;
    Ok(found.len())
}

/// The comment on a network's rules.
pub fn network_comment(name: &str) -> String {
    format!("net {name}")
}

/// The comment on a container's rules.
pub fn container_comment(id: &str) -> String {
    format!("ctr {id}")
}

/// Installs (or replaces) network `net`'s masquerade rules and lets the host's loopback
/// reach it (`route_localnet` on its bridge, which must exist).
pub fn add_network(net: &Network) -> Result<(), FirewallError> {
    ensure_table()?;
    locked(|| add_network_unlocked(net))
}

fn add_network_unlocked(net: &Network) -> Result<(), FirewallError> {
    sysctl(&format!("net/ipv4/conf/{}/route_localnet", net.bridge), "1")?;
    let comment = network_comment(&net.name);
    if rules_of(&comment)?.len() == 3 {
        return Ok(());
    }
    remove_rules_unlocked(&comment)?;
    let sub = prefix(net.subnet.addr(), net.subnet.prefix());
    let saddr = payload("ip", "saddr");
    let daddr = payload("ip", "daddr");
    let oif = json!({"meta": {"key": "oifname"}});
    let masq = json!({"masquerade": null});
    apply(
        &format!("add the rules of network {}", net.name),
        vec![
            rule(
                "postrouting",
                &comment,
                vec![
                    matches(saddr.clone(), "==", sub.clone()),
                    matches(daddr.clone(), "!=", sub.clone()),
                    masq.clone(),
                ],
            ),
            rule(
                "postrouting",
                &comment,
                vec![
                    matches(saddr.clone(), "==", prefix(Ipv4Addr::new(127, 0, 0, 0), 8)),
                    matches(oif.clone(), "==", json!(net.bridge)),
                    masq.clone(),
                ],
            ),
            rule(
                "postrouting",
                &comment,
                vec![
                    matches(json!({"ct": {"key": "status"}}), "in", json!("dnat")),
                    matches(saddr, "==", sub),
                    matches(oif, "==", json!(net.bridge)),
                    masq,
                ],
            ),
        ],
    )
}

/// Publishes `ports` of the container `id` at `ip` (DNAT from other hosts and from this
/// one). The host ports must already be chosen.
pub fn add_ports(id: &str, ip: Ipv4Addr, ports: &[PortMapping]) -> Result<(), FirewallError> {
    if ports.is_empty() {
        return Ok(());
    }
    ensure_table()?;
    locked(|| {
        let taken = listed_rules()?;
        let mut cmds = Vec::new();
        for p in ports {
            let key = format!("port {} {}", p.proto.as_str(), p.host_port);
            for (_, _, c) in &taken {
                let Some(c) = c.as_deref() else { continue };
                let mut w = c.split(' ');
                let (Some("ctr"), Some(owner)) = (w.next(), w.next()) else {
                    continue;
                };
                let rest: Vec<&str> = w.collect();
                // "port PROTO PORT IP"
                if let ["port", proto, port, their_ip] = rest.as_slice() {
                    let same_port = format!("port {proto} {port}") == key;
                    let theirs: Option<Ipv4Addr> = their_ip
                        .parse()
                        .ok()
                        .filter(|a: &Ipv4Addr| !a.is_unspecified());
                    let overlap = p.host_ip.is_none() || theirs.is_none() || theirs == p.host_ip;
                    if same_port && overlap {
                        return Err(FirewallError::PortTaken {
                            port: format!("{} {}", p.proto.as_str(), p.host_port),
                            owner: owner.to_string(),
                        });
                    }
                }
            }
            let comment = format!(
                "ctr {id} {key} {}",
                p.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED)
            );
            let mut expr = vec![matches(
                json!({"fib": {"result": "type", "flags": ["daddr"]}}),
                "==",
                json!("local"),
            )];
            if let Some(h) = p.host_ip {
                expr.push(matches(payload("ip", "daddr"), "==", json!(h.to_string())));
            }
            expr.push(matches(
                payload(p.proto.as_str(), "dport"),
                "==",
                json!(p.host_port),
            ));
            expr.push(json!({"dnat": {"addr": ip.to_string(), "port": p.container_port}}));
            for chain in ["prerouting", "output"] {
                cmds.push(rule(chain, &comment, expr.clone()));
            }
        }
        apply(&format!("publish the ports of {id}"), cmds)
    })
}

/// Every rule owner in the table (`net NAME`, `ctr ID`), to find what dead containers
/// left.
pub fn owners() -> Result<Vec<String>, FirewallError> {
    let mut out: Vec<String> = listed_rules()?
        .into_iter()
        .filter_map(|(_, _, c)| c)
        .map(|c| c.splitn(3, ' ').take(2).collect::<Vec<_>>().join(" "))
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}
