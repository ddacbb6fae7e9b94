//! [`NetSpec`]: the `tap=NAME[,mac=MAC][,bridge=BR][,mtu=N]` description of
//! a VM network interface, as a VMM's command line takes it, and
//! [`NetSpec::build`], which makes the tap, attaches it to the bridge and
//! builds the device.

use std::str::FromStr;

use crate::bridge::{self, BridgeError};
use crate::net::{Net, NetError};
use crate::tap::{validate_ifname, Tap, TapError, TapOptions};
use crate::{MacAddr, MacError};

/// Errors from parsing or building a [`NetSpec`].
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The text is not `tap=NAME[,mac=MAC][,bridge=BR][,mtu=N]`.
    #[error(
        "invalid network spec {spec:?}: {reason} (expected tap=NAME[,mac=MAC][,bridge=BR][,mtu=N])"
    )]
    Parse {
        /// The text given.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// The MAC address is invalid, or no random one could be made.
    #[error(transparent)]
    Mac(#[from] MacError),
    /// Creating or configuring the tap failed.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// Attaching to the bridge failed.
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    /// Building the device failed.
    #[error(transparent)]
    Net(#[from] NetError),
}

/// One VM network interface: a tap, optionally on a bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// The tap interface name (created if missing).
    pub tap: String,
    /// The guest MAC; random locally administered when `None`.
    pub mac: Option<MacAddr>,
    /// A bridge to attach the tap to (must exist).
    pub bridge: Option<String>,
    /// MTU for the tap and the guest.
    pub mtu: Option<u16>,
}

impl FromStr for NetSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let bad = |reason: String| SpecError::Parse {
            spec: s.to_string(),
            reason,
        };
        let mut spec = NetSpec {
            tap: String::new(),
            mac: None,
            bridge: None,
            mtu: None,
        };
        let mut seen = Vec::new();
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("{part:?} is not key=value")))?;
            if seen.contains(&k) {
                return Err(bad(format!("{k} given twice")));
            }
            seen.push(k);
            match k {
                "tap" => {
                    validate_ifname(v)?;
                    spec.tap = v.to_string();
                }
                "mac" => spec.mac = Some(v.parse()?),
                "bridge" => {
                    validate_ifname(v)?;
                    spec.bridge = Some(v.to_string());
                }
                "mtu" => {
                    spec.mtu = Some(
                        v.parse()
                            .map_err(|_| bad(format!("mtu {v:?} is not a number up to 65535")))?,
                    )
                }
                _ => return Err(bad(format!("unknown key {k:?}"))),
            }
        }
        if spec.tap.is_empty() {
            return Err(bad("tap=NAME is required".into()));
        }
        Ok(spec)
    }
}

impl NetSpec {
    /// Create the tap (transient, up, with the MTU), attach it to the
    /// bridge, and build the virtio-net device. Needs CAP_NET_ADMIN.
    pub fn build(&self) -> Result<Net<Tap>, SpecError> {
        self.build_sharing(false)
    }

    /// [`NetSpec::build`], joining the tap when another process holds it with
    /// `shared` (a live migration's destination: see [`crate::tap_share`]).
    pub fn build_sharing(&self, shared: bool) -> Result<Net<Tap>, SpecError> {
        let tap = Tap::open(
            &self.tap,
            &TapOptions {
                mtu: self.mtu.map(u32::from),
                shared,
                ..TapOptions::default()
            },
        )?;
        if let Some(br) = &self.bridge {
            bridge::attach(br, tap.name())?;
        }
        let mac = match self.mac {
            Some(m) => m,
            None => MacAddr::random_local()?,
        };
        Ok(Net::new(tap, mac, self.mtu)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        let s: NetSpec = "tap=vm0,mac=52:54:00:00:00:01,bridge=br0,mtu=9000"
            .parse()
            .unwrap();
        assert_eq!(
            s,
            NetSpec {
                tap: "vm0".into(),
                mac: Some("52:54:00:00:00:01".parse().unwrap()),
                bridge: Some("br0".into()),
                mtu: Some(9000),
            }
        );
        let s: NetSpec = "tap=vm1".parse().unwrap();
        assert_eq!((s.mac, s.bridge, s.mtu), (None, None, None));
    }

    #[test]
    fn refuses_bad_specs() {
        for bad in [
            "",
            "mac=52:54:00:00:00:01",
            "tap=",
            "tap=a-name-longer-than-15",
            "tap=vm0,mac=zz",
            "tap=vm0,bridge=",
            "tap=vm0,mtu=70000",
            "tap=vm0,tap=vm1",
            "tap=vm0,junk",
            "tap=vm0,color=blue",
        ] {
            let e = bad.parse::<NetSpec>().unwrap_err();
            assert!(!e.to_string().is_empty(), "{bad:?}");
        }
        let e = "tap=vm0,color=blue".parse::<NetSpec>().unwrap_err();
        assert!(e.to_string().contains("unknown key \"color\""), "{e}");
    }
}
