//! container-runner: an OCI runtime with runc's command line, built on
//! virtkit-namespaces and virtkit-cgroups.
#![cfg_attr(test, allow(clippy::unwrap_used))]
// Our own C `main` (below): the runtime starts twice per container (see `cloned`), and
// std's start-up (reading /proc/self/maps for the main thread's stack guard, an
// alternate signal stack) is work neither start needs.
#![cfg_attr(not(test), no_main)]

mod args;
mod log;

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use args::{Cli, Cmd};
use clap::Parser;
use virtkit_runtime::state::Status;
use virtkit_runtime::{cloned, ExecOpts, Runtime, OCI_VERSION};

fn default_root() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|x| !x.is_empty()) {
            return PathBuf::from(x).join("virtkit");
        }
    }
    PathBuf::from("/run/virtkit")
}

fn list(rt: &Runtime, quiet: bool, format: &str) -> Result<()> {
    let out = rt.list();
    let mut so = std::io::stdout().lock();
    if quiet {
        for c in &out {
            writeln!(so, "{}", c.saved.id)?;
        }
        return Ok(());
    }
    match format {
        "json" => {
            let v: Vec<serde_json::Value> = out
                .iter()
                .map(|c| {
                    let s = c.oci_state(rt.host());
                    serde_json::json!({
                        "ociVersion": s["ociVersion"], "id": s["id"], "pid": s["pid"],
                        "status": s["status"], "bundle": s["bundle"], "rootfs": s["rootfs"],
                        "created": s["created"], "annotations": s["annotations"], "owner": s["owner"],
                    })
                })
                .collect();
            writeln!(so, "{}", serde_json::Value::from(v))?;
        }
        "table" => {
            writeln!(so, "ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER")?;
            for c in &out {
                let s = c.oci_state(rt.host());
                writeln!(
                    so,
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    c.saved.id,
                    s["pid"],
                    s["status"].as_str().unwrap_or(""),
                    c.saved.bundle.display(),
                    c.saved.created,
                    if c.saved.owner.is_empty() {
                        "root"
                    } else {
                        &c.saved.owner
                    }
                )?;
            }
        }
        f => bail!("invalid format {f:?} (table or json)"),
    }
    Ok(())
}

fn ps(rt: &Runtime, id: &str, format: &str, ps_args: &[String]) -> Result<()> {
    let pids = rt.pids(id)?;
    match format {
        "json" => println!("{}", serde_json::Value::from(pids)),
        "table" => {
            // runc runs ps(1) and keeps the header plus lines of the container's pids.
            let args: Vec<String> = if ps_args.is_empty() {
                vec!["-ef".into()]
            } else {
                ps_args.to_vec()
            };
            let out = std::process::Command::new("ps")
                .args(&args)
                .output()
                .context("run ps")?;
            let text = String::from_utf8_lossy(&out.stdout);
            print!("{}", virtkit_runtime::filter_ps_table(&text, &pids)?);
        }
        f => bail!("invalid format {f:?} (table or json)"),
    }
    Ok(())
}

fn write_spec(bundle: &std::path::Path) -> Result<()> {
    let path = bundle.join("config.json");
    if path.exists() {
        bail!("File {} exists. Remove it first", path.display());
    }
    let spec = virtkit_runtime::example_spec();
    spec.save(&path)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

fn real_main(cli: Cli) -> Result<i32> {
    if cli.version {
        println!(
            "container-runner version {}\nspec: {OCI_VERSION}",
            env!("CARGO_PKG_VERSION")
        );
        return Ok(0);
    }
    if cli.systemd_cgroup {
        bail!("--systemd-cgroup is not supported: container-runner drives cgroupfs directly (use the cgroupfs manager)");
    }
    let rt = Runtime::new(cli.root.clone().unwrap_or_else(default_root));
    let Some(cmd) = cli.cmd else {
        bail!("no command given (see --help)");
    };
    match cmd {
        Cmd::Create { args, id } => {
            cloned::ensure()?;
            rt.create(&args.opts(id))?;
        }
        Cmd::Run { args, detach, id } => {
            // `run` guards against CVE-2019-5736 once it has read the config: through
            // the exec DMZ where that suffices, else by the re-exec (see `dmz`).
            let o = args.opts(id);
            return Ok(rt.run(&o, detach)?);
        }
        Cmd::Start { id } => rt.start(&id)?,
        Cmd::State { id } => {
            println!("{}", serde_json::to_string_pretty(&rt.state(&id)?)?);
        }
        Cmd::Kill { all, id, signal } => {
            let sig = virtkit_runtime::parse_signal(signal.as_deref().unwrap_or("SIGTERM"))?;
            rt.kill(&id, sig, all)?;
        }
        Cmd::Delete { force, id } => rt.delete(&id, force)?,
        Cmd::Exec {
            process,
            detach,
            tty,
            pid_file,
            console_socket,
            cwd,
            env,
            user,
            preserve_fds,
            cap,
            additional_gids,
            no_new_privs,
            apparmor,
            process_label,
            cgroup,
            ignore_paused,
            id,
            args,
        } => {
            cloned::ensure()?;
            let o = ExecOpts {
                caps: cap,
                additional_gids,
                no_new_privs,
                apparmor,
                process_label,
                sub_cgroup: cgroup,
                ignore_paused,
                id,
                process,
                args,
                env,
                cwd,
                user,
                tty,
                detach,
                pid_file,
                console_socket,
                preserve_fds,
            };
            return Ok(rt.exec(&o)?);
        }
        Cmd::List { quiet, format } => list(&rt, quiet, &format)?,
        Cmd::Ps {
            format,
            id,
            ps_args,
        } => ps(&rt, &id, &format, &ps_args)?,
        Cmd::Pause { id } => rt.pause(&id)?,
        Cmd::Resume { id } => rt.resume(&id)?,
        Cmd::Update {
            resources,
            flags,
            id,
        } => {
            let flags = flags.to_flags()?;
            let data = match resources.as_deref() {
                None if !flags.is_empty() => None,
                None | Some("-") => {
                    let mut v = Vec::new();
                    std::io::stdin().read_to_end(&mut v)?;
                    Some(v)
                }
                Some(f) => Some(std::fs::read(f).with_context(|| format!("read {f}"))?),
            };
            let mut r: oci_spec::runtime::LinuxResources = match data {
                Some(d) => serde_json::from_slice(&d).context("parse resources JSON")?,
                None => Default::default(),
            };
            flags.apply_to(&mut r)?;
            rt.update_resources(&id, &r)?;
        }
        Cmd::Events {
            stats,
            interval,
            id,
        } => {
            let secs: f64 = interval
                .trim_end_matches('s')
                .parse()
                .with_context(|| format!("invalid --interval {interval:?}"))?;
            loop {
                let c = rt.load(&id)?;
                if rt.status(&c) == Status::Stopped {
                    if stats {
                        bail!("container {id} is not running");
                    }
                    break;
                }
                println!("{}", rt.stats(&c)?);
                if stats {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_secs_f64(secs.max(0.1)));
            }
        }
        Cmd::Features => println!(
            "{}",
            serde_json::to_string_pretty(&virtkit_runtime::features())?
        ),
        Cmd::Spec { bundle } => write_spec(&bundle)?,
    }
    Ok(0)
}

/// The subcommand in `args` (after the program name and runc's global flags), without
/// a full parse.
fn peek_command(args: &[std::ffi::OsString]) -> Option<&str> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_str()?;
        match a {
            "--root" | "--log" | "--log-format" => {
                it.next();
            }
            _ if a.starts_with('-') => {}
            cmd => return Some(cmd),
        }
    }
    None
}

/// The C entry point, in place of std's `lang_start`: ignores SIGPIPE as std would (a
/// closed pipe is an error to report, not a reason to die), then runs [`start`].
#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // Also as std's start-up does: descriptors 0, 1 and 2 are open (on /dev/null when the
    // caller closed them), so that no file opened later lands on one and gets what is
    // meant for standard output.
    for fd in 0..3 {
        // SAFETY: F_GETFD reads a descriptor's flags; no memory is passed.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            // SAFETY: a NUL-terminated path; open returns the lowest free descriptor,
            // which is `fd`.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
    start()
}

#[cfg_attr(test, allow(dead_code))]
fn start() -> ! {
    // `create` and `exec` re-execute from a read-only copy of the binary (CVE-2019-5736,
    // see `cloned`) before anything else, so the first image does not parse the command
    // line twice; `run` decides once it has read the config (see `dmz`). Errors are
    // reported by the second call, after logging is set up.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if matches!(peek_command(&args), Some("create" | "exec")) {
        let _ = cloned::ensure();
    }
    let cli = Cli::parse_from(args);
    log::init(log::LogConfig {
        file: cli.log.clone(),
        json: cli.log_format == "json",
    });
    if cli.log_format != "text" && cli.log_format != "json" {
        log::error(&format!(
            "invalid log format {:?} (text or json)",
            cli.log_format
        ));
        std::process::exit(1);
    }
    match real_main(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            log::error(&format!("{e:#}"));
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::peek_command;

    fn peek(args: &[&str]) -> Option<String> {
        let v: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        peek_command(&v).map(str::to_string)
    }

    #[test]
    fn peeks_the_subcommand_past_global_flags() {
        assert_eq!(peek(&["cr", "run", "x"]).as_deref(), Some("run"));
        assert_eq!(
            peek(&[
                "cr",
                "--root",
                "/r",
                "--log",
                "run",
                "--log-format",
                "json",
                "create"
            ])
            .as_deref(),
            Some("create")
        );
        assert_eq!(
            peek(&["cr", "--debug", "--root=/r", "exec", "id"]).as_deref(),
            Some("exec")
        );
        assert_eq!(peek(&["cr", "--root", "run"]), None);
        assert_eq!(peek(&["cr"]), None);
    }
}
