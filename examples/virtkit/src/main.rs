//! virtkit: a Docker-like command line over `virtkit-engine` (containers, networks,
//! volumes, detached containers with a monitor), `virtkit-image` (the store, pulls) and
//! an OCI runtime binary (`container-runner` by default, as podman drives runc).
//!
//! ```text
//! virtkit [--root DIR] pull [--tls-verify=BOOL] [--cert-file PEM] [--creds USER:PASS] IMAGE
//! virtkit push [--tls-verify=BOOL] [--cert-file PEM] [--creds USER:PASS] IMAGE [DEST]
//! virtkit images | rmi IMAGE... | load -i ARCHIVE|LAYOUT [NAME] | image prune
//! virtkit save -o OUT [--format docker-archive|oci-dir] IMAGE
//! virtkit build -t NAME [-f DOCKERFILE] [--build-arg K=V]... CONTEXT
//! virtkit commit [-c 'CMD ...']... [-m MSG] [-a AUTHOR] CONTAINER NAME
//! virtkit run [-d] [--rm] [--name N] [-p [IP:]HOST:CTR[/udp]]... [--network NET|none|host]
//!             [--restart no|on-failure|always] [-e K=V]... [-w DIR] [-u USER] [-t] [-i]
//!             [--entrypoint CMD] [--hostname H] [--read-only] [-v SRC:DST[:ro]]...
//!             [--tmpfs DIR]... [-m SIZE] [--cpus N] [--pids-limit N] [--runtime PATH]
//!             IMAGE [ARG...]
//! virtkit create ... | start | stop [-t S] | restart | kill [-s SIG] | rm [-f] NAME...
//! virtkit ps [-a] [-q] | logs [-f] NAME | exec [-it] [-e K=V] NAME CMD... | inspect NAME...
//! virtkit network create [--subnet CIDR] NAME | ls | rm NAME...
//! virtkit volume create NAME | ls | rm NAME...
//! ```
//! State under `/var/lib/virtkit` (`--root` or `VIRTKIT_ROOT`). Exit status: the
//! container's for `run` and `exec`, 125 for virtkit's own errors (as Docker).

mod containers;
mod images;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use containers::{each, grace, RunArgs};
use virtkit_engine::Engine;
use virtkit_image::registry::RegistryOptions;

/// A Docker-like command line over the virtkit crates.
#[derive(Debug, Parser)]
#[command(name = "virtkit")]
struct Cli {
    /// State directory (images, containers, networks, volumes, runtime state); else
    /// `VIRTKIT_ROOT`, else `/var/lib/virtkit`.
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// The OCI runtime binary (default: `container-runner` next to this program).
    #[arg(long, global = true, value_name = "PATH")]
    runtime: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Pulls an image from a registry.
    Pull {
        /// `registry/repository[:tag|@digest]`.
        image: String,
        #[command(flatten)]
        reg: RegArgs,
    },
    /// Pushes a stored image to a registry.
    Push {
        /// The stored image.
        image: String,
        /// `registry/repository[:tag]` (the image's own name by default).
        dest: Option<String>,
        #[command(flatten)]
        reg: RegArgs,
    },
    /// Writes an image as a docker-archive tarball or an OCI layout directory.
    Save {
        /// Where.
        #[arg(short, long)]
        output: PathBuf,
        /// `docker-archive` or `oci-dir`.
        #[arg(long, default_value = "docker-archive")]
        format: String,
        /// The image.
        image: String,
    },
    /// Makes an image from a container's changes.
    Commit {
        /// A Dockerfile line (CMD, ENTRYPOINT, ENV) to apply; repeatable.
        #[arg(short, long)]
        change: Vec<String>,
        /// The commit message.
        #[arg(short, long)]
        message: Option<String>,
        /// The author.
        #[arg(short, long)]
        author: Option<String>,
        /// The container.
        container: String,
        /// The new image's name.
        name: String,
    },
    /// Builds an image from a Dockerfile, each RUN in a container.
    Build {
        /// The new image's name.
        #[arg(short, long)]
        tag: String,
        /// The Dockerfile (`CONTEXT/Dockerfile` by default).
        #[arg(short, long)]
        file: Option<PathBuf>,
        /// `NAME=VALUE`; repeatable.
        #[arg(long)]
        build_arg: Vec<String>,
        /// The context directory.
        context: PathBuf,
    },
    /// Lists the images.
    Images,
    /// Removes image names (their blobs go at the next `image prune`).
    Rmi {
        /// The names.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Imports a docker-archive tarball or an OCI image layout directory.
    Load {
        /// The archive or layout.
        #[arg(short, long)]
        input: PathBuf,
        /// The name to give it (a docker-archive's own tag by default).
        name: Option<String>,
    },
    /// Image maintenance.
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// Runs a command in a new container of an image.
    Run(RunArgs),
    /// Creates a container without starting it.
    Create(RunArgs),
    /// Starts stopped containers (detached).
    Start {
        /// Names or ids.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Stops containers: their stop signal, then SIGKILL after the grace period.
    Stop {
        /// Seconds to wait before SIGKILL.
        #[arg(short, long, default_value_t = 10)]
        time: u64,
        /// Names or ids.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Stops and starts containers.
    Restart {
        /// Seconds to wait before SIGKILL.
        #[arg(short, long, default_value_t = 10)]
        time: u64,
        /// Names or ids.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Sends a signal to containers.
    Kill {
        /// The signal.
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        /// Names or ids.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Removes containers.
    Rm {
        /// Kill running ones first.
        #[arg(short, long)]
        force: bool,
        /// Names or ids.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Lists containers.
    Ps {
        /// Stopped ones too.
        #[arg(short, long)]
        all: bool,
        /// Ids only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Prints a container's output.
    Logs {
        /// Go on until the container exits.
        #[arg(short, long)]
        follow: bool,
        /// Name or id.
        name: String,
    },
    /// Runs a command in a running container.
    Exec {
        /// A terminal.
        #[arg(short, long)]
        tty: bool,
        /// Keep stdin open.
        #[arg(short, long)]
        interactive: bool,
        /// `KEY=VALUE`; repeatable.
        #[arg(short, long = "env")]
        env: Vec<String>,
        /// Name or id.
        name: String,
        /// The command.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    /// Prints containers' records as JSON.
    Inspect {
        /// Names or ids.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Networks (bridges with their own subnet).
    Network {
        #[command(subcommand)]
        cmd: NetworkCmd,
    },
    /// Named volumes (kept under the state directory, surviving containers).
    Volume {
        #[command(subcommand)]
        cmd: VolumeCmd,
    },
    /// A detached container's monitor (started by `run -d` and `start`).
    #[command(name = "__monitor", hide = true)]
    Monitor {
        /// The container id.
        id: String,
    },
}

/// Registry flags.
#[derive(Debug, clap::Args)]
struct RegArgs {
    /// Verify TLS (false: plain HTTP, as podman's --tls-verify=false).
    #[arg(long)]
    tls_verify: Option<bool>,
    /// The CA that signed the registry's certificate (PEM).
    #[arg(long, value_name = "PEM")]
    cert_file: Option<PathBuf>,
    /// `USER:PASSWORD`.
    #[arg(long)]
    creds: Option<String>,
}

impl RegArgs {
    fn options(self) -> anyhow::Result<RegistryOptions> {
        let credentials = match self.creds {
            Some(c) => match c.split_once(':') {
                Some((u, p)) => Some((u.to_string(), p.to_string())),
                None => bail!("--creds takes USER:PASSWORD"),
            },
            None => None,
        };
        Ok(RegistryOptions {
            tls_verify: self.tls_verify,
            ca_file: self.cert_file,
            credentials,
        })
    }
}

#[derive(Debug, Subcommand)]
enum NetworkCmd {
    /// Creates a network.
    Create {
        /// Its subnet (default: the first free 10.86.N.0/24).
        #[arg(long)]
        subnet: Option<String>,
        /// The name.
        name: String,
    },
    /// Lists the networks.
    Ls,
    /// Removes networks (and their bridges).
    Rm {
        /// The names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum VolumeCmd {
    /// Creates a named volume.
    Create {
        /// The name.
        name: String,
    },
    /// Lists the named volumes.
    Ls,
    /// Removes named volumes and their data.
    Rm {
        /// The names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ImageCmd {
    /// Removes every blob and layer no name needs.
    Prune,
}

/// The runtime binary: `--runtime`, else `container-runner` next to this binary, else
/// on `PATH`.
fn runtime(given: Option<&Path>) -> PathBuf {
    if let Some(r) = given {
        return r.to_path_buf();
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("container-runner")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("container-runner"))
}

fn network(engine: &Engine, cmd: NetworkCmd) -> anyhow::Result<i32> {
    let nets = engine.networks();
    match cmd {
        NetworkCmd::Create { subnet, name } => {
            let subnet = subnet.map(|s| s.parse()).transpose()?;
            let n = nets.create(&name, subnet)?;
            println!("{}", n.name);
        }
        NetworkCmd::Ls => {
            println!("{:<14} {:<16} SUBNET", "NAME", "BRIDGE");
            for n in nets.list()? {
                println!("{:<14} {:<16} {}", n.name, n.bridge, n.subnet);
            }
        }
        NetworkCmd::Rm { names } => {
            for name in names {
                engine
                    .network_remove(&name)
                    .with_context(|| format!("network {name}"))?;
                println!("{name}");
            }
        }
    }
    Ok(0)
}

fn volume(engine: &Engine, cmd: VolumeCmd) -> anyhow::Result<i32> {
    match cmd {
        VolumeCmd::Create { name } => {
            engine.volume_create(&name)?;
            println!("{name}");
        }
        VolumeCmd::Ls => {
            println!("VOLUME NAME");
            for n in engine.volumes()? {
                println!("{n}");
            }
        }
        VolumeCmd::Rm { names } => {
            for n in names {
                engine.volume_remove(&n)?;
                println!("{n}");
            }
        }
    }
    Ok(0)
}

fn main_result(cli: Cli) -> anyhow::Result<i32> {
    let root = cli
        .root
        .or_else(|| std::env::var_os("VIRTKIT_ROOT").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/lib/virtkit"));
    let exe = std::env::current_exe().context("cannot find this program")?;
    let rt = runtime(cli.runtime.as_deref());
    let engine = Engine::open(&root, rt.clone())?.with_monitor(vec![
        exe.into(),
        "--root".into(),
        root.clone().into(),
        "--runtime".into(),
        rt.into(),
        "__monitor".into(),
    ]);
    if !matches!(cli.cmd, Cmd::Monitor { .. }) {
        engine.reap()?;
    }
    let store = engine.store();
    match cli.cmd {
        Cmd::Pull { image, reg } => {
            let got = store.pull(&image, &reg.options()?)?;
            println!("{}", got.manifest);
        }
        Cmd::Push { image, dest, reg } => {
            return images::push(&engine, &image, dest.as_deref(), &reg.options()?)
        }
        Cmd::Save {
            output,
            format,
            image,
        } => return images::save(&engine, &image, &output, &format),
        Cmd::Commit {
            change,
            message,
            author,
            container,
            name,
        } => return images::commit(&engine, &container, &name, &change, message, author),
        Cmd::Build {
            tag,
            file,
            build_arg,
            context,
        } => return images::build(&engine, context, file, &tag, &build_arg),
        Cmd::Images => {
            println!("{:<50} {:<19} {:>12}", "IMAGE", "MANIFEST", "SIZE");
            for (name, d) in store.images()? {
                let m = store.manifest(&d)?;
                let size: u64 = m.layers.iter().map(|l| l.size).sum::<u64>() + m.config.size;
                println!("{name:<50} {:<19} {size:>12}", &d.to_string()[..19]);
            }
        }
        Cmd::Rmi { images } => {
            for i in images {
                store.untag(&i)?;
                println!("Untagged: {i}");
            }
        }
        Cmd::Load { input, name } => {
            let got = if input.is_dir() {
                let name = name.context("loading an OCI layout needs a NAME")?;
                store.import_oci_layout(&input, None, &name)?
            } else {
                store.import_docker_archive(&input, name.as_deref())?
            };
            println!("Loaded image: {}", got.manifest);
        }
        Cmd::Image {
            cmd: ImageCmd::Prune,
        } => {
            let removed = store.prune(&store.referenced()?)?;
            println!("Deleted {} blobs", removed.len());
        }
        Cmd::Run(a) => return containers::run(&engine, a),
        Cmd::Create(a) => return containers::create(&engine, a),
        Cmd::Start { names } => return each(&names, |n| engine.start(n)),
        Cmd::Stop { time, names } => return each(&names, |n| engine.stop(n, grace(time))),
        Cmd::Restart { time, names } => {
            return each(&names, |n| {
                engine.stop(n, grace(time))?;
                engine.start(n)
            })
        }
        Cmd::Kill { signal, names } => return each(&names, |n| engine.kill(n, &signal)),
        Cmd::Rm { force, names } => return each(&names, |n| engine.remove(n, force)),
        Cmd::Ps { all, quiet } => return containers::ps(&engine, all, quiet),
        Cmd::Logs { follow, name } => engine.logs(&name, follow, &mut std::io::stdout())?,
        Cmd::Exec {
            tty,
            interactive: _,
            env,
            name,
            args,
        } => return Ok(engine.exec(&name, &args, tty, &env)?),
        Cmd::Inspect { names } => return containers::inspect(&engine, &names),
        Cmd::Network { cmd } => return network(&engine, cmd),
        Cmd::Volume { cmd } => return volume(&engine, cmd),
        Cmd::Monitor { id } => return containers::monitor(&engine, &id),
    }
    Ok(0)
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 125 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    match main_result(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("virtkit: error: {}", format!("{e:#}").replace('\n', " "));
            std::process::exit(125);
        }
    }
}
