//! Pull and unpack, cold store, side by side: `virtkit-image` (`Store::pull`, then every
//! layer unpacked) against `podman pull` (its own store under a temporary directory,
//! default overlay driver), the same image from the same local registry (Debian's
//! docker-registry on 127.0.0.1, plain HTTP), interleaved rounds.
//!
//! The image: three gzip layers made from this host's `/usr/share/locale`,
//! `/usr/share/doc` and `/usr/lib/python3` (a few hundred MB unpacked, thousands of
//! files), pushed with skopeo.
//!
//! ```text
//! cargo run --release -p virtkit-benches --bin image-pull-vs-podman -- [ROUNDS]
//! ```
//! Works under `/dev/shm` (or `IMAGE_BENCH_DIR`): on disk both are bound by its write
//! speed. Prints each round, the medians and the ratio virtkit/podman (target <= 0.7). Each
//! timing starts after a `sync`, so neither pays for the other's dirty pages.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use virtkit_image::registry::RegistryOptions;
use virtkit_image::{Digest, Store, UnpackOptions};
use virtkit_lab::registry::{OciLayout, TestRegistry};

const TREES: [&str; 3] = ["/usr/share/locale", "/usr/share/doc", "/usr/lib/python3"];

/// The OCI layout of the benchmark image at `dir/layout`.
fn layout(dir: &Path) -> Result<std::path::PathBuf> {
    let l = OciLayout::create(&dir.join("layout"))?;
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for tree in TREES {
        let mut b = tar::Builder::new(Vec::new());
        b.follow_symlinks(false);
        b.append_dir_all(tree.trim_start_matches('/'), tree)
            .with_context(|| format!("archiving {tree}"))?;
        let raw = b.into_inner()?;
        diff_ids.push(Digest::of(&raw).to_string());
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw)?;
        layers.push(l.blob("application/vnd.oci.image.layer.v1.tar+gzip", &gz.finish()?)?);
    }
    let cfg = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/true"]}, "rootfs": {"type": "layers", "diff_ids": diff_ids}}))?;
    let cd = l.blob("application/vnd.oci.image.config.v1+json", &cfg)?;
    let m = serde_json::to_vec(&json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": cd, "layers": layers}))?;
    let mut md = l.blob("application/vnd.oci.image.manifest.v1+json", &m)?;
    md["annotations"] = json!({"org.opencontainers.image.ref.name": "v1"});
    Ok(l.finish(vec![md])?)
}

/// Writes back what earlier rounds left dirty, so no round pays for another's writes.
fn settle() {
    let _ = Command::new("sync").status();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    // In memory (/dev/shm) when there is one, so the disk's write speed, the same for
    // both, does not hide the difference between the two tools.
    let dir = match std::env::var_os("IMAGE_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d)?,
        None if Path::new("/dev/shm").is_dir() => tempfile::tempdir_in("/dev/shm")?,
        None => tempfile::tempdir()?,
    };
    eprintln!("working in {}", dir.path().display());
    let t = Instant::now();
    let layout = layout(dir.path())?;
    eprintln!("image built in {:.1?}", t.elapsed());
    let reg = TestRegistry::start(dir.path(), None)?;
    reg.push(&layout, "v1", "bench/usr:1", None)?;
    let image = format!("{}/bench/usr:1", reg.addr);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let store_dir = dir.path().join(format!("store-{round}"));
        settle();
        let t = Instant::now();
        let store = Store::open(&store_dir)?;
        let got = store.pull(&image, &RegistryOptions::default())?;
        let pulled = t.elapsed().as_secs_f64();
        for l in &got.parsed.layers {
            store.unpack_layer(&l.digest.parse()?, &UnpackOptions::default())?;
        }
        let v = t.elapsed().as_secs_f64();
        std::fs::remove_dir_all(&store_dir)?;

        let pr = dir.path().join(format!("podman-{round}"));
        settle();
        let t = Instant::now();
        let out = Command::new("podman")
            .arg("--root")
            .arg(pr.join("storage"))
            .arg("--runroot")
            .arg(pr.join("run"))
            .args(["pull", "-q", "--tls-verify=false", &image])
            .output()
            .context("podman")?;
        let p = t.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!("podman pull: {}", String::from_utf8_lossy(&out.stderr));
        }
        let _ = Command::new("podman")
            .arg("--root")
            .arg(pr.join("storage"))
            .arg("--runroot")
            .arg(pr.join("run"))
            .args(["system", "reset", "-f"])
            .output();
        let _ = std::fs::remove_dir_all(&pr);
        println!("round {round}: virtkit {v:.2} s (pull {pulled:.2} s), podman {p:.2} s");
        ours.push(v);
        theirs.push(p);
    }
    let (o, p) = (median(ours), median(theirs));
    println!("pull + unpack, cold store, median of {rounds}: virtkit {o:.2} s, podman {p:.2} s, ratio {:.2} (target <= 0.70)", o / p);
    Ok(())
}
