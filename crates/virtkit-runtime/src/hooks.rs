//! OCI hooks: run with the container state on stdin, honouring `timeout`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Spec};

use crate::error::{bail, Context, Result};
use crate::host::Host;
use crate::spec::{hook_state, load_spec};
use crate::state::Container;

/// The hooks that run after the container's process started or ended, whose failure
/// is only logged (the spec: a poststart or poststop hook failure does not undo the
/// operation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// After `start`.
    Start,
    /// After `delete`.
    Stop,
}

/// Runs the poststart or poststop hooks of `spec` (read from the bundle when `None`)
/// for container `c`; a failure is logged as a warning.
pub(crate) fn run_after(host: &dyn Host, c: &Container, spec: Option<&Spec>, when: After) {
    let loaded;
    let spec = match spec {
        Some(s) => s,
        None => match load_spec(&c.saved.bundle) {
            Ok(s) => {
                loaded = s;
                &loaded
            }
            Err(_) => return,
        },
    };
    let Some(hooks) = spec.hooks().as_ref() else {
        return;
    };
    let (kind, list, status) = match when {
        After::Start => ("poststart", hooks.poststart(), "running"),
        After::Stop => ("poststop", hooks.poststop(), "stopped"),
    };
    if let Some(list) = list.as_deref().filter(|l| !l.is_empty()) {
        // The spec: a failing poststart or poststop hook is a warning, and the remaining
        // hooks still run.
        let state = hook_state(host, c, status);
        for h in list {
            if let Err(e) = host.run_hooks(kind, std::slice::from_ref(h), &state) {
                log::warn!("{}", crate::error::chain(&e));
            }
        }
    }
}

/// Runs `hooks` in order; the first failure stops and is returned. A hook without `env`
/// gets an empty environment.
pub fn run(kind: &str, hooks: &[Hook], state_json: &[u8]) -> Result<()> {
    run_with_env(kind, hooks, state_json, &[])
}

/// [`run`], where a hook that sets no `env` gets `default_env` (the container process's
/// environment, for startContainer hooks, as runc gives them).
pub fn run_with_env(
    kind: &str,
    hooks: &[Hook],
    state_json: &[u8],
    default_env: &[std::ffi::CString],
) -> Result<()> {
    for h in hooks {
        let path = h.path();
        let args = h.args().clone().unwrap_or_default();
        let mut cmd = Command::new(path);
        if let Some((a0, rest)) = args.split_first() {
            use std::os::unix::process::CommandExt;
            cmd.arg0(a0);
            cmd.args(rest);
        }
        cmd.env_clear();
        match h.env() {
            Some(env) => {
                for e in env {
                    if let Some((k, v)) = e.split_once('=') {
                        cmd.env(k, v);
                    }
                }
            }
            None => {
                for e in default_env {
                    let e = e.to_string_lossy();
                    if let Some((k, v)) = e.split_once('=') {
                        cmd.env(k, v);
                    }
                }
            }
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::null());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("{kind} hook {}", path.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A hook that does not read its stdin is fine.
            let _ = stdin.write_all(state_json);
        }
        let deadline = h
            .timeout()
            .filter(|t| *t > 0)
            .map(|t| Instant::now() + Duration::from_secs(t as u64));
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{kind} hook {} timed out", path.display());
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        if !status.success() {
            bail!("{kind} hook {} failed: {status}", path.display());
        }
    }
    Ok(())
}
