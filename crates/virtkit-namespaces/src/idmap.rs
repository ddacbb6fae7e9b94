//! uid and gid maps for user namespaces.

use std::path::PathBuf;

use crate::syscalls::{SyscallError, Syscalls};

/// Errors from writing id maps.
#[derive(Debug, thiserror::Error)]
pub enum IdMapError {
    /// A mapping with size 0 or that overflows 32 bits.
    #[error("invalid id mapping: container {container_id} host {host_id} size {size}")]
    Invalid {
        /// First id inside.
        container_id: u32,
        /// First id outside.
        host_id: u32,
        /// Number of ids.
        size: u32,
    },
    /// More lines than the kernel accepts (340).
    #[error("{0} id mappings (the kernel accepts at most 340)")]
    TooMany(usize),
    /// Writing the map file failed.
    #[error(transparent)]
    Sys(#[from] SyscallError),
}

/// One line of a uid or gid map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMapping {
    /// First id inside the namespace.
    pub container_id: u32,
    /// First id outside.
    pub host_id: u32,
    /// How many ids.
    pub size: u32,
}

/// Renders mappings in the kernel's `uid_map` format, validating them.
pub fn format_map(maps: &[IdMapping]) -> Result<String, IdMapError> {
    if maps.len() > 340 {
        return Err(IdMapError::TooMany(maps.len()));
    }
    let mut s = String::new();
    for m in maps {
        let bad = m.size == 0
            || m.container_id.checked_add(m.size - 1).is_none()
            || m.host_id.checked_add(m.size - 1).is_none();
        if bad {
            return Err(IdMapError::Invalid {
                container_id: m.container_id,
                host_id: m.host_id,
                size: m.size,
            });
        }
        s.push_str(&format!("{} {} {}\n", m.container_id, m.host_id, m.size));
    }
    Ok(s)
}

/// Writes the uid and gid maps of process `pid` (which must be in a new user namespace
/// and not yet have maps). `deny_setgroups` writes "deny" to `setgroups` first, as an
/// unprivileged writer must.
pub fn write_id_maps(
    sys: &impl Syscalls,
    pid: i32,
    uid_maps: &[IdMapping],
    gid_maps: &[IdMapping],
    deny_setgroups: bool,
) -> Result<(), IdMapError> {
    let base = PathBuf::from(format!("/proc/{pid}"));
    let uid = format_map(uid_maps)?;
    let gid = format_map(gid_maps)?;
    if !uid.is_empty() {
        sys.write_file(&base.join("uid_map"), uid.as_bytes())?;
    }
    if deny_setgroups {
        sys.write_file(&base.join("setgroups"), b"deny")?;
    }
    if !gid.is_empty() {
        sys.write_file(&base.join("gid_map"), gid.as_bytes())?;
    }
    Ok(())
}
