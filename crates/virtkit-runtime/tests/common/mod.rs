//! Shared by the tests on the recording host: a minimal valid bundle.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// A bundle `dir/bundle` with an empty rootfs and a minimal valid config (`true` as
/// root, a mount and a PID namespace), changed by `edit`.
pub fn bundle(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let b = dir.join("bundle");
    std::fs::create_dir_all(b.join("rootfs")).unwrap();
    let mut cfg = serde_json::json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}]},
    });
    edit(&mut cfg);
    std::fs::write(b.join("config.json"), cfg.to_string()).unwrap();
    b
}
