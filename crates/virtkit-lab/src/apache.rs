//! A Debian 12 image with apache2, as an OCI image layout, for container tests and
//! benchmarks that want a real server rather than busybox.
//!
//! [`apache2_layout`] builds it once (`debootstrap --variant=minbase --include=apache2`
//! from [`DEBIAN_MIRROR`], a few minutes, needs root and Debian's archive) and caches it
//! under `target/apache2/` by a hash of its recipe: one gzip layer holding the whole root
//! (GNU tar, numeric owners and modes kept, `/dev`'s nodes left out) and a config that runs
//! `apache2ctl -D FOREGROUND` with port 80 exposed. The build happens in a temporary
//! folder renamed into place at the end, under a file lock, so that an interrupted build
//! never leaves a half cache and two test processes never build it twice.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::debian::{
    debootstrap, installed_packages, remove_build_dir, DEBIAN_MIRROR, DEBIAN_SUITE,
};
use crate::error::{LabError, Result};
use crate::registry::{digest, OciLayout};
use crate::util::{self, ensure_packages, FileLock, InputHash};

/// The layout's one image reference (`oci:DIR:v1` for skopeo).
pub const APACHE2_REFERENCE: &str = "v1";
/// What debootstrap installs on top of `--variant=minbase`.
pub const APACHE2_PACKAGES: &[&str] = &["apache2"];
/// The image's command.
pub const APACHE2_CMD: &[&str] = &["apache2ctl", "-D", "FOREGROUND"];

/// Bump when the recipe changes in a way the hashed inputs below do not show.
const RECIPE: &str = "virtkit-apache2-layout-v1";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Left out of the root before it is packed: apt's downloads and indexes, and the
/// device nodes debootstrap made (a runtime gives a container its own `/dev`).
const PRUNED: &[&str] = &["var/cache/apt/archives", "var/lib/apt/lists"];

fn cache_key() -> String {
    let mut h = InputHash::new(RECIPE);
    h.add(DEBIAN_SUITE.as_bytes())
        .add(DEBIAN_MIRROR.as_bytes())
        .add(APACHE2_PACKAGES.join(",").as_bytes())
        .add(APACHE2_CMD.join(" ").as_bytes())
        .add(PATH_ENV.as_bytes())
        .add(PRUNED.join(",").as_bytes());
    h.hex()
}

fn final_dir() -> Result<PathBuf> {
    Ok(util::cache_dir("apache2")?.join(format!("{DEBIAN_SUITE}-{}", cache_key())))
}

/// The layout in a finished cache folder (it is renamed into place only when complete).
fn layout_in(dir: &Path) -> Option<PathBuf> {
    let layout = dir.join("layout");
    layout.join("index.json").is_file().then_some(layout)
}

/// The OCI image layout (reference [`APACHE2_REFERENCE`]) of Debian 12 with apache2:
/// built on first use, then taken from `target/apache2/`. Push it with
/// [`TestRegistry::push`](crate::registry::TestRegistry::push) or load it with
/// `virtkit load -i`. Needs root for the build (debootstrap); installs `debootstrap`
/// when it is missing and we are root.
pub fn apache2_layout() -> Result<PathBuf> {
    let out = final_dir()?;
    if let Some(l) = layout_in(&out) {
        return Ok(l);
    }
    let cache = util::cache_dir("apache2")?;
    let _lock = FileLock::acquire(&cache.join(".lock"))?;
    // Another process may have built it while we waited for the lock.
    if let Some(l) = layout_in(&out) {
        return Ok(l);
    }
    if !util::is_root() {
        return Err(LabError::BadInput(format!(
            "building the apache2 image ({}) needs root (debootstrap)",
            out.display()
        )));
    }
    if util::which("debootstrap").is_none() {
        ensure_packages(&["debootstrap"])?;
    }
    if util::which("debootstrap").is_none() {
        return Err(LabError::PackagesMissing(vec!["debootstrap".into()]));
    }
    let start = Instant::now();
    let tmp = cache.join(format!("build-{}.tmp", cache_key()));
    let root = debootstrap(&tmp, APACHE2_PACKAGES, "takes a few minutes")?;
    if !root.join("usr/sbin/apache2ctl").exists() {
        return Err(LabError::BadInput(format!(
            "debootstrap left no usr/sbin/apache2ctl in {}",
            root.display()
        )));
    }
    for p in PRUNED {
        empty_dir(&root.join(p))?;
    }
    let packages = installed_packages(&root)?;
    eprintln!(
        "virtkit-lab: debootstrap took {:.0?}; packing the layer",
        start.elapsed()
    );
    let (tar_bytes, gz_bytes) = pack_layer(&root, &tmp)?;
    remove_build_dir(&root)?;
    fs::write(tmp.join("packages.txt"), &packages)
        .map_err(LabError::io("writing", tmp.join("packages.txt")))?;
    let info = format!(
        "suite {DEBIAN_SUITE}\npackages {}\nlayer {} MiB (tar), {} MiB (gzip)\nbuild {:.0?}\n",
        packages.lines().count(),
        tar_bytes >> 20,
        gz_bytes >> 20,
        start.elapsed()
    );
    fs::write(tmp.join("info.txt"), &info)
        .map_err(LabError::io("writing", tmp.join("info.txt")))?;
    let _ = fs::remove_dir_all(&out);
    fs::rename(&tmp, &out).map_err(LabError::io("renaming into", &out))?;
    eprint!(
        "virtkit-lab: apache2 image built in {}: {info}",
        out.display()
    );
    layout_in(&out).ok_or_else(|| {
        LabError::BadInput(format!(
            "the apache2 layout in {} is incomplete",
            out.display()
        ))
    })
}

/// Removes what is in `dir`, keeping `dir` itself.
fn empty_dir(dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries {
        let p = e.map_err(LabError::io("reading", dir))?.path();
        let gone = if p.is_dir() && !p.is_symlink() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        gone.map_err(LabError::io("removing", &p))?;
    }
    Ok(())
}

/// Packs `root` into `tmp/layout` (one gzip layer, the config, the manifest, the index);
/// the layer's size as tar and as gzip.
fn pack_layer(root: &Path, tmp: &Path) -> Result<(u64, u64)> {
    let tar_path = tmp.join("layer.tar");
    util::run_captured(
        Command::new("tar")
            .args([
                "--numeric-owner",
                "--sort=name",
                "--exclude=./dev/*",
                "--exclude=./proc/*",
                "--exclude=./sys/*",
                "--exclude=./debootstrap",
            ])
            .arg("-C")
            .arg(root)
            .arg("-cf")
            .arg(&tar_path)
            .arg("."),
    )?;
    let raw = fs::read(&tar_path).map_err(LabError::io("reading", &tar_path))?;
    let diff_id = digest(&raw);
    let tar_len = raw.len() as u64;
    drop(raw);
    let gz = Command::new("gzip")
        .args(["-n", "-c"])
        .arg(&tar_path)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(LabError::io("running gzip on", &tar_path))?;
    if !gz.status.success() {
        return Err(LabError::Command {
            command: format!("gzip -n -c {}", tar_path.display()),
            status: gz.status.to_string(),
            output: String::new(),
        });
    }
    fs::remove_file(&tar_path).map_err(LabError::io("removing", &tar_path))?;
    OciLayout::create(&tmp.join("layout"))?.finish_image(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &gz.stdout,
        &diff_id,
        serde_json::json!({"Cmd": APACHE2_CMD, "Env": [PATH_ENV],
            "ExposedPorts": {"80/tcp": {}}, "WorkingDir": "/"}),
        APACHE2_REFERENCE,
    )?;
    Ok((tar_len, gz.stdout.len() as u64))
}
