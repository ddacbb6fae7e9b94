//! Container networks and their addresses: each network a bridge with an IPv4 subnet,
//! kept as JSON under a state directory with its leases (which address each container
//! holds), all changes under one `flock` so concurrent commands never hand out an
//! address twice, and all of it surviving restarts.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The name and bridge of the default network (Docker's `bridge`, podman's `podman`).
pub const DEFAULT_NETWORK: &str = "virtkit";
/// The default network's subnet: not podman's 10.88.0.0/16 nor its user networks'
/// 10.89.N.0/24, nor Docker's 172.17.0.0/16, so the tools can share a host.
pub const DEFAULT_SUBNET: &str = "10.87.0.0/16";
/// Where user networks get their `/24`s when no subnet is given.
pub const USER_SUBNETS: (u8, u8) = (10, 86);

/// Errors from network records and address allocation.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// A subnet that does not parse or is unusable.
    #[error("invalid subnet {0:?}: expected A.B.C.D/N with N from 8 to 30, the host bits zero")]
    BadSubnet(String),
    /// A network name that is not allowed.
    #[error("invalid network name {0:?}: 1 to 12 letters, digits, '-' or '_'")]
    BadName(String),
    /// No such network.
    #[error("network {0:?} not found")]
    NotFound(String),
    /// The name is taken.
    #[error("network {0:?} already exists")]
    Exists(String),
    /// The subnet overlaps another network's.
    #[error("subnet {subnet} overlaps network {other:?} ({theirs})")]
    Overlap {
        /// The requested subnet.
        subnet: Subnet,
        /// The other network.
        other: String,
        /// Its subnet.
        theirs: Subnet,
    },
    /// Every address is taken.
    #[error("network {0:?} has no free address left")]
    Exhausted(String),
    /// Containers still use it.
    #[error("network {name:?} is in use by {users:?}")]
    InUse {
        /// The network.
        name: String,
        /// The containers on it.
        users: Vec<String>,
    },
    /// A state file could not be read or written.
    #[error("network state {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A state file is not valid JSON of the right shape.
    #[error("network state {path} is corrupt: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

/// An IPv4 subnet, `address/prefix` with the host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }
    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }
    /// Whether `ip` lies in the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }
    /// Whether the two subnets share an address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
    /// The `n`th address of the subnet, if it is a usable host address (not the network
    /// or broadcast address).
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - u32::from(self.prefix));
        (n >= 1 && u64::from(n) < size - 1)
            .then(|| Ipv4Addr::from(u32::from(self.addr).wrapping_add(n)))
    }
    /// The gateway: the first host address (the bridge's own).
    pub fn gateway(&self) -> Ipv4Addr {
        self.host(1).unwrap_or(self.addr)
    }
}

impl FromStr for Subnet {
    type Err = IpamError;
    fn from_str(s: &str) -> Result<Self, IpamError> {
        let bad = || IpamError::BadSubnet(s.to_string());
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        let sub = Subnet { addr, prefix };
        if u32::from(addr) & !sub.mask() != 0 {
            return Err(bad());
        }
        Ok(sub)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl TryFrom<String> for Subnet {
    type Error = IpamError;
    fn try_from(s: String) -> Result<Self, IpamError> {
        s.parse()
    }
}

impl From<Subnet> for String {
    fn from(s: Subnet) -> String {
        s.to_string()
    }
}

/// A container network: a bridge and its subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// The network's name.
    pub name: String,
    /// The bridge interface (`vk-NAME`, or `virtkit0` for the default network).
    pub bridge: String,
    /// The subnet; the bridge holds its first address.
    pub subnet: Subnet,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    networks: BTreeMap<String, Network>,
    /// network -> address -> container.
    leases: BTreeMap<String, BTreeMap<Ipv4Addr, String>>,
}

/// The networks and leases kept under a directory.
#[derive(Debug, Clone)]
pub struct Networks {
    dir: PathBuf,
}

/// `name` if it is a valid network name.
pub fn validate_name(name: &str) -> Result<(), IpamError> {
    let ok = !name.is_empty()
        && name.len() <= 12
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(IpamError::BadName(name.to_string()))
    }
}

fn default_network() -> Result<Network, IpamError> {
    Ok(Network {
        name: DEFAULT_NETWORK.into(),
        bridge: "virtkit0".into(),
        subnet: DEFAULT_SUBNET.parse()?,
    })
}

impl Networks {
    /// The state under `dir` (created when missing).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Networks, IpamError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| IpamError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Networks { dir })
    }

    fn file(&self) -> PathBuf {
        self.dir.join("networks.json")
    }

    /// Runs `f` on the state under the lock, saving it (atomically) when `f` succeeds
    /// and `save` is true.
    fn locked<T>(
        &self,
        save: bool,
        f: impl FnOnce(&mut State) -> Result<T, IpamError>,
    ) -> Result<T, IpamError> {
        let lock_path = self.dir.join("networks.lock");
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IpamError::Io { path, source }
        };
        let lock = File::create(&lock_path).map_err(io_err(&lock_path))?;
        // SAFETY: flock on a descriptor we own; released when `lock` is dropped.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err(&lock_path)(io::Error::last_os_error()));
        }
        let path = self.file();
        let mut state: State = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| IpamError::Corrupt {
                path: path.clone(),
                detail: e.to_string(),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io_err(&path)(e)),
        };
        if !state.networks.contains_key(DEFAULT_NETWORK) {
            state
                .networks
                .insert(DEFAULT_NETWORK.into(), default_network()?);
        }
        let out = f(&mut state)?;
        if save {
            let tmp = self.dir.join("networks.json.tmp");
            let text = serde_json::to_vec_pretty(&state).map_err(|e| IpamError::Corrupt {
                path: path.clone(),
                detail: e.to_string(),
            })?;
            std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        }
        Ok(out)
    }

    /// Creates network `name` with `subnet`, or the first free `10.86.N.0/24`.
    pub fn create(&self, name: &str, subnet: Option<Subnet>) -> Result<Network, IpamError> {
        validate_name(name)?;
        self.locked(true, |st| {
            if st.networks.contains_key(name) {
                return Err(IpamError::Exists(name.to_string()));
            }
            let free = |s: &Subnet, st: &State| {
                st.networks
                    .values()
                    .find(|n| n.subnet.overlaps(s))
                    .map(|n| (n.name.clone(), n.subnet))
            };
            let subnet = match subnet {
                Some(s) => {
                    if let Some((other, theirs)) = free(&s, st) {
                        return Err(IpamError::Overlap {
                            subnet: s,
                            other,
                            theirs,
                        });
                    }
                    s
                }
                None => (0..=255u8)
                    .map(|n| Subnet {
                        addr: Ipv4Addr::new(USER_SUBNETS.0, USER_SUBNETS.1, n, 0),
                        prefix: 24,
                    })
                    .find(|s| free(s, st).is_none())
                    .ok_or_else(|| IpamError::Exhausted("10.86.0.0/16".into()))?,
            };
            let net = Network {
                name: name.to_string(),
                bridge: format!("vk-{name}"),
                subnet,
            };
            st.networks.insert(name.to_string(), net.clone());
            Ok(net)
        })
    }

    /// Every network (the default one included), by name.
    pub fn list(&self) -> Result<Vec<Network>, IpamError> {
        self.locked(false, |st| Ok(st.networks.values().cloned().collect()))
    }

    /// Network `name`.
    pub fn get(&self, name: &str) -> Result<Network, IpamError> {
        self.locked(false, |st| {
            st.networks
                .get(name)
                .cloned()
                .ok_or_else(|| IpamError::NotFound(name.to_string()))
        })
    }

    /// Removes network `name` from the records (not its bridge: see
    /// [`crate::container::remove_network`]); refuses while containers hold addresses.
    pub fn remove(&self, name: &str) -> Result<Network, IpamError> {
        self.locked(true, |st| {
            let users: Vec<String> = st
                .leases
                .get(name)
                .map(|l| l.values().cloned().collect())
                .unwrap_or_default();
            if !users.is_empty() {
                return Err(IpamError::InUse {
                    name: name.to_string(),
                    users,
                });
            }
            st.leases.remove(name);
            st.networks
                .remove(name)
                .ok_or_else(|| IpamError::NotFound(name.to_string()))
        })
    }

    /// Gives `container` a free address of network `name` (the same one again if it
    /// already holds one).
    pub fn allocate(&self, name: &str, container: &str) -> Result<(Network, Ipv4Addr), IpamError> {
        self.locked(true, |st| {
            let net = st
                .networks
                .get(name)
                .cloned()
                .ok_or_else(|| IpamError::NotFound(name.to_string()))?;
            let leases = st.leases.entry(name.to_string()).or_default();
            if let Some((ip, _)) = leases.iter().find(|(_, c)| *c == container) {
                return Ok((net, *ip));
            }
            let ip = (2u32..)
                .map_while(|n| net.subnet.host(n))
                .find(|ip| !leases.contains_key(ip))
                .ok_or_else(|| IpamError::Exhausted(name.to_string()))?;
            leases.insert(ip, container.to_string());
            Ok((net, ip))
        })
    }

    /// Releases every address `container` holds on any network.
    pub fn release(&self, container: &str) -> Result<(), IpamError> {
        self.locked(true, |st| {
            for l in st.leases.values_mut() {
                l.retain(|_, c| c != container);
            }
            Ok(())
        })
    }

    /// The containers holding addresses on network `name`, with their addresses.
    pub fn leases(&self, name: &str) -> Result<Vec<(Ipv4Addr, String)>, IpamError> {
        self.locked(false, |st| {
            Ok(st
                .leases
                .get(name)
                .map(|l| l.iter().map(|(ip, c)| (*ip, c.clone())).collect())
                .unwrap_or_default())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_and_reject_bad_input() {
        let s: Subnet = "10.89.3.0/24".parse().unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 89, 3, 1));
        assert_eq!(s.host(254), Some(Ipv4Addr::new(10, 89, 3, 254)));
        assert_eq!(s.host(255), None);
        assert_eq!(s.host(0), None);
        assert!(s.contains(Ipv4Addr::new(10, 89, 3, 77)));
        assert!(!s.contains(Ipv4Addr::new(10, 89, 4, 1)));
        for bad in [
            "10.89.3.1/24",
            "10.0.0.0",
            "10.0.0.0/31",
            "10.0.0.0/7",
            "x/24",
            "10.0.0.0/x",
        ] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
        let big: Subnet = "10.0.0.0/8".parse().unwrap();
        assert!(big.overlaps(&s) && s.overlaps(&big));
    }

    #[test]
    fn networks_allocate_release_and_persist() {
        let d = tempfile::tempdir().unwrap();
        let n = Networks::open(d.path()).unwrap();
        assert_eq!(n.list().unwrap()[0].name, DEFAULT_NETWORK);
        let a = n.create("front", None).unwrap();
        let b = n.create("back", None).unwrap();
        assert_ne!(a.subnet, b.subnet);
        assert!(matches!(n.create("front", None), Err(IpamError::Exists(_))));
        assert!(matches!(
            n.create("x", Some(a.subnet)),
            Err(IpamError::Overlap { .. })
        ));
        assert!(matches!(
            n.create("bad name", None),
            Err(IpamError::BadName(_))
        ));
        let (_, ip1) = n.allocate("front", "c1").unwrap();
        let (_, ip2) = n.allocate("front", "c2").unwrap();
        assert_eq!(ip1, a.subnet.host(2).unwrap());
        assert_ne!(ip1, ip2);
        assert_eq!(n.allocate("front", "c1").unwrap().1, ip1);
        assert!(matches!(n.remove("front"), Err(IpamError::InUse { .. })));
        // A new handle on the same directory sees the same state.
        let again = Networks::open(d.path()).unwrap();
        assert_eq!(again.leases("front").unwrap().len(), 2);
        again.release("c1").unwrap();
        assert_eq!(n.allocate("front", "c3").unwrap().1, ip1);
        n.release("c2").unwrap();
        n.release("c3").unwrap();
        n.remove("front").unwrap();
        assert!(matches!(n.get("front"), Err(IpamError::NotFound(_))));
    }

    #[test]
    fn a_small_subnet_runs_out() {
        let d = tempfile::tempdir().unwrap();
        let n = Networks::open(d.path()).unwrap();
        n.create("tiny", Some("10.99.0.0/30".parse().unwrap()))
            .unwrap();
        n.allocate("tiny", "a").unwrap();
        assert!(matches!(
            n.allocate("tiny", "b"),
            Err(IpamError::Exhausted(_))
        ));
    }

    #[test]
    fn corrupt_state_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("networks.json"), b"{not json").unwrap();
        let n = Networks::open(d.path()).unwrap();
        assert!(matches!(n.list(), Err(IpamError::Corrupt { .. })));
    }
}
