//! Containers from images, run as Docker and podman run them, built from the virtkit
//! crates: the image store ([`virtkit_image`]), networks, NAT and published ports
//! ([`virtkit_net`]), and any OCI runtime binary (`container-runner`, runc, crun).
//!
//! An [`Engine`] keeps its state under one directory: `images/` (the store),
//! `containers/ID/` (each container's [`record::Record`], bundle, log and hosts file),
//! `networks/`, `netns/`, `volumes/` and `runtime/` (the runtime's own state). Every
//! command is a method, one verb per module ([`create`], [`start`], [`stop`],
//! [`remove`], [`logs`], [`exec`], [`reap`], [`build`]...). A detached container is held by a small
//! monitor process (conmon's role, [`monitor`]): it sets up the network, runs the
//! container with its output in the log, records the exit status and applies the
//! restart policy; later commands find it through the record.
//!
//! ```no_run
//! use virtkit_engine::{create::CreateOptions, Engine};
//!
//! // The monitor is this program run again with `__monitor ID` (the CLI routes it to
//! // `Engine::monitor`).
//! let exe = std::env::current_exe()?;
//! let engine = Engine::open("/var/lib/virtkit", "container-runner".into())?
//!     .with_monitor(vec![exe.into(), "__monitor".into()]);
//! let opts = CreateOptions {
//!     image: "127.0.0.1:5000/library/httpd:2".into(),
//!     ports: vec!["8080:80".into()],
//!     ..CreateOptions::default()
//! };
//! let rec = engine.create(&opts)?;
//! engine.start(&rec.id)?; // returns once the container runs
//! engine.stop(&rec.id, std::time::Duration::from_secs(10))?;
//! engine.remove(&rec.id, false)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Names and bad input never panic:
//!
//! ```
//! let d = tempfile::tempdir().unwrap();
//! let engine = virtkit_engine::Engine::open(d.path(), "runc".into()).unwrap();
//! assert!(engine.lookup("nothing-here").is_err());
//! assert!(engine.list().unwrap().is_empty());
//! ```
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod build;
pub mod create;
pub mod error;
pub mod exec;
mod hosts;
pub mod logs;
pub mod monitor;
mod network;
pub mod reap;
pub mod record;
pub mod remove;
pub mod runtime;
pub mod start;
pub mod stop;
pub mod volume;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub use error::EngineError;
use record::Record;
use virtkit_image::Store;
use virtkit_net::ipam::Networks;

/// The state directory and the tools: store, networks, runtime, monitor.
#[derive(Debug)]
pub struct Engine {
    root: PathBuf,
    store: Store,
    networks: Networks,
    runtime: PathBuf,
    monitor: Vec<OsString>,
}

impl Engine {
    /// The engine whose state is under `root` (created when missing), running containers
    /// with the OCI runtime binary `runtime`.
    pub fn open(root: impl Into<PathBuf>, runtime: PathBuf) -> Result<Engine, EngineError> {
        let root = root.into();
        for d in ["containers", "netns", "volumes"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(EngineError::io("cannot create", &p))?;
        }
        Ok(Engine {
            store: Store::open(root.join("images"))?,
            networks: Networks::open(root.join("networks"))?,
            runtime,
            monitor: Vec::new(),
            root,
        })
    }

    /// Sets the command that runs a container's monitor: the program and its first
    /// arguments, to which the container id is appended; it must call
    /// [`Engine::monitor`] with the descriptor named by [`monitor::READY_FD_ENV`].
    pub fn with_monitor(mut self, command: Vec<OsString>) -> Engine {
        self.monitor = command;
        self
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The image store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The networks.
    pub fn networks(&self) -> &Networks {
        &self.networks
    }

    /// The OCI runtime binary.
    pub fn runtime_binary(&self) -> &Path {
        &self.runtime
    }

    pub(crate) fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }

    pub(crate) fn dir(&self, id: &str) -> PathBuf {
        record::dir_of(&self.containers_dir(), id)
    }

    pub(crate) fn netns_path(&self, id: &str) -> PathBuf {
        self.root.join("netns").join(id)
    }

    /// Every container's record, oldest first (corrupt records are skipped with a
    /// warning).
    pub fn list(&self) -> Result<Vec<Record>, EngineError> {
        let dir = self.containers_dir();
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(EngineError::io("cannot list", &dir))? {
            let e = e.map_err(EngineError::io("cannot list", &dir))?;
            let p = e.path();
            if p.join("record.json").exists() {
                match record::load(&p) {
                    Ok(r) => out.push(r),
                    // One broken record must not block every command: it is skipped
                    // (`rm -f ID` removes it).
                    Err(e @ EngineError::Corrupt { .. }) => log::warn!("{e}"),
                    Err(e) => return Err(e),
                }
            }
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The container named `name`, or whose id is or starts with `name`.
    pub fn lookup(&self, name: &str) -> Result<Record, EngineError> {
        let all = self.list()?;
        if let Some(r) = all.iter().find(|r| r.name == name || r.id == name) {
            return Ok(r.clone());
        }
        let by_prefix: Vec<&Record> = all
            .iter()
            .filter(|r| name.len() >= 3 && r.id.starts_with(name))
            .collect();
        match by_prefix.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(EngineError::NoSuchContainer(name.to_string())),
            _ => Err(EngineError::BadOption(format!(
                "{name:?} matches several containers: give more of the id"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use record::{NetworkMode, RestartPolicy, Status};

    fn record(id: &str, name: &str, created: u64) -> Record {
        Record {
            id: id.into(),
            name: name.into(),
            image: "img:1".into(),
            command: vec!["true".into()],
            created,
            status: Status::Created,
            exit_code: None,
            monitor: None,
            network: NetworkMode::None,
            ip: None,
            ports: Vec::new(),
            restart: RestartPolicy::No,
            restarts: 0,
            stopped_by_user: false,
            auto_remove: false,
            stop_signal: "SIGTERM".into(),
        }
    }

    #[test]
    fn containers_are_found_by_name_id_or_unique_prefix() {
        let d = tempfile::tempdir().unwrap();
        let e = Engine::open(d.path(), "runc".into()).unwrap();
        for (id, name, t) in [("abcdef01", "web", 2), ("abc99999", "db", 1)] {
            let dir = e.dir(id);
            std::fs::create_dir(&dir).unwrap();
            record::save(&dir, &record(id, name, t)).unwrap();
        }
        // Oldest first.
        let names: Vec<String> = e.list().unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["db", "web"]);
        assert_eq!(e.lookup("web").unwrap().id, "abcdef01");
        assert_eq!(e.lookup("abc99999").unwrap().name, "db");
        assert_eq!(e.lookup("abcd").unwrap().name, "web");
        // Ambiguous, too short, unknown.
        assert!(matches!(e.lookup("abc"), Err(EngineError::BadOption(_))));
        assert!(matches!(
            e.lookup("ab"),
            Err(EngineError::NoSuchContainer(_))
        ));
        assert!(matches!(
            e.lookup("zzz"),
            Err(EngineError::NoSuchContainer(_))
        ));
        // A record changed under its lock; a corrupt one is an error, not a panic.
        let r = record::update(&e.dir("abcdef01"), |r| r.restarts = 3).unwrap();
        assert_eq!(r.restarts, 3);
        std::fs::write(e.dir("abc99999").join("record.json"), b"{").unwrap();
        assert_eq!(e.list().unwrap().len(), 1);
        assert!(e.remove("abc99999", false).is_err());
        e.remove("abc99999", true).unwrap();
        assert!(!e.dir("abc99999").exists());
    }
}
