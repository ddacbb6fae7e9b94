//! Cleaning up after crashes: a container whose monitor died (killed, the host process
//! crashed) is marked exited and its network, runtime state and leftovers removed; NAT
//! rules and network namespaces of containers that do not run go too. Every command of
//! the CLI runs this first, so a restart cleans up what a dead container left.

use virtkit_net::firewall;
use virtkit_net::netns::NetNs;

use crate::record::{self, Status};
use crate::{Engine, EngineError};

impl Engine {
    /// Reaps dead containers and orphaned network state; the ids reaped.
    pub fn reap(&self) -> Result<Vec<String>, EngineError> {
        let mut reaped = Vec::new();
        let all = self.list()?;
        for r in &all {
            if r.status == Status::Running && !record::monitor_alive(r) {
                log::warn!("container {}: its monitor died; cleaning up", r.id);
                self.runtime_delete(&r.id);
                self.network_down(r);
                record::update(&self.dir(&r.id), |x| {
                    x.status = Status::Exited;
                    x.monitor = None;
                    x.exit_code = Some(x.exit_code.unwrap_or(255));
                })?;
                reaped.push(r.id.clone());
            }
        }
        // A container is live while its monitor is (between restarts too).
        let live = |id: &str| all.iter().any(|r| r.id == id && record::monitor_alive(r));
        // Rules of this root's containers that do not run (only when nft is usable: a
        // host without it has no rules of ours either). Rules of ids this root does not
        // know belong to another state directory and are left alone.
        if let Ok(owners) = firewall::owners() {
            for o in owners {
                if let Some(id) = o.strip_prefix("ctr ") {
                    let ours = all.iter().any(|r| r.id == id);
                    if ours && !live(id) && firewall::remove_rules(&o).is_ok() {
                        reaped.push(id.to_string());
                    }
                }
            }
        }
        let netns = self.root.join("netns");
        if let Ok(rd) = std::fs::read_dir(&netns) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                if !live(&id) {
                    NetNs::remove(&e.path())?;
                }
            }
        }
        reaped.sort();
        reaped.dedup();
        Ok(reaped)
    }
}
