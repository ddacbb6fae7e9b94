//! runc's command line: the global flags, the subcommands and the flag groups some of
//! them share.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use virtkit_runtime::CreateOpts;

#[derive(Parser, Debug)]
#[command(
    name = "container-runner",
    about = "An OCI runtime (runc-compatible command line)",
    disable_version_flag = true
)]
pub(crate) struct Cli {
    /// Root directory for container state (default /run/virtkit, or
    /// $XDG_RUNTIME_DIR/virtkit when not root).
    #[arg(long, global = true)]
    pub(crate) root: Option<PathBuf>,
    /// Log file (default stderr).
    #[arg(long, global = true)]
    pub(crate) log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long = "log-format", global = true, default_value = "text")]
    pub(crate) log_format: String,
    /// Use systemd for cgroups (not supported).
    #[arg(long = "systemd-cgroup", global = true)]
    pub(crate) systemd_cgroup: bool,
    /// Debug logging (accepted for compatibility).
    #[arg(long, global = true)]
    pub(crate) debug: bool,
    /// Print the version.
    #[arg(short = 'v', long)]
    pub(crate) version: bool,
    #[command(subcommand)]
    pub(crate) cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Cmd {
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
        /// AppArmor profile for the process (AppArmor must be enabled).
        #[arg(long)]
        apparmor: Option<String>,
        /// Run the process in this existing sub-cgroup of the container's cgroup.
        #[arg(long = "cgroup")]
        cgroup: Option<String>,
        /// SELinux label for the process (refused: SELinux labels are not supported).
        #[arg(long = "process-label")]
        process_label: Option<String>,
        /// Set no_new_privs for the process.
        #[arg(long = "no-new-privs")]
        no_new_privs: bool,
        /// Exec into a paused container too: the process starts once it is resumed.
        #[arg(long = "ignore-paused")]
        ignore_paused: bool,
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
pub(crate) struct CreateArgs {
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
    pub(crate) fn opts(self, id: String) -> CreateOpts {
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
pub(crate) struct UpdateArgs {
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
    pub(crate) fn to_flags(&self) -> Result<virtkit_runtime::UpdateFlags> {
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
