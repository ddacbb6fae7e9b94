//! Published ports: `-p [IP:][HOST:]CONTAINER[/tcp|/udp]` as Docker and podman take it.

use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A malformed `-p` spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid port spec {spec:?}: {why} (expected [IP:][HOST_PORT:]CONTAINER_PORT[/tcp|/udp])")]
pub struct PortSpecError {
    /// The spec as given.
    pub spec: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// The host address it is published on (`None`: every local address).
    pub host_ip: Option<Ipv4Addr>,
    /// The host port; 0 until a free one is picked (`-p 80`).
    pub host_port: u16,
    /// The container's port.
    pub container_port: u16,
    /// The protocol.
    pub proto: Proto,
}

impl FromStr for PortMapping {
    type Err = PortSpecError;
    fn from_str(spec: &str) -> Result<Self, PortSpecError> {
        let err = |why| PortSpecError {
            spec: spec.to_string(),
            why,
        };
        let (rest, proto) = match spec.rsplit_once('/') {
            Some((r, "tcp")) => (r, Proto::Tcp),
            Some((r, "udp")) => (r, Proto::Udp),
            Some(_) => return Err(err("the protocol must be tcp or udp")),
            None => (spec, Proto::Tcp),
        };
        let port = |s: &str, what| -> Result<u16, PortSpecError> {
            match s.parse::<u16>() {
                Ok(0) | Err(_) => Err(err(what)),
                Ok(p) => Ok(p),
            }
        };
        let parts: Vec<&str> = rest.split(':').collect();
        let (ip, host, ctr) = match parts.as_slice() {
            [c] => (None, None, *c),
            [h, c] => (None, Some(*h), *c),
            [i, h, c] => (Some(*i), Some(*h).filter(|h| !h.is_empty()), *c),
            _ => return Err(err("too many ':'")),
        };
        let host_ip = match ip {
            None | Some("") => None,
            Some(i) => Some(
                i.parse::<Ipv4Addr>()
                    .map_err(|_| err("the host address is not an IPv4 address"))?,
            )
            .filter(|a| !a.is_unspecified()),
        };
        Ok(PortMapping {
            host_ip,
            host_port: match host {
                Some(h) => port(h, "the host port must be a number from 1 to 65535")?,
                None => 0,
            },
            container_port: port(ctr, "the container port must be a number from 1 to 65535")?,
            proto,
        })
    }
}

impl std::fmt::Display for PortMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ip = self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        write!(
            f,
            "{ip}:{}->{}/{}",
            self.host_port,
            self.container_port,
            self.proto.as_str()
        )
    }
}

/// Checks that the host port is free on the host (nothing listens on it) and picks one
/// when it is 0, as Docker does before it publishes a port.
pub fn reserve(m: &mut PortMapping) -> Result<(), std::io::Error> {
    let ip = m.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let port = match m.proto {
        Proto::Tcp => std::net::TcpListener::bind((ip, m.host_port))?
            .local_addr()?
            .port(),
        Proto::Udp => std::net::UdpSocket::bind((ip, m.host_port))?
            .local_addr()?
            .port(),
    };
    m.host_port = port;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let m: PortMapping = "8080:80".parse().unwrap();
        assert_eq!(
            (m.host_ip, m.host_port, m.container_port, m.proto),
            (None, 8080, 80, Proto::Tcp)
        );
        let m: PortMapping = "127.0.0.1:5353:53/udp".parse().unwrap();
        assert_eq!(m.host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(m.proto, Proto::Udp);
        assert_eq!(m.to_string(), "127.0.0.1:5353->53/udp");
        let m: PortMapping = "80".parse().unwrap();
        assert_eq!(m.host_port, 0);
        let m: PortMapping = "0.0.0.0::80/tcp".parse().unwrap();
        assert_eq!((m.host_ip, m.host_port), (None, 0));
    }

    #[test]
    fn bad_specs_are_errors() {
        for bad in [
            "",
            "x:80",
            "8080:0",
            "8080:70000",
            "1:2:3:4",
            "8080:80/sctp",
            "300.1.1.1:80:80",
            "8080:",
        ] {
            assert!(bad.parse::<PortMapping>().is_err(), "{bad}");
        }
    }

    #[test]
    fn reserve_picks_a_port_and_refuses_a_taken_one() {
        let mut m: PortMapping = "127.0.0.1::80".parse().unwrap();
        reserve(&mut m).unwrap();
        assert_ne!(m.host_port, 0);
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut m: PortMapping = format!("127.0.0.1:{}:80", held.local_addr().unwrap().port())
            .parse()
            .unwrap();
        assert!(reserve(&mut m).is_err());
    }
}
