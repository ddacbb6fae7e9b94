//! The container verbs: each parses its flags into virtkit-engine calls.

use std::io::Write;
use std::time::Duration;

use anyhow::bail;
use virtkit_engine::create::CreateOptions;
use virtkit_engine::monitor::{Stdio3, READY_FD_ENV};
use virtkit_engine::record::{NetworkMode, Status};
use virtkit_engine::Engine;
use virtkit_image::RunOptions;

/// `run` and `create` flags.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Detached: print the id and leave the container to its monitor.
    #[arg(short, long)]
    pub detach: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// The container's name.
    #[arg(long)]
    pub name: Option<String>,
    /// `KEY=VALUE`; repeatable.
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Working directory.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// `USER[:GROUP]`, names from the image.
    #[arg(short, long)]
    pub user: Option<String>,
    /// A terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Keep stdin open (accepted with -t, as `-it`).
    #[arg(short, long)]
    pub interactive: bool,
    /// Replaces the image's entrypoint (and drops its Cmd).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// The container's hostname.
    #[arg(long)]
    pub hostname: Option<String>,
    /// A read-only root file system.
    #[arg(long)]
    pub read_only: bool,
    /// `HOST_PATH:CONTAINER_PATH[:ro]` or `VOLUME_NAME:CONTAINER_PATH[:ro]`; repeatable.
    #[arg(short, long = "volume", value_name = "SPEC")]
    pub volume: Vec<String>,
    /// An empty tmpfs at this path; repeatable.
    #[arg(long, value_name = "DIR")]
    pub tmpfs: Vec<String>,
    /// `[IP:][HOST_PORT:]CONTAINER_PORT[/tcp|/udp]`; repeatable.
    #[arg(short, long = "publish", value_name = "SPEC")]
    pub publish: Vec<String>,
    /// A network's name, `none` or `host`.
    #[arg(long)]
    pub network: Option<String>,
    /// `no`, `on-failure` or `always`.
    #[arg(long, default_value = "no")]
    pub restart: String,
    /// Memory limit (`512m`, `1g`, bytes).
    #[arg(short, long)]
    pub memory: Option<String>,
    /// CPUs (`0.5`).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Process limit.
    #[arg(long)]
    pub pids_limit: Option<i64>,
    /// The image.
    pub image: String,
    /// The command and its arguments (replace the image's Cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// `-m SIZE`: runc's and Docker's size syntax (`virtkit_runtime::parse_size`), more than 0.
fn size(s: &str) -> anyhow::Result<i64> {
    let n = virtkit_runtime::parse_size(s)?;
    if n <= 0 {
        bail!("invalid size {s:?}: must be more than 0");
    }
    Ok(n)
}

fn options(a: &RunArgs) -> anyhow::Result<CreateOptions> {
    Ok(CreateOptions {
        image: a.image.clone(),
        name: a.name.clone(),
        run: RunOptions {
            binds: Vec::new(),
            tmpfs: a.tmpfs.clone(),
            entrypoint: a.entrypoint.clone().map(|e| vec![e]),
            args: a.args.clone(),
            env: a.env.clone(),
            workdir: a.workdir.clone(),
            user: a.user.clone(),
            tty: a.tty,
            hostname: a.hostname.clone(),
            read_only: a.read_only,
        },
        volumes: a.volume.clone(),
        network: a.network.clone(),
        ports: a.publish.clone(),
        restart: a.restart.parse()?,
        auto_remove: a.rm,
        memory: a.memory.as_deref().map(size).transpose()?,
        cpus: a.cpus,
        pids_limit: a.pids_limit,
    })
}

/// `run`: create, then start detached (print the id) or run in the foreground (the
/// container's status is ours). A container that fails to start is removed.
pub fn run(engine: &Engine, a: RunArgs) -> anyhow::Result<i32> {
    if a.detach && a.tty {
        bail!("-t with -d is not supported: attach is not implemented; use exec -it");
    }
    let rec = engine.create(&options(&a)?)?;
    if a.detach {
        if let Err(e) = engine.start(&rec.id) {
            let _ = engine.remove(&rec.id, true);
            return Err(e.into());
        }
        println!("{}", rec.id);
        return Ok(0);
    }
    let code = engine.monitor(&rec.id, None, Stdio3::Inherit);
    if code.is_err() && !a.rm {
        let _ = engine.remove(&rec.id, true);
    }
    Ok(code?)
}

/// `create`.
pub fn create(engine: &Engine, a: RunArgs) -> anyhow::Result<i32> {
    let rec = engine.create(&options(&a)?)?;
    println!("{}", rec.id);
    Ok(0)
}

/// The hidden `__monitor ID` verb: a detached container's monitor.
pub fn monitor(engine: &Engine, id: &str) -> anyhow::Result<i32> {
    use std::os::fd::FromRawFd;
    let ready = std::env::var(READY_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|fd| *fd > 2)
        // SAFETY: the engine's `start` put this descriptor there for us alone.
        .map(|fd| unsafe { std::fs::File::from_raw_fd(fd) });
    std::env::remove_var(READY_FD_ENV);
    Ok(engine.monitor(id, ready, Stdio3::Log)?)
}

fn ago(t: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let s = now.saturating_sub(t);
    match s {
        0..=59 => format!("{s} seconds ago"),
        60..=3599 => format!("{} minutes ago", s / 60),
        _ => format!("{} hours ago", s / 3600),
    }
}

/// `ps [-a]`.
pub fn ps(engine: &Engine, all: bool, quiet: bool) -> anyhow::Result<i32> {
    let mut out = std::io::stdout().lock();
    if !quiet {
        writeln!(
            out,
            "{:<12}  {:<30} {:<20} {:<16} {:<22} {:<30} NAMES",
            "CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS"
        )?;
    }
    for r in engine.list()? {
        let running = r.status == Status::Running;
        if !all && !running {
            continue;
        }
        if quiet {
            writeln!(out, "{}", r.short_id())?;
            continue;
        }
        let status = match (r.status, r.exit_code) {
            (Status::Running, _) => "Up".to_string(),
            (Status::Created, _) => "Created".to_string(),
            (Status::Exited, c) => format!("Exited ({})", c.unwrap_or(255)),
        };
        let ports: Vec<String> = r.ports.iter().map(ToString::to_string).collect();
        let mut cmd = r.command.join(" ");
        cmd.truncate(20);
        writeln!(
            out,
            "{:<12}  {:<30} {:<20} {:<16} {:<22} {:<30} {}",
            r.short_id(),
            r.image,
            cmd,
            ago(r.created),
            status,
            ports.join(", "),
            r.name
        )?;
    }
    Ok(0)
}

/// `inspect`: the records as a JSON array, with the runtime's state.
pub fn inspect(engine: &Engine, names: &[String]) -> anyhow::Result<i32> {
    let mut out = Vec::new();
    for n in names {
        let r = engine.lookup(n)?;
        let mut v = serde_json::to_value(&r)?;
        if let Some(s) = engine.runtime_state(&r.id) {
            v["runtime"] = serde_json::json!({ "status": s.status, "pid": s.pid });
        }
        if let NetworkMode::Bridge(net) = &r.network {
            v["network_name"] = serde_json::json!(net);
        }
        out.push(v);
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(0)
}

/// `stop`, `restart`, `start`, `kill`, `rm` over several names: each printed when done,
/// the first error returned after all were tried.
pub fn each(
    names: &[String],
    f: impl Fn(&str) -> Result<(), virtkit_engine::EngineError>,
) -> anyhow::Result<i32> {
    let mut failed = None;
    for n in names {
        match f(n) {
            Ok(()) => println!("{n}"),
            Err(e) => {
                eprintln!("virtkit: error: {n}: {e}");
                failed = Some(e);
            }
        }
    }
    Ok(if failed.is_some() { 1 } else { 0 })
}

/// The grace period of `stop` and `restart`.
pub fn grace(secs: u64) -> Duration {
    Duration::from_secs(secs)
}
