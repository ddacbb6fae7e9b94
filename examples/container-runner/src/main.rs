//! container-runner: an OCI runtime with runc's command line, built on
//! virtkit-namespaces and virtkit-cgroups.
#![cfg_attr(test, allow(clippy::unwrap_used))]
// Our own C `main` (below): the runtime starts twice per container (see `cloned`), and
// std's start-up (reading /proc/self/maps for the main thread's stack guard, an
// alternate signal stack) is work neither start needs.
#![cfg_attr(not(test), no_main)]

mod log;

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use virtkit_runtime::state::Status;
use virtkit_runtime::{cloned, CreateOpts, ExecOpts, Runtime, OCI_VERSION};

#[derive(Parser, Debug)]
#[command(
    name = "container-runner",
    about = "An OCI runtime (runc-compatible command line)",
    disable_version_flag = true
)]
struct Cli {
    /// Root directory for container state (default /run/virtkit, or
    /// $XDG_RUNTIME_DIR/virtkit when not root).
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Log file (default stderr).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long = "log-format", global = true, default_value = "text")]
    log_format: String,
    /// Use systemd for cgroups (not supported).
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// Debug logging (accepted for compatibility).
    #[arg(long, global = true)]
    debug: bool,
    /// Print the version.
    #[arg(short = 'v', long)]
    version: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a container (init waits for `start`).
    Create {
        #[command(flatten)]
        args: CreateArgs,
        id: String,
    },
    /// Start a created container.
    Start { id: String },
    /// Print a container's state as JSON.
    State { id: String },
    /// Send a signal to a container's init (or all its processes).
    Kill {
        #[arg(short = 'a', long)]
        all: bool,
        id: String,
        signal: Option<String>,
    },
    /// Delete a container.
    Delete {
        #[arg(short = 'f', long)]
        force: bool,
        id: String,
    },
    /// Create and start a container, wait for it and delete it.
    Run {
        #[command(flatten)]
        args: CreateArgs,
        #[arg(short = 'd', long)]
        detach: bool,
        id: String,
    },
    /// Run a new process in a container.
    Exec {
        #[arg(short = 'p', long)]
        process: Option<PathBuf>,
        #[arg(short = 'd', long)]
        detach: bool,
        #[arg(short = 't', long)]
        tty: bool,
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        #[arg(long)]
        cwd: Option<PathBuf>,
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        #[arg(short = 'u', long)]
        user: Option<String>,
        #[arg(long = "preserve-fds", default_value_t = 0)]
        preserve_fds: u32,
        /// Add a capability (CAP_NET_ADMIN or NET_ADMIN) to the bounding, effective and
        /// permitted sets; repeatable.
        #[arg(short = 'c', long = "cap")]
        cap: Vec<String>,
        /// Additional group ids; repeatable.
        #[arg(short = 'g', long = "additional-gids")]
        additional_gids: Vec<u32>,
        /// Set no_new_privs for the process.
        #[arg(long = "no-new-privs")]
        no_new_privs: bool,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// List containers.
    List {
        #[arg(short = 'q', long)]
        quiet: bool,
        #[arg(short = 'f', long, default_value = "table")]
        format: String,
    },
    /// Processes in a container.
    Ps {
        #[arg(short = 'f', long, default_value = "table")]
        format: String,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Freeze a container.
    Pause { id: String },
    /// Thaw a container.
    Resume { id: String },
    /// Change a container's resources.
    Update {
        /// JSON file with linux.resources ("-" for stdin); read from stdin when no
        /// flag is given either. Flags override its values.
        #[arg(short = 'r', long)]
        resources: Option<String>,
        #[command(flatten)]
        flags: UpdateArgs,
        id: String,
    },
    /// Print resource statistics as runc's event JSON (once with --stats, else every
    /// --interval until the container stops).
    Events {
        #[arg(long)]
        stats: bool,
        /// Seconds between reports (a trailing "s" is accepted).
        #[arg(long, default_value = "5s")]
        interval: String,
        id: String,
    },
    /// Print the features this runtime supports (JSON).
    Features,
    /// Write a default config.json (like `runc spec`).
    Spec {
        #[arg(short = 'b', long, default_value = ".")]
        bundle: PathBuf,
    },
}

/// The flags `create` and `run` share.
#[derive(clap::Args, Debug)]
struct CreateArgs {
    /// The bundle directory (config.json and the root filesystem).
    #[arg(short = 'b', long, default_value = ".")]
    bundle: PathBuf,
    /// Write the container init's pid here.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Send the pty master to this unix socket (with process.terminal).
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// MS_MOVE + chroot instead of pivot_root.
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Keep the caller's session keyring instead of a new one per container.
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    /// Pass this many fds after stdio on to the container.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
}

impl CreateArgs {
    fn opts(self, id: String) -> CreateOpts {
        CreateOpts {
            id,
            bundle: self.bundle,
            pid_file: self.pid_file,
            console_socket: self.console_socket,
            no_pivot: self.no_pivot,
            preserve_fds: self.preserve_fds,
            new_keyring: !self.no_new_keyring,
        }
    }
}

/// runc `update`'s individual flags.
#[derive(clap::Args, Debug, Default)]
struct UpdateArgs {
    /// Memory limit (bytes, or with a k/m/g suffix; -1: none).
    #[arg(long, allow_hyphen_values = true)]
    memory: Option<String>,
    /// Memory soft limit.
    #[arg(long = "memory-reservation", allow_hyphen_values = true)]
    memory_reservation: Option<String>,
    /// Memory plus swap (-1: unlimited swap).
    #[arg(long = "memory-swap", allow_hyphen_values = true)]
    memory_swap: Option<String>,
    /// CPU shares (relative weight).
    #[arg(long = "cpu-share")]
    cpu_share: Option<u64>,
    /// CFS period (microseconds).
    #[arg(long = "cpu-period")]
    cpu_period: Option<u64>,
    /// CFS quota (microseconds per period; -1: none).
    #[arg(long = "cpu-quota", allow_hyphen_values = true)]
    cpu_quota: Option<i64>,
    /// Real-time period (microseconds).
    #[arg(long = "cpu-rt-period")]
    cpu_rt_period: Option<u64>,
    /// Real-time runtime (microseconds).
    #[arg(long = "cpu-rt-runtime", allow_hyphen_values = true)]
    cpu_rt_runtime: Option<i64>,
    /// CPUs allowed (0-3, 0,1).
    #[arg(long = "cpuset-cpus")]
    cpuset_cpus: Option<String>,
    /// Memory nodes allowed.
    #[arg(long = "cpuset-mems")]
    cpuset_mems: Option<String>,
    /// Maximum number of processes (0 or less: none).
    #[arg(long = "pids-limit", allow_hyphen_values = true)]
    pids_limit: Option<i64>,
    /// Block I/O weight (10 to 1000).
    #[arg(long = "blkio-weight")]
    blkio_weight: Option<u16>,
}

impl UpdateArgs {
    fn to_flags(&self) -> Result<virtkit_runtime::UpdateFlags> {
        let size = |flag: &str, v: &Option<String>| -> Result<Option<i64>> {
            v.as_deref()
                .map(|s| virtkit_runtime::parse_size(s).with_context(|| format!("--{flag}")))
                .transpose()
        };
        Ok(virtkit_runtime::UpdateFlags {
            memory: size("memory", &self.memory)?,
            memory_reservation: size("memory-reservation", &self.memory_reservation)?,
            memory_swap: size("memory-swap", &self.memory_swap)?,
            cpu_shares: self.cpu_share,
            cpu_period: self.cpu_period,
            cpu_quota: self.cpu_quota,
            cpu_rt_period: self.cpu_rt_period,
            cpu_rt_runtime: self.cpu_rt_runtime,
            cpuset_cpus: self.cpuset_cpus.clone(),
            cpuset_mems: self.cpuset_mems.clone(),
            pids_limit: self.pids_limit,
            blkio_weight: self.blkio_weight,
        })
    }
}

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
            id,
            args,
        } => {
            cloned::ensure()?;
            let o = ExecOpts {
                caps: cap,
                additional_gids,
                no_new_privs,
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
