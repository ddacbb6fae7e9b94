//! The OCI container runtime of virtkit, as a library: the lifecycle of the
//! [OCI runtime spec](https://github.com/opencontainers/runtime-spec) (create, start,
//! state, kill, delete) and runc's extra verbs (run, exec, pause, resume, update, ps,
//! events, features), over virtkit-namespaces (namespaces, rootfs, id maps),
//! virtkit-cgroups (v1 and v2) and virtkit-seccomp.
//!
//! A [`Runtime`] is a state root (runc's `--root`, one directory per container:
//! [`state::Container`]) and the [`Host`] it acts through. Its verbs are methods, one
//! module per verb as youki's `libcontainer` lays them out: [`Runtime::create`],
//! [`Runtime::start`], [`Runtime::run`], [`Runtime::exec`], [`Runtime::kill`],
//! [`Runtime::delete`], [`Runtime::pause`] / [`Runtime::resume`], [`Runtime::update`],
//! [`Runtime::pids`], [`Runtime::stats`], [`Runtime::list`], [`Runtime::state`]; and
//! [`features()`]. Signals, process liveness, cgroups, hooks and the runtime's own
//! children (spawned, talked to over a [`host::Channel`], reaped) go through [`Host`]:
//! [`LinuxHost`] is the kernel, `testing::RecordingHost` (feature `test-utils`) records
//! every call, fakes processes and cgroups and scripts the children, so every verb,
//! `create` and `exec` included, has unit tests without root. Errors are [`Error`]s: a kind a caller can match
//! ([`Error::NotFound`], [`Error::Exists`], [`Error::Invalid`]) under context lines
//! naming each step.
//!
//! `examples/container-runner` is runc's command line over this crate; podman, Docker
//! and containerd drive it as their runtime.
//!
//! ```no_run
//! use virtkit_runtime::{cloned, CreateOpts, Runtime};
//!
//! # fn main() -> Result<(), virtkit_runtime::Error> {
//! cloned::ensure()?; // first thing in main (see below)
//! let rt = Runtime::new("/run/my-runtime");
//! // A bundle made by `umoci unpack`, `podman` or by hand: config.json and rootfs/.
//! rt.create(&CreateOpts::new("web", "/srv/bundles/web"))?;
//! rt.start("web")?;
//! println!("{}", rt.state("web")?);
//! rt.kill("web", libc::SIGTERM, false)?;
//! rt.delete("web", true)?;
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
pub mod host;
mod init;
mod kill;
mod list;
mod lsm;
mod notify;
mod pause;
mod placement;
mod process;
mod ps;
mod run;
mod runtime;
mod spec;
mod start;
pub mod state;
mod sys;
mod sysctl;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
mod update;
mod util;

pub use create::CreateOpts;
pub use error::{Error, Result};
pub use exec::ExecOpts;
pub use features::{features, OCI_VERSION};
pub use host::{Host, LinuxHost};
pub use ps::filter_ps_table;
pub use runtime::Runtime;
pub use spec::example_spec;
pub use update::{parse_size, UpdateFlags};
pub use util::{parse_signal, rfc3339_now};
