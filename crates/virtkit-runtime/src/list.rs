//! `list`: every container under a state root.

use crate::state::Container;
use crate::Runtime;

impl Runtime {
    /// The containers under the state root, sorted by id. Directories whose state
    /// cannot be read (a `create` that died half-way and was never deleted) are left
    /// out, as runc does.
    pub fn list(&self) -> Vec<Container> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.root()) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                if let Ok(c) = self.load(&id) {
                    out.push(c);
                }
            }
        }
        out.sort_by(|a, b| a.saved.id.cmp(&b.saved.id));
        out
    }
}
