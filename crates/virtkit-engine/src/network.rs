//! A container's network while it runs: set up by its monitor before each start, torn
//! down after each exit (and by [`crate::reap`] for a monitor that died).

use virtkit_net::container::{attach, detach, host_ifname, publish, remove_network};
use virtkit_net::netns::NetNs;
use virtkit_net::ports::reserve;

use crate::record::{self, NetworkMode, Record};
use crate::{Engine, EngineError};

impl Engine {
    /// Makes the network namespace, veth, address and published ports of `r`; records
    /// the address and the chosen host ports. Undone when it fails.
    pub(crate) fn network_up(&self, r: &Record) -> Result<Record, EngineError> {
        let NetworkMode::Bridge(name) = &r.network else {
            return Ok(r.clone());
        };
        // What a crash left goes first: a stale namespace file or veth. (A lease left
        // behind is handed back by `allocate`; the hosts files are refreshed once the
        // container runs.)
        if let Err(e) = self.links_down(&r.id) {
            log::warn!("container {}: {e}", r.id);
        }
        let done = (|| {
            let ns = NetNs::create(&self.netns_path(&r.id))?;
            let (net, ip) = self.networks.allocate(name, &r.id)?;
            attach(&net, ip, &ns, &host_ifname(&r.id))?;
            let mut ports = r.ports.clone();
            for p in &mut ports {
                let asked = *p;
                reserve(p).map_err(|source| EngineError::PortInUse {
                    port: asked.to_string(),
                    source,
                })?;
            }
            publish(&r.id, ip, &ports)?;
            let rec = record::update(&self.dir(&r.id), |x| {
                x.ip = Some(ip);
                x.ports = ports;
            })?;
            // Every container of the network (this one too) knows the others by name
            // before this one's process starts.
            if let Err(e) = self.refresh_hosts(name) {
                log::warn!("network {name}: {e}");
            }
            Ok(rec)
        })();
        if done.is_err() {
            self.network_down(r);
        }
        done
    }

    /// Removes what [`Engine::network_up`] made; idempotent, errors only logged (each
    /// part is tried).
    pub(crate) fn network_down(&self, r: &Record) {
        let NetworkMode::Bridge(name) = &r.network else {
            return;
        };
        if let Err(e) = self.links_down(&r.id) {
            log::warn!("container {}: {e}", r.id);
        }
        if let Err(e) = self.networks.release(&r.id) {
            log::warn!("container {}: {e}", r.id);
        }
        let _ = record::update(&self.dir(&r.id), |x| x.ip = None);
        if let Err(e) = self.refresh_hosts(name) {
            log::warn!("network {name}: {e}");
        }
    }

    /// Removes container `id`'s rules, veth and network namespace (each a no-op when
    /// absent); a failed rule or veth removal is only logged, so the namespace still
    /// goes.
    pub(crate) fn links_down(&self, id: &str) -> Result<(), EngineError> {
        if let Err(e) = detach(id, &host_ifname(id)) {
            log::warn!("container {id}: {e}");
        }
        NetNs::remove(&self.netns_path(id))?;
        Ok(())
    }

    /// Removes network `name`: its record (refused while containers hold addresses on
    /// it), then its bridge and NAT rules.
    pub fn network_remove(&self, name: &str) -> Result<(), EngineError> {
        let net = self.networks.remove(name)?;
        remove_network(&net)?;
        Ok(())
    }
}
