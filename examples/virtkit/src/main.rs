//! virtkit: a Docker-like command line over `virtkit-image` (the store, pulls, bundles)
//! and an OCI runtime binary (`container-runner` by default, as podman drives runc).
//!
//! ```text
//! virtkit [--root DIR] pull [--tls-verify=BOOL] [--cert-file PEM] [--creds USER:PASS] IMAGE
//! virtkit images | rmi IMAGE... | load -i ARCHIVE|LAYOUT [NAME] | image prune
//! virtkit run [--rm] [--name N] [-e K=V]... [-w DIR] [-u USER] [-t] [--entrypoint CMD]
//!             [--hostname H] [--read-only] [-v SRC:DST[:ro]]... [--tmpfs DIR]...
//!             [--runtime PATH] IMAGE [ARG...]
//! virtkit volume create NAME | ls | rm NAME...
//! ```
//! State under `/var/lib/virtkit` (`--root` or `VIRTKIT_ROOT`). Exit status: the
//! container's for `run`, 125 for virtkit's own errors (as Docker).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use virtkit_image::registry::RegistryOptions;
use virtkit_image::{RunOptions, Store};

/// A Docker-like command line over the virtkit crates.
#[derive(Debug, Parser)]
#[command(name = "virtkit")]
struct Cli {
    /// State directory (images, containers, runtime state); else `VIRTKIT_ROOT`, else
    /// `/var/lib/virtkit`.
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Pulls an image from a registry.
    Pull {
        /// `registry/repository[:tag|@digest]`.
        image: String,
        /// Verify TLS (false: plain HTTP, as podman's --tls-verify=false).
        #[arg(long)]
        tls_verify: Option<bool>,
        /// The CA that signed the registry's certificate (PEM).
        #[arg(long, value_name = "PEM")]
        cert_file: Option<PathBuf>,
        /// `USER:PASSWORD`.
        #[arg(long)]
        creds: Option<String>,
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
    /// Runs a command in a new container of an image, in the foreground.
    Run(RunArgs),
    /// Named volumes (kept under the state directory, surviving containers).
    Volume {
        #[command(subcommand)]
        cmd: VolumeCmd,
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

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Remove the container when it exits (always so for now: containers are not kept).
    #[arg(long)]
    rm: bool,
    /// The container's name.
    #[arg(long)]
    name: Option<String>,
    /// `KEY=VALUE`; repeatable.
    #[arg(short, long = "env")]
    env: Vec<String>,
    /// Working directory.
    #[arg(short, long)]
    workdir: Option<String>,
    /// `USER[:GROUP]`, names from the image.
    #[arg(short, long)]
    user: Option<String>,
    /// A terminal.
    #[arg(short, long)]
    tty: bool,
    /// Replaces the image's entrypoint (and drops its Cmd).
    #[arg(long)]
    entrypoint: Option<String>,
    /// The container's hostname.
    #[arg(long)]
    hostname: Option<String>,
    /// A read-only root file system.
    #[arg(long)]
    read_only: bool,
    /// `HOST_PATH:CONTAINER_PATH[:ro]` or `VOLUME_NAME:CONTAINER_PATH[:ro]`; repeatable.
    #[arg(short, long = "volume", value_name = "SPEC")]
    volume: Vec<String>,
    /// An empty tmpfs at this path; repeatable.
    #[arg(long, value_name = "DIR")]
    tmpfs: Vec<String>,
    /// The OCI runtime binary.
    #[arg(long, value_name = "PATH")]
    runtime: Option<PathBuf>,
    /// The image.
    image: String,
    /// The command and its arguments (replace the image's Cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

fn store(root: &Path) -> anyhow::Result<Store> {
    Ok(Store::open(root.join("images"))?)
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

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !n.starts_with('.')
}

/// The directory of the named volume `name`.
fn volume_dir(root: &Path, name: &str) -> anyhow::Result<PathBuf> {
    if !valid_name(name) {
        bail!("invalid volume name {name:?}: letters, digits, '-', '_', '.'");
    }
    Ok(root.join("volumes").join(name))
}

/// `-v SPEC` as a bind: a host path, or a named volume (created when missing, as Docker).
fn bind(root: &Path, spec: &str) -> anyhow::Result<virtkit_image::Bind> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, ro) = match parts.as_slice() {
        [s, d] => (*s, *d, false),
        [s, d, "ro"] => (*s, *d, true),
        [s, d, "rw"] => (*s, *d, false),
        _ => bail!("-v {spec}: expected SOURCE:DESTINATION[:ro|rw]"),
    };
    let source = if src.starts_with('/') {
        let p = PathBuf::from(src);
        if !p.exists() {
            bail!("-v {spec}: {src} does not exist");
        }
        p
    } else {
        let d = volume_dir(root, src)?.join("_data");
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create volume {src}"))?;
        d
    };
    Ok(virtkit_image::Bind {
        source,
        destination: dst.to_string(),
        read_only: ro,
    })
}

fn volume(root: &Path, cmd: VolumeCmd) -> anyhow::Result<()> {
    match cmd {
        VolumeCmd::Create { name } => {
            let d = volume_dir(root, &name)?;
            if d.exists() {
                bail!("volume {name:?} already exists");
            }
            std::fs::create_dir_all(d.join("_data"))
                .with_context(|| format!("cannot create volume {name}"))?;
            println!("{name}");
        }
        VolumeCmd::Ls => {
            println!("VOLUME NAME");
            let mut names: Vec<String> = std::fs::read_dir(root.join("volumes"))
                .map(|r| {
                    r.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            for n in names {
                println!("{n}");
            }
        }
        VolumeCmd::Rm { names } => {
            for n in names {
                let d = volume_dir(root, &n)?;
                if !d.exists() {
                    bail!("no volume named {n:?}");
                }
                std::fs::remove_dir_all(&d).with_context(|| format!("cannot remove volume {n}"))?;
                println!("{n}");
            }
        }
    }
    Ok(())
}

fn run(root: &Path, a: RunArgs) -> anyhow::Result<i32> {
    let store = store(root)?;
    let id = match &a.name {
        Some(n) if !valid_name(n) => {
            bail!("invalid container name {n:?}: letters, digits, '-', '_', '.'")
        }
        Some(n) => n.clone(),
        None => format!(
            "vk-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ),
    };
    let containers = root.join("containers");
    std::fs::create_dir_all(&containers)
        .with_context(|| format!("cannot create {}", containers.display()))?;
    let dir = containers.join(&id);
    if dir.exists() {
        bail!("the container name {id:?} is already in use");
    }
    let binds = a
        .volume
        .iter()
        .map(|v| bind(root, v))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let opts = RunOptions {
        binds,
        tmpfs: a.tmpfs,
        entrypoint: a.entrypoint.map(|e| vec![e]),
        args: a.args,
        env: a.env,
        workdir: a.workdir,
        user: a.user,
        tty: a.tty,
        hostname: a.hostname,
        read_only: a.read_only,
    };
    let base = virtkit_runtime::example_spec();
    let bundle = store.create_bundle(&a.image, &dir, base, &opts)?;
    let rt = runtime(a.runtime.as_deref());
    let status = Command::new(&rt)
        .arg("--root")
        .arg(root.join("runtime"))
        .args(["run", "--bundle"])
        .arg(&dir)
        .arg(&id)
        .status();
    // The runtime deletes its container when `run` returns; the bundle goes too.
    let removed = bundle.remove();
    let status = status.with_context(|| format!("cannot start the runtime {}", rt.display()))?;
    removed?;
    Ok(
        match (
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        ) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 125,
        },
    )
}

fn main_result(cli: Cli) -> anyhow::Result<i32> {
    let root = cli
        .root
        .or_else(|| std::env::var_os("VIRTKIT_ROOT").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/lib/virtkit"));
    match cli.cmd {
        Cmd::Pull {
            image,
            tls_verify,
            cert_file,
            creds,
        } => {
            let credentials = match creds {
                Some(c) => match c.split_once(':') {
                    Some((u, p)) => Some((u.to_string(), p.to_string())),
                    None => bail!("--creds takes USER:PASSWORD"),
                },
                None => None,
            };
            let opts = RegistryOptions {
                tls_verify,
                ca_file: cert_file,
                credentials,
            };
            let got = store(&root)?.pull(&image, &opts)?;
            println!("{}", got.manifest);
        }
        Cmd::Images => {
            let s = store(&root)?;
            println!("{:<50} {:<19} {:>12}", "IMAGE", "MANIFEST", "SIZE");
            for (name, d) in s.images()? {
                let m = s.manifest(&d)?;
                let size: u64 = m.layers.iter().map(|l| l.size).sum::<u64>() + m.config.size;
                println!("{name:<50} {:<19} {size:>12}", &d.to_string()[..19]);
            }
        }
        Cmd::Rmi { images } => {
            let s = store(&root)?;
            for i in images {
                s.untag(&i)?;
                println!("Untagged: {i}");
            }
        }
        Cmd::Load { input, name } => {
            let s = store(&root)?;
            let got = if input.is_dir() {
                let name = name.context("loading an OCI layout needs a NAME")?;
                s.import_oci_layout(&input, None, &name)?
            } else {
                s.import_docker_archive(&input, name.as_deref())?
            };
            println!("Loaded image: {}", got.manifest);
        }
        Cmd::Image {
            cmd: ImageCmd::Prune,
        } => {
            let s = store(&root)?;
            let removed = s.prune(&s.referenced()?)?;
            println!("Deleted {} blobs", removed.len());
        }
        Cmd::Run(a) => return run(&root, a),
        Cmd::Volume { cmd } => volume(&root, cmd)?,
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
