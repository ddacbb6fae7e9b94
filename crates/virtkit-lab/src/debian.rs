//! The Debian guest: a stock Debian 12 system (its own cloud kernel and initramfs, a
//! debootstrapped root file system on a qcow2 disk) that boots to systemd's
//! multi-user target, reports the system state on the console and powers off.
//!
//! [`debian_guest`] builds it (about a minute and a half on 2 cores, needs root and
//! Debian's archive) and caches it under `target/debian/` by a hash of its inputs (the
//! suite, the package list, the mirror and everything written into the root);
//! [`debian_guest_built`] only looks in the cache. `cargo xtask guest` builds it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::error::{LabError, Result};
use crate::util::{self, ensure_packages, FileLock, InputHash};

/// The Debian release the guest is made of.
pub const DEBIAN_SUITE: &str = "bookworm";
/// Where debootstrap fetches the packages.
pub const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";
/// What debootstrap installs on top of `--variant=minbase`.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "systemd-sysv",
    "udev",
    "e2fsprogs",
];
/// The guest's kernel command line (its root is the first virtio disk).
pub const DEBIAN_CMDLINE: &str = "root=/dev/vda rw console=ttyS0 panic=-1 quiet";
/// The guest prints this, `=`, then what `systemctl is-system-running --wait` said.
pub const DEBIAN_STATE_MARKER: &str = "VIRTKIT-DEBIAN-STATE";

/// Bump when the recipe changes in a way the hashed texts below do not show.
const RECIPE: &str = "virtkit-debian-guest-v1";
/// Host packages the build needs.
const BUILD_PACKAGES: &[&str] = &["debootstrap", "e2fsprogs"];
const HOSTNAME: &str = "virtkit-debian";
const FSTAB: &str =
    "# virtkit: the root is the first virtio disk\n/dev/vda / ext4 rw,errors=remount-ro 0 0\n";
/// Timers that have nothing to do in a test guest (apt would reach for a network).
const DISABLED_TIMERS: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
];
/// Units masked (`systemctl mask`, by hand). The serial console's getty: systemd hangs up
/// ttyS0 before starting it (`TTYVHangup=`), which flushes whatever the report has queued
/// for the console but not yet sent, and it races the report for the port.
const MASKED_UNITS: &[&str] = &["serial-getty@ttyS0.service"];
/// A simple service (not oneshot: a oneshot would hold up the very start-up it waits for).
const REPORT_UNIT: &str = "[Unit]
Description=virtkit: report the system state on the console, then power off
After=multi-user.target

[Service]
Type=simple
ExecStart=/usr/local/sbin/virtkit-report

[Install]
WantedBy=multi-user.target
";
const REPORT_SCRIPT: &str = r#"#!/bin/sh
# virtkit: once start-up is over, print the system state between markers, then power off.
exec >/dev/console 2>&1
state=$(timeout 400 systemctl is-system-running --wait)
[ -n "$state" ] || state="timeout-$(systemctl is-system-running)"
echo "VIRTKIT-DEBIAN-UPTIME=$(cut -d' ' -f1 /proc/uptime)"
echo "VIRTKIT-DEBIAN-STARTUP=$(systemd-analyze 2>&1 | head -n 1)"
echo "VIRTKIT-DEBIAN-STATE=$state"
systemd-analyze blame 2>&1 | head -n 8 | sed 's/^/VIRTKIT-DEBIAN-BLAME /'
if [ "$state" != running ]; then
  echo "VIRTKIT-DEBIAN-FAILED-BEGIN"
  systemctl --failed --no-pager --full
  for u in $(systemctl --failed --plain --no-legend | cut -d' ' -f1); do
    systemctl status --no-pager --full --lines=15 "$u"
  done
  systemctl list-jobs --no-pager --full
  echo "VIRTKIT-DEBIAN-FAILED-END"
fi
# systemd's status lines on from here (SIGRTMIN+20 is 54; `quiet` turned them off), so
# that the console shows the shutdown.
kill -54 1
# What `systemctl poweroff` falls back to without D-Bus (it asks logind first, and
# says on the console that it cannot connect).
systemctl start poweroff.target --job-mode=replace-irreversibly --no-block
"#;

/// The built Debian guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebianGuest {
    /// The cache folder holding it all.
    pub dir: PathBuf,
    /// Debian's kernel (`/boot/vmlinuz-*` of the root), a bzImage.
    pub kernel: PathBuf,
    /// Debian's initramfs (`/boot/initrd.img-*`), made by initramfs-tools in the root.
    pub initrd: PathBuf,
    /// The root file system (ext4, no partition table) as a qcow2 image.
    pub disk: PathBuf,
    /// The kernel's version (`6.1.0-NN-cloud-amd64`).
    pub kernel_version: String,
}

fn cache_key() -> String {
    let mut h = InputHash::new(RECIPE);
    h.add(DEBIAN_SUITE.as_bytes())
        .add(DEBIAN_MIRROR.as_bytes())
        .add(DEBIAN_PACKAGES.join(",").as_bytes())
        .add(HOSTNAME.as_bytes())
        .add(FSTAB.as_bytes())
        .add(DISABLED_TIMERS.join(",").as_bytes())
        .add(MASKED_UNITS.join(",").as_bytes())
        .add(REPORT_UNIT.as_bytes())
        .add(REPORT_SCRIPT.as_bytes());
    h.hex()
}

fn guest_in(dir: &Path) -> Option<DebianGuest> {
    let kernel_version = fs::read_to_string(dir.join("kernel-version")).ok()?;
    let guest = DebianGuest {
        dir: dir.to_path_buf(),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        disk: dir.join("root.qcow2"),
        kernel_version: kernel_version.trim().to_string(),
    };
    (guest.kernel.is_file() && guest.initrd.is_file() && guest.disk.is_file()).then_some(guest)
}

fn final_dir() -> Result<PathBuf> {
    Ok(util::cache_dir("debian")?.join(format!("{DEBIAN_SUITE}-{}", cache_key())))
}

/// The Debian guest when `cargo xtask guest` (or [`debian_guest`]) has built it for
/// the current recipe; `None` otherwise. Never builds, never reaches the network.
pub fn debian_guest_built() -> Result<Option<DebianGuest>> {
    Ok(guest_in(&final_dir()?))
}

/// Builds (or finds in the cache) the Debian guest: `debootstrap --variant=minbase
/// --include=`[`DEBIAN_PACKAGES`] [`DEBIAN_SUITE`] from [`DEBIAN_MIRROR`], the root
/// configured (fstab, hostname, maintenance timers off, the report unit), the kernel
/// and initramfs taken out of `/boot`, the root packed with `mkfs.ext4 -d` and
/// converted with `qemu-img convert -O qcow2`. Needs root (debootstrap); installs
/// `debootstrap` and `e2fsprogs` when missing.
pub fn debian_guest() -> Result<DebianGuest> {
    let out = final_dir()?;
    if let Some(g) = guest_in(&out) {
        return Ok(g);
    }
    let cache = util::cache_dir("debian")?;
    let _lock = FileLock::acquire(&cache.join(".lock"))?;
    if let Some(g) = guest_in(&out) {
        return Ok(g);
    }
    if !util::is_root() {
        return Err(LabError::BadInput(
            "building the Debian guest needs root (debootstrap): run `cargo xtask guest` as root"
                .into(),
        ));
    }
    ensure_packages(BUILD_PACKAGES)?;
    if util::which("qemu-img").is_none() {
        ensure_packages(&["qemu-utils"])?;
    }
    let start = Instant::now();
    let tmp = cache.join(format!("build-{}.tmp", cache_key()));
    let root = debootstrap(&tmp, DEBIAN_PACKAGES, "takes a minute or two")?;
    eprintln!(
        "virtkit-lab: debootstrap took {:.0?}; packing the root",
        start.elapsed()
    );
    configure_root(&root)?;
    let kernel_version = take_boot_files(&root, &tmp)?;
    let used = dir_size(&root)?;
    // Room to spare for the guest's own writes; the image is sparse and qcow2 keeps
    // only what is used.
    let size_mib = (used * 2 / (1024 * 1024)).max(2048);
    let raw = tmp.join("root.ext4");
    util::run_captured(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "debian-root", "-d"])
            .arg(&root)
            .arg(&raw)
            .arg(format!("{size_mib}M")),
    )?;
    util::run_captured(
        Command::new("qemu-img")
            .args(["convert", "-O", "qcow2"])
            .arg(&raw)
            .arg(tmp.join("root.qcow2")),
    )?;
    fs::remove_file(&raw).map_err(LabError::io("removing", &raw))?;
    let packages = installed_packages(&root)?;
    fs::write(tmp.join("packages.txt"), &packages)
        .map_err(LabError::io("writing", tmp.join("packages.txt")))?;
    remove_build_dir(&root)?;
    let qcow2_size = fs::metadata(tmp.join("root.qcow2"))
        .map_err(LabError::io("reading", tmp.join("root.qcow2")))?
        .len();
    let info = format!(
        "suite {DEBIAN_SUITE}\nkernel {kernel_version}\npackages {}\nroot files {} MiB\n\
         disk {size_mib} MiB (ext4), root.qcow2 {} MiB\nbuild {:.0?}\n",
        packages.lines().count(),
        used >> 20,
        qcow2_size >> 20,
        start.elapsed()
    );
    fs::write(tmp.join("info.txt"), &info)
        .map_err(LabError::io("writing", tmp.join("info.txt")))?;
    fs::write(tmp.join("kernel-version"), &kernel_version)
        .map_err(LabError::io("writing", tmp.join("kernel-version")))?;
    let _ = fs::remove_dir_all(&out);
    fs::rename(&tmp, &out).map_err(LabError::io("renaming into", &out))?;
    eprint!(
        "virtkit-lab: Debian guest built in {}: {info}",
        out.display()
    );
    guest_in(&out).ok_or_else(|| {
        LabError::BadInput(format!(
            "the Debian guest in {} is incomplete",
            out.display()
        ))
    })
}

/// What the root needs to boot under vm-runner and report its state.
fn configure_root(root: &Path) -> Result<()> {
    let write = |rel: &str, text: &str, mode: u32| -> Result<()> {
        let p = root.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).map_err(LabError::io("creating", parent))?;
        }
        fs::write(&p, text).map_err(LabError::io("writing", &p))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).map_err(LabError::io("chmod", &p))
    };
    write("etc/fstab", FSTAB, 0o644)?;
    write("etc/hostname", &format!("{HOSTNAME}\n"), 0o644)?;
    write(
        "etc/hosts",
        &format!("127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n"),
        0o644,
    )?;
    write(
        "etc/systemd/system/virtkit-report.service",
        REPORT_UNIT,
        0o644,
    )?;
    write("usr/local/sbin/virtkit-report", REPORT_SCRIPT, 0o755)?;
    // `systemctl enable` and `disable`, done by hand (no chroot needed).
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants).map_err(LabError::io("creating", &wants))?;
    let link = wants.join("virtkit-report.service");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink("/etc/systemd/system/virtkit-report.service", &link)
        .map_err(LabError::io("linking", &link))?;
    for timer in DISABLED_TIMERS {
        let _ = fs::remove_file(
            root.join("etc/systemd/system/timers.target.wants")
                .join(timer),
        );
    }
    for unit in MASKED_UNITS {
        let link = root.join("etc/systemd/system").join(unit);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/null", &link).map_err(LabError::io("masking", &link))?;
    }
    Ok(())
}

/// Copies `/boot/vmlinuz-*` and `/boot/initrd.img-*` of the root into `out`; returns
/// the kernel version.
fn take_boot_files(root: &Path, out: &Path) -> Result<String> {
    let boot = root.join("boot");
    let mut versions: Vec<String> = fs::read_dir(&boot)
        .map_err(LabError::io("reading", &boot))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_string)
        })
        .collect();
    versions.sort();
    let version = versions
        .pop()
        .ok_or_else(|| LabError::BadInput(format!("no vmlinuz-* in {}", boot.display())))?;
    for (from, to) in [
        (format!("vmlinuz-{version}"), "vmlinuz"),
        (format!("initrd.img-{version}"), "initrd.img"),
    ] {
        let src = boot.join(&from);
        fs::copy(&src, out.join(to)).map_err(LabError::io("copying", &src))?;
    }
    Ok(version)
}

/// Bytes used by the files under `dir` (not following symlinks).
fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(LabError::io("reading", &d))? {
            let e = e.map_err(LabError::io("reading", &d))?;
            let m = e.metadata().map_err(LabError::io("reading", e.path()))?;
            if m.is_dir() {
                stack.push(e.path());
            }
            total += m.len();
        }
    }
    Ok(total)
}

/// The mount points under `dir` (from /proc/self/mounts), deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts_in(&text, dir)
}

fn mounts_in(mounts: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir) && m != dir)
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    found
}

/// Unmounts what an interrupted debootstrap may have left mounted (proc, sys, a bound
/// /dev) under `dir`; fails when something stays mounted.
/// Runs debootstrap (`--variant=minbase` plus `packages`, [`DEBIAN_SUITE`] from
/// [`DEBIAN_MIRROR`]) into `tmp/root`, `tmp` made afresh; the root. The mounts debootstrap
/// leaves are undone, and its log's end is in the error when it fails.
pub(crate) fn debootstrap(tmp: &Path, packages: &[&str], how_long: &str) -> Result<PathBuf> {
    remove_build_dir(tmp)?;
    fs::create_dir_all(tmp).map_err(LabError::io("creating", tmp))?;
    let root = tmp.join("root");
    eprintln!(
        "virtkit-lab: debootstrap {DEBIAN_SUITE} (minbase + {}) into {}; {how_long}",
        packages.join(","),
        root.display()
    );
    let bootstrap = util::run_captured(
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={}", packages.join(",")))
            .arg(DEBIAN_SUITE)
            .arg(&root)
            .arg(DEBIAN_MIRROR),
    );
    if let Err(e) = bootstrap {
        let log = fs::read_to_string(root.join("debootstrap/debootstrap.log")).unwrap_or_default();
        unmount_under(tmp)?;
        return Err(LabError::BadInput(format!(
            "debootstrap failed: {e}\n--- debootstrap.log (end) ---\n{}",
            util::tail(&log, 3000)
        )));
    }
    unmount_under(tmp)?;
    Ok(root)
}

/// `PACKAGE VERSION` lines for what dpkg has installed in `root`.
pub(crate) fn installed_packages(root: &Path) -> Result<String> {
    util::run_captured(
        Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                root.join("var/lib/dpkg").display()
            ))
            .args(["-W", "-f=${Package} ${Version}\n"]),
    )
}

pub(crate) fn unmount_under(dir: &Path) -> Result<()> {
    for m in mounts_under(dir) {
        if util::run_captured(Command::new("umount").arg(&m)).is_err() {
            let _ = util::run_captured(Command::new("umount").arg("-l").arg(&m));
        }
    }
    let left = mounts_under(dir);
    if left.is_empty() {
        Ok(())
    } else {
        Err(LabError::BadInput(format!(
            "cannot unmount {:?} under {}",
            left,
            dir.display()
        )))
    }
}

/// Removes a build folder, never across a mount point (a bound /dev would lose the
/// host's device nodes).
pub(crate) fn remove_build_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    unmount_under(dir)?;
    fs::remove_dir_all(dir).map_err(LabError::io("removing", dir))
}

/// What the Debian guest's report unit printed on its console.
#[derive(Debug, Clone, PartialEq)]
pub struct DebianReport {
    /// `systemctl is-system-running --wait`: `running` when all went well.
    pub state: String,
    /// The guest's uptime in seconds when start-up was over.
    pub uptime_s: Option<f64>,
    /// The first line of `systemd-analyze` (`Startup finished in ...`).
    pub startup: Option<String>,
    /// When not `running`: the failed units, their status and the pending jobs.
    pub failed: Option<String>,
}

impl DebianReport {
    /// Finds the report in a console; `None` when the guest never printed its state.
    pub fn parse(console: &str) -> Option<DebianReport> {
        let value = |key: &str| {
            let tag = format!("VIRTKIT-DEBIAN-{key}=");
            console.lines().rev().find_map(|l| {
                l.split_once(tag.as_str())
                    .map(|(_, v)| v.trim().to_string())
            })
        };
        let state = value("STATE")?;
        let failed = console
            .find("VIRTKIT-DEBIAN-FAILED-BEGIN\n")
            .map(|i| &console[i + "VIRTKIT-DEBIAN-FAILED-BEGIN\n".len()..])
            .map(|rest| match rest.find("VIRTKIT-DEBIAN-FAILED-END") {
                Some(end) => rest[..end].to_string(),
                None => rest.to_string(),
            });
        Some(DebianReport {
            state,
            uptime_s: value("UPTIME").and_then(|v| v.parse().ok()),
            startup: value("STARTUP"),
            failed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_is_parsed() {
        let console = "[  OK  ] Reached target multi-user.target\n\
                       VIRTKIT-DEBIAN-UPTIME=35.12\n\
                       VIRTKIT-DEBIAN-STARTUP=Startup finished in 2s (kernel) + 30s (userspace) = 32s\n\
                       VIRTKIT-DEBIAN-STATE=running\n";
        let r = DebianReport::parse(console).unwrap();
        assert_eq!(r.state, "running");
        assert_eq!(r.uptime_s, Some(35.12));
        assert!(r.startup.unwrap().starts_with("Startup finished"));
        assert_eq!(r.failed, None);
        let console = "VIRTKIT-DEBIAN-STATE=degraded\nVIRTKIT-DEBIAN-FAILED-BEGIN\n\
                       x.service loaded failed failed X\nVIRTKIT-DEBIAN-FAILED-END\n";
        let r = DebianReport::parse(console).unwrap();
        assert_eq!(r.state, "degraded");
        assert_eq!(
            r.failed.as_deref(),
            Some("x.service loaded failed failed X\n")
        );
        assert!(DebianReport::parse("no report\n").is_none());
    }

    #[test]
    fn mounts_under_a_build_dir_come_deepest_first() {
        let mounts = "proc /proc proc rw 0 0\n\
                      proc /t/b/root/proc proc rw 0 0\n\
                      udev /t/b/root/dev devtmpfs rw 0 0\n\
                      devpts /t/b/root/dev/pts devpts rw 0 0\n\
                      x /t/b2/y tmpfs rw 0 0\n";
        let m = mounts_in(mounts, Path::new("/t/b"));
        assert_eq!(
            m,
            [
                PathBuf::from("/t/b/root/dev/pts"),
                "/t/b/root/proc".into(),
                "/t/b/root/dev".into()
            ]
        );
    }

    #[test]
    fn the_recipe_is_in_the_cache_key() {
        assert_eq!(cache_key(), cache_key());
        assert!(REPORT_SCRIPT.contains(DEBIAN_STATE_MARKER));
        assert!(REPORT_UNIT.contains("Type=simple"));
    }
}
