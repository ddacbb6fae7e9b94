//! `rm`: a stopped container's bundle (overlay root and upper layer), runtime state,
//! network leftovers and record; `force` kills a running one first.

use std::time::Duration;

use crate::record::{self, Status};
use crate::{Engine, EngineError};

impl Engine {
    /// Removes container `name`; with `force`, also the directory of a container whose
    /// record is corrupt, named by its full id.
    pub fn remove(&self, name: &str, force: bool) -> Result<(), EngineError> {
        let r = match self.lookup(name) {
            Ok(r) => r,
            Err(EngineError::NoSuchContainer(_))
                if force
                    && !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_hexdigit())
                    && self.dir(name).join("record.json").is_file() =>
            {
                return self.remove_broken(name);
            }
            Err(e) => return Err(e),
        };
        let me = std::process::id() as i32;
        let is_me = r.monitor.is_some_and(|(p, _)| p == me);
        if r.status == Status::Running && record::monitor_alive(&r) && !is_me {
            if !force {
                return Err(EngineError::State {
                    name: r.name,
                    why: "is running: stop it first, or remove it with -f".into(),
                });
            }
            self.stop(&r.id, Duration::ZERO)?;
        }
        self.runtime_delete(&r.id);
        self.network_down(&r);
        self.remove_files(&r.id)
    }

    /// Unmounts container `id`'s root and deletes its directory (bundle, record, log).
    fn remove_files(&self, id: &str) -> Result<(), EngineError> {
        let dir = self.dir(id);
        let bundle = virtkit_image::bundle::Bundle {
            rootfs: dir.join("bundle").join("rootfs"),
            dir: dir.join("bundle"),
        };
        bundle.remove()?;
        std::fs::remove_dir_all(&dir).map_err(EngineError::io("cannot remove", &dir))
    }

    /// Removes what is left of a container whose record cannot be read: its runtime
    /// state, network, root's mount and directory.
    fn remove_broken(&self, id: &str) -> Result<(), EngineError> {
        self.runtime_delete(id);
        // Its network, if it had one.
        self.links_down(id)?;
        self.networks.release(id)?;
        self.remove_files(id)
    }
}
