//! The OCI container runtime of virtkit, as a library: the lifecycle of the
//! [OCI runtime spec](https://github.com/opencontainers/runtime-spec) (create, start,
//! state, kill, delete) and runc's extra verbs (run, exec, pause, resume, update, ps,
//! events, features), over virtkit-namespaces (namespaces, rootfs, id maps),
//! virtkit-cgroups (v1 and v2) and virtkit-seccomp.
//!
//! One verb per module, as youki's `libcontainer` lays it out: [`create()`],
//! [`start()`], [`run()`], [`exec()`], [`kill()`], [`delete()`], [`pause()`] /
//! [`resume()`], [`update()`], [`pids()`], [`stats()`], [`list()`], [`features()`]. State
//! lives under a root directory (runc's `--root`), one directory per container
//! ([`state::Container`]). Errors are [`Error`]s: a kind a caller can match
//! ([`Error::NotFound`], [`Error::Exists`], [`Error::Invalid`]) under context lines
//! naming each step.
//!
//! `examples/container-runner` is runc's command line over this crate; podman, Docker
//! and containerd drive it as their runtime.
//!
//! ```no_run
//! use std::path::Path;
//! use virtkit_runtime::{create, delete, kill, start, state::Container, CreateOpts};
//!
//! # fn main() -> Result<(), virtkit_runtime::Error> {
//! // A bundle made by `umoci unpack`, `podman` or by hand: config.json and rootfs/.
//! let root = Path::new("/run/my-runtime");
//! let opts = CreateOpts::new(root, "web", "/srv/bundles/web");
//! create(&opts)?;
//! start(root, "web")?;
//! let c = Container::load(root, "web")?;
//! println!("{}", c.oci_state());
//! kill(root, "web", libc::SIGTERM, false)?;
//! delete(root, "web", true)?;
//! # Ok(()) }
//! ```
//!
//! A program that embeds the runtime must call [`cloned::ensure`] first thing in
//! `main` before `create` and `exec` (it re-executes the program from a sealed copy,
//! against CVE-2019-5736), and must be single-threaded when it calls a verb that
//! starts a process (they `clone` without `CLONE_VM`, like `fork`).
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod cgroup;
pub mod cloned;
mod create;
mod delete;
mod dmz;
pub mod error;
mod events;
mod exec;
mod features;
mod hooks;
mod init;
mod kill;
mod list;
mod pause;
mod process;
mod ps;
mod run;
mod spec;
mod start;
pub mod state;
mod sys;
mod update;
mod util;

pub use create::{create, CreateOpts};
pub use delete::delete;
pub use error::{Error, Result};
pub use events::stats;
pub use exec::{exec, ExecOpts};
pub use features::{features, OCI_VERSION};
pub use kill::kill;
pub use list::list;
pub use pause::{pause, resume};
pub use ps::{filter_ps_table, pids};
pub use run::run;
pub use spec::example_spec;
pub use start::start;
pub use update::update;
pub use util::{parse_signal, rfc3339_now};
