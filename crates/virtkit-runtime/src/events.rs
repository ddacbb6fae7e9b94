//! `events`: the resource usage of a container, as runc's `events --stats` reports it.

use crate::error::Result;
use crate::state::Container;
use crate::Runtime;

impl Runtime {
    /// One `events` record of container `c`, shaped like runc's (`type`, `id`, `data`
    /// with cpu, memory and pids), read from its cgroup.
    pub fn stats(&self, c: &Container) -> Result<serde_json::Value> {
        let s = self.host().cgroup(&c.saved.cgroup_path)?.stats()?;
        Ok(serde_json::json!({
            "type": "stats",
            "id": c.saved.id,
            "data": {
                "cpu": {
                    "usage": {
                        "total": s.cpu.usage_ns.unwrap_or(0),
                        "kernel": s.cpu.system_ns.unwrap_or(0),
                        "user": s.cpu.user_ns.unwrap_or(0),
                    },
                    "throttling": {
                        "periods": s.cpu.nr_periods.unwrap_or(0),
                        "throttledPeriods": s.cpu.nr_throttled.unwrap_or(0),
                        "throttledTime": s.cpu.throttled_ns.unwrap_or(0),
                    },
                },
                "memory": {
                    "usage": {
                        "usage": s.memory.usage.unwrap_or(0),
                        "max": s.memory.peak.unwrap_or(0),
                        "limit": s.memory.limit.unwrap_or(0),
                    },
                    "oom_kills": s.memory.oom_kills.unwrap_or(0),
                },
                "pids": {
                    "current": s.pids.current.unwrap_or(0),
                    "limit": s.pids.limit.unwrap_or(0),
                },
            },
        }))
    }
}
