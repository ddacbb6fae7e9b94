//! `list`: every container under a state root.

use std::path::Path;

use crate::state::Container;

/// The containers under `root`, sorted by id. Directories whose state cannot be read
/// (a `create` that died half-way and was never deleted) are left out, as runc does.
pub fn list(root: &Path) -> Vec<Container> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if let Ok(c) = Container::load(root, &id) {
                out.push(c);
            }
        }
    }
    out.sort_by(|a, b| a.saved.id.cmp(&b.saved.id));
    out
}
