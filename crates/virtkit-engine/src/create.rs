//! `create`: a container record, its bundle (an overlayfs root over the image's layers
//! and a `config.json` from the image config and the options), its hosts and resolv.conf
//! files. Nothing is left when it fails.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use virtkit_image::RunOptions;
use virtkit_net::ipam::DEFAULT_NETWORK;
use virtkit_net::ports::PortMapping;

use crate::record::{self, NetworkMode, Record, RestartPolicy, Status};
use crate::{Engine, EngineError};

/// What `create` (and `run`) takes.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// The image.
    pub image: String,
    /// The name (a generated one when `None`).
    pub name: Option<String>,
    /// Command, environment, user, binds... over the image's config.
    pub run: RunOptions,
    /// `-v SRC:DST[:ro]` specs: host paths or named volumes.
    pub volumes: Vec<String>,
    /// `--network`: a network's name, `none` or `host` (default: the default network).
    pub network: Option<String>,
    /// `-p` specs.
    pub ports: Vec<String>,
    /// `--restart`.
    pub restart: RestartPolicy,
    /// `--rm`.
    pub auto_remove: bool,
    /// `--memory` in bytes.
    pub memory: Option<i64>,
    /// `--cpus`.
    pub cpus: Option<f64>,
    /// `--pids-limit`.
    pub pids_limit: Option<i64>,
}

/// A name Docker would take: letters, digits, `_ . -`, not starting with punctuation.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Whether an image's StopSignal is a signal name or number (it becomes an argument of
/// the runtime's `kill`: anything else, such as `--all`, is ignored for SIGTERM).
pub fn valid_signal(s: &str) -> bool {
    let name = s.strip_prefix("SIG").unwrap_or(s);
    let first_upper = name.bytes().next().is_some_and(|b| b.is_ascii_uppercase());
    let numeric = !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit());
    let named = first_upper
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'+' || b == b'-');
    name.len() <= 12 && (numeric || named)
}

fn random_id() -> Result<String, EngineError> {
    let mut b = [0u8; 32];
    let p = std::path::Path::new("/dev/urandom");
    std::io::Read::read_exact(
        &mut std::fs::File::open(p).map_err(EngineError::io("cannot open", p))?,
        &mut b,
    )
    .map_err(EngineError::io("cannot read", p))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Docker's default capabilities (moby's `oci/caps/defaults.go`): what services such as
/// Apache need to drop privileges (SETUID, SETGID, CHOWN...), nothing that reaches the
/// host (no SYS_ADMIN, NET_ADMIN, SYS_MODULE...).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Sets the namespaces and resources of `spec` (as JSON) for `mode` and the limits, and
/// Docker's default capabilities.
fn adjust_spec(
    spec: oci_spec::runtime::Spec,
    netns: Option<&std::path::Path>,
    host_network: bool,
    o: &CreateOptions,
) -> Result<oci_spec::runtime::Spec, EngineError> {
    let bad = |e: serde_json::Error| EngineError::BadOption(format!("runtime spec: {e}"));
    let mut v = serde_json::to_value(&spec).map_err(bad)?;
    if let Some(p) = v.get_mut("process").and_then(Value::as_object_mut) {
        let caps = json!(DEFAULT_CAPABILITIES);
        p.insert(
            "capabilities".into(),
            json!({"bounding": caps, "effective": caps, "permitted": caps}),
        );
    }
    let linux = v
        .as_object_mut()
        .map(|o| o.entry("linux").or_insert_with(|| json!({})));
    if let Some(Value::Object(linux)) = linux {
        if let Some(Value::Array(ns)) = linux.get_mut("namespaces") {
            ns.retain(|n| !(host_network && n["type"] == "network"));
            if let Some(path) = netns {
                for n in ns.iter_mut().filter(|n| n["type"] == "network") {
                    n["path"] = json!(path);
                }
            }
        }
        let res = linux.entry("resources").or_insert_with(|| json!({}));
        if let Some(m) = o.memory {
            res["memory"] = json!({ "limit": m });
        }
        if let Some(c) = o.cpus {
            if !(c > 0.0 && c <= 1024.0) {
                return Err(EngineError::BadOption(format!(
                    "--cpus {c}: must be more than 0"
                )));
            }
            res["cpu"] = json!({ "quota": (c * 100_000.0) as i64, "period": 100_000u64 });
        }
        if let Some(p) = o.pids_limit {
            res["pids"] = json!({ "limit": p });
        }
    }
    serde_json::from_value(v).map_err(bad)
}

impl Engine {
    /// Creates a container (not started).
    pub fn create(&self, o: &CreateOptions) -> Result<Record, EngineError> {
        let network = match o.network.as_deref() {
            None => NetworkMode::Bridge(DEFAULT_NETWORK.into()),
            Some("none") => NetworkMode::None,
            Some("host") => NetworkMode::Host,
            Some(n) => {
                self.networks.get(n)?;
                NetworkMode::Bridge(n.to_string())
            }
        };
        let ports = o
            .ports
            .iter()
            .map(|p| p.parse::<PortMapping>())
            .collect::<Result<Vec<_>, _>>()?;
        if !ports.is_empty() && !matches!(network, NetworkMode::Bridge(_)) {
            return Err(EngineError::BadOption(
                "-p needs a bridge network (not --network none or host)".into(),
            ));
        }
        let mut run = o.run.clone();
        for v in &o.volumes {
            run.binds.push(self.bind(v)?);
        }
        let id = random_id()?;
        let _names = record::lock(&self.containers_dir().join(".lock"))?;
        let name = match &o.name {
            Some(n) if !valid_name(n) => {
                return Err(EngineError::BadOption(format!(
                    "invalid container name {n:?}: letters, digits, '_', '.', '-'"
                )))
            }
            Some(n) => n.clone(),
            None => format!("vk_{}", &id[..10]),
        };
        if let Some(other) = self.list()?.into_iter().find(|r| r.name == name) {
            return Err(EngineError::NameInUse { name, id: other.id });
        }
        let dir = self.dir(&id);
        std::fs::create_dir(&dir).map_err(EngineError::io("cannot create", &dir))?;
        let made = self.create_in(&dir, &id, &name, o, network, ports, run);
        if made.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        made
    }

    #[allow(clippy::too_many_arguments)]
    fn create_in(
        &self,
        dir: &std::path::Path,
        id: &str,
        name: &str,
        o: &CreateOptions,
        network: NetworkMode,
        ports: Vec<PortMapping>,
        mut run: RunOptions,
    ) -> Result<Record, EngineError> {
        if run.hostname.is_none() {
            run.hostname = Some(id[..12].to_string());
        }
        if network != NetworkMode::Host {
            let hosts = dir.join("hosts");
            let resolv = dir.join("resolv.conf");
            crate::hosts::write_hosts(&hosts, &[])?;
            crate::hosts::write_resolv_conf(&resolv)?;
            for (src, dst) in [(hosts, "/etc/hosts"), (resolv, "/etc/resolv.conf")] {
                run.binds.push(virtkit_image::Bind {
                    source: src,
                    destination: dst.into(),
                    read_only: true,
                });
            }
        }
        let netns = matches!(network, NetworkMode::Bridge(_)).then(|| self.netns_path(id));
        let base = adjust_spec(
            virtkit_runtime::example_spec(),
            netns.as_deref(),
            network == NetworkMode::Host,
            o,
        )?;
        let bundle = self
            .store
            .create_bundle(&o.image, &dir.join("bundle"), base, &run)?;
        let rec = (|| {
            let cfg = std::fs::read(bundle.dir.join("config.json")).map_err(EngineError::io(
                "cannot read",
                bundle.dir.join("config.json"),
            ))?;
            let spec: oci_spec::runtime::Spec = serde_json::from_slice(&cfg)
                .map_err(|e| EngineError::BadOption(format!("runtime spec: {e}")))?;
            let command = spec
                .process()
                .as_ref()
                .and_then(|p| p.args().clone())
                .unwrap_or_default();
            let stop_signal = spec
                .annotations()
                .as_ref()
                .and_then(|a| {
                    a.get(virtkit_image::config::annotations::STOP_SIGNAL)
                        .cloned()
                })
                .filter(|s| valid_signal(s))
                .unwrap_or_else(|| "SIGTERM".into());
            let rec = Record {
                id: id.to_string(),
                name: name.to_string(),
                image: o.image.clone(),
                command,
                created: now(),
                status: Status::Created,
                exit_code: None,
                monitor: None,
                network,
                ip: None,
                ports,
                restart: o.restart,
                restarts: 0,
                stopped_by_user: false,
                auto_remove: o.auto_remove,
                stop_signal,
            };
            record::save(dir, &rec)?;
            Ok(rec)
        })();
        if rec.is_err() {
            let _ = bundle.remove();
        }
        rec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["web", "web-1", "a.b_c", "0x"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-web", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn stop_signals_from_images_are_checked() {
        for ok in ["SIGTERM", "SIGRTMIN+3", "QUIT", "15", "SIGWINCH"] {
            assert!(valid_signal(ok), "{ok}");
        }
        for bad in [
            "",
            "--all",
            "-9",
            "SIG",
            "sigterm",
            "TERM; rm",
            &"A".repeat(20),
        ] {
            assert!(!valid_signal(bad), "{bad}");
        }
    }

    #[test]
    fn spec_gets_the_network_path_and_limits() {
        let o = CreateOptions {
            memory: Some(64 << 20),
            cpus: Some(0.5),
            pids_limit: Some(100),
            ..CreateOptions::default()
        };
        let p = std::path::Path::new("/run/x/netns/abc");
        let s = adjust_spec(virtkit_runtime::example_spec(), Some(p), false, &o).unwrap();
        let v = serde_json::to_value(&s).unwrap();
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(ns
            .iter()
            .any(|n| n["type"] == "network" && n["path"] == "/run/x/netns/abc"));
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 100);
        let caps = v["process"]["capabilities"]["effective"]
            .as_array()
            .unwrap();
        assert!(caps.iter().any(|c| c == "CAP_SETUID"));
        assert!(!caps.iter().any(|c| c == "CAP_SYS_ADMIN"));
        let host = adjust_spec(
            virtkit_runtime::example_spec(),
            None,
            true,
            &CreateOptions::default(),
        )
        .unwrap();
        let v = serde_json::to_value(&host).unwrap();
        assert!(!v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "network"));
        let bad = CreateOptions {
            cpus: Some(-1.0),
            ..CreateOptions::default()
        };
        assert!(adjust_spec(virtkit_runtime::example_spec(), None, false, &bad).is_err());
    }
}
