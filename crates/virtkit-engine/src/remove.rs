//! `rm`: a stopped container's bundle (overlay root and upper layer), runtime state,
//! network leftovers and record; `force` kills a running one first.

use std::time::Duration;

use crate::record::{self, Status};
use crate::{Engine, EngineError};

impl Engine {
    /// Removes container `name`.
    pub fn remove(&self, name: &str, force: bool) -> Result<(), EngineError> {
        let r = self.lookup(name)?;
        let dir = self.dir(&r.id);
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
        let bundle = virtkit_image::bundle::Bundle {
            rootfs: dir.join("bundle").join("rootfs"),
            dir: dir.join("bundle"),
        };
        bundle.remove()?;
        std::fs::remove_dir_all(&dir).map_err(EngineError::io("cannot remove", &dir))
    }
}
