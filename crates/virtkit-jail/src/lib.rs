//! A jail for a VMM, or any process, built from virtkit's namespaces and cgroups crates,
//! after Firecracker's jailer: the process sees only the files it was given, in new mount,
//! PID, IPC and UTS namespaces (and a new network namespace when asked), under a cgroup
//! with memory, CPU and task limits, and drops to an unprivileged uid and gid with no
//! capabilities once its devices are open.
//!
//! - [`JailConfig`]: the id, the root on the host, the identity, the files and devices,
//!   the limits; [`JailConfig::validate`] refuses a root that is not empty or not
//!   writable, an unknown uid, limits that make no sense, before anything is made.
//! - [`Jail::run`] makes the cgroup and the root's mount points, starts a child in the
//!   namespaces that binds the files into the root and pivots into it
//!   ([`inside::enter_root`], through virtkit-namespaces' `Syscalls`), runs a closure
//!   there ([`Inside`]), waits, and removes everything; a cleaner process does the same if
//!   the supervisor is killed.
//! - [`Inside::drop_privileges`]: `setgroups`, `setresgid`, `setresuid`, the bounding and
//!   ambient sets emptied, `no_new_privs`, checked in `/proc/self/status`.
//!
//! ```no_run
//! use virtkit_jail::{Jail, JailConfig};
//!
//! # fn main() -> Result<(), virtkit_jail::JailError> {
//! let mut config = JailConfig::new("vm1", "/srv/jail/vm1", 65534, 65534)
//!     .file("/dev/kvm", false)
//!     .file("/images/vmlinux", true);
//! config.new_netns = true;
//! config.limits.memory_bytes = Some(512 << 20);
//! let status = Jail::new(config)?.run(|inside| {
//!     let kvm = std::fs::File::open("/dev/kvm"); // opened as root, inside the jail
//!     if inside.drop_privileges().is_err() || kvm.is_err() {
//!         return 1;
//!     }
//!     // ... run the VMM as uid 65534 with no capabilities ...
//!     0
//! })?;
//! println!("the jailed process ended with {status}");
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod config;
mod error;
pub mod inside;
mod jail;

pub use config::{JailConfig, JailFile, JailLimits, MIN_MEMORY, MIN_PIDS};
pub use error::JailError;
pub use jail::{Inside, Jail};
