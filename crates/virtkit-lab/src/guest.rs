//! Guest artifacts: the test guest's kernel and busybox initramfs images.
//!
//! Both are cached under `<workspace>/target/guest/` by a hash of their inputs, so
//! the second call returns at once.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cpio::CpioWriter;
use crate::error::{LabError, Result};
use crate::util::{self, ensure_packages, FileLock, InputHash};

/// The line the guest's `/init` prints once it runs (followed by ` uptime=<s>`).
pub const INIT_MARKER: &str = "VIRTKIT-INIT";
/// The guest prints this marker, then `=`, then the exit status of the test's script.
pub const CHECK_EXIT_MARKER: &str = "VIRTKIT-CHECK-EXIT";
/// A kernel command line that suits the test guest on a COM1 console.
pub const GUEST_CMDLINE: &str = "console=ttyS0 panic=-1 quiet";

/// Debian packages the guest kernel build needs.
pub const KERNEL_BUILD_PACKAGES: &[&str] = &[
    "linux-source-6.1",
    "bc",
    "flex",
    "bison",
    "libelf-dev",
    "libssl-dev",
    "make",
    "gcc",
    "xz-utils",
];

/// The test guest's kernel, in both forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestKernel {
    /// The compressed boot image (`arch/x86/boot/bzImage`).
    pub bzimage: PathBuf,
    /// The uncompressed ELF kernel, with a PVH note.
    pub vmlinux: PathBuf,
}

fn source_version() -> Result<String> {
    let out = util::run_captured(Command::new("dpkg-query").args([
        "-W",
        "-f=${Version}",
        "linux-source-6.1",
    ]))?;
    Ok(out.trim().to_string())
}

fn fragment_options(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.split_whitespace())
        .map(|o| o.trim_start_matches("CONFIG_").to_string())
        .collect()
}

/// Builds (or finds in the cache) the guest kernel: Debian's `linux-source-6.1`,
/// `make tinyconfig`, then the options of `guest/kernel.config`, `make olddefconfig`,
/// `make bzImage vmlinux`. About 6 minutes on 2 cores the first time; the build tree
/// is kept, so a changed fragment rebuilds only what changed.
pub fn guest_kernel() -> Result<GuestKernel> {
    let root = util::workspace_root()?;
    let fragment_path = root.join("guest/kernel.config");
    let fragment =
        fs::read_to_string(&fragment_path).map_err(LabError::io("reading", &fragment_path))?;
    let options = fragment_options(&fragment);
    if options.is_empty() {
        return Err(LabError::BadInput(format!(
            "{} names no options",
            fragment_path.display()
        )));
    }
    ensure_packages(KERNEL_BUILD_PACKAGES)?;
    let version = source_version()?;
    let key = InputHash::new("virtkit-guest-kernel-v1")
        .add(version.as_bytes())
        .add(fragment.as_bytes())
        .hex();
    let cache = util::cache_dir("guest")?;
    let out = cache.join(format!("kernel-{key}"));
    let kernel = GuestKernel {
        bzimage: out.join("bzImage"),
        vmlinux: out.join("vmlinux"),
    };
    if kernel.bzimage.is_file() && kernel.vmlinux.is_file() {
        return Ok(kernel);
    }
    let _lock = FileLock::acquire(&cache.join(".kernel.lock"))?;
    if kernel.bzimage.is_file() && kernel.vmlinux.is_file() {
        return Ok(kernel);
    }
    eprintln!(
        "virtkit-lab: building the guest kernel (linux-source {version}, {}); takes minutes",
        fragment_path.display()
    );
    let src = unpack_source(&cache, &version)?;
    let build = cache.join(format!("build-{version}"));
    fs::create_dir_all(&build).map_err(LabError::io("creating", &build))?;
    let o = format!("O={}", build.display());
    let make = |args: &[&str]| -> Result<String> {
        util::run_captured(Command::new("make").current_dir(&src).arg(&o).args(args))
    };
    make(&["tinyconfig"])?;
    let mut config = Command::new(src.join("scripts/config"));
    config.arg("--file").arg(build.join(".config"));
    for opt in &options {
        config.args(["-e", opt]);
    }
    util::run_captured(&mut config)?;
    make(&["olddefconfig"])?;
    let dot_config = fs::read_to_string(build.join(".config"))
        .map_err(LabError::io("reading", build.join(".config")))?;
    let unset: Vec<&str> = options
        .iter()
        .map(String::as_str)
        .filter(|o| !dot_config.lines().any(|l| l == format!("CONFIG_{o}=y")))
        .collect();
    if !unset.is_empty() {
        return Err(LabError::BadInput(format!(
            "{}: these options could not be enabled (missing dependencies?): {}",
            fragment_path.display(),
            unset.join(" ")
        )));
    }
    let jobs = format!(
        "-j{}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    );
    util::run_visible(Command::new("make").current_dir(&src).args([
        o.as_str(),
        jobs.as_str(),
        "-s",
        "bzImage",
        "vmlinux",
    ]))?;
    let tmp = cache.join(format!("kernel-{key}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(LabError::io("creating", &tmp))?;
    for (from, to) in [
        ("arch/x86/boot/bzImage", "bzImage"),
        ("vmlinux", "vmlinux"),
        (".config", "config"),
    ] {
        fs::copy(build.join(from), tmp.join(to))
            .map_err(LabError::io("copying", build.join(from)))?;
    }
    let _ = fs::remove_dir_all(&out);
    fs::rename(&tmp, &out).map_err(LabError::io("renaming into", &out))?;
    Ok(kernel)
}

fn unpack_source(cache: &Path, version: &str) -> Result<PathBuf> {
    let dir = cache.join(format!("src-{version}"));
    if !dir.join(".done").is_file() {
        let tarball = Path::new("/usr/src/linux-source-6.1.tar.xz");
        if !tarball.is_file() {
            return Err(LabError::BadInput(format!(
                "{} is missing (package linux-source-6.1)",
                tarball.display()
            )));
        }
        let tmp = cache.join(format!("src-{version}.tmp"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(LabError::io("creating", &tmp))?;
        util::run_captured(
            Command::new("tar")
                .arg("-xf")
                .arg(tarball)
                .arg("-C")
                .arg(&tmp),
        )?;
        fs::write(tmp.join(".done"), b"").map_err(LabError::io("writing", tmp.join(".done")))?;
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&tmp, &dir).map_err(LabError::io("renaming into", &dir))?;
    }
    let entries = fs::read_dir(&dir).map_err(LabError::io("reading", &dir))?;
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.is_dir() && p.join("Makefile").is_file())
        .ok_or_else(|| LabError::BadInput(format!("no kernel tree in {}", dir.display())))
}

/// The static busybox, installed from `busybox-static` when needed.
pub fn busybox() -> Result<PathBuf> {
    ensure_packages(&["busybox-static"])?;
    let path = PathBuf::from("/bin/busybox");
    if !path.is_file() {
        return Err(LabError::PackagesMissing(vec!["busybox-static".into()]));
    }
    Ok(path)
}

/// Packs (or finds in the cache) an uncompressed initramfs for the test guest: static
/// busybox, the `/init` of `guest/init.sh` (which prints [`INIT_MARKER`], runs
/// `init_script` as `/check.sh`, prints [`CHECK_EXIT_MARKER`]`=<status>` and powers
/// off with `poweroff -f`), plus `extra_files` as (host path, path in the guest).
pub fn initramfs(init_script: &str, extra_files: &[(PathBuf, &str)]) -> Result<PathBuf> {
    let root = util::workspace_root()?;
    let init_path = root.join("guest/init.sh");
    let init = fs::read(&init_path).map_err(LabError::io("reading", &init_path))?;
    let busybox = busybox()?;
    let mut hash = InputHash::new("virtkit-guest-initramfs-v1");
    hash.add(&init)
        .add(init_script.as_bytes())
        .add_file(&busybox)?;
    for (host, name) in extra_files {
        hash.add(name.as_bytes()).add_file(host)?;
    }
    let cache = util::cache_dir("guest")?;
    let out = cache.join(format!("initramfs-{}.cpio", hash.hex()));
    if out.is_file() {
        return Ok(out);
    }
    let mut w = CpioWriter::new(Vec::new());
    let io = |e| LabError::io("packing", &out)(e);
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "mnt", "root", "etc",
    ] {
        w.dir(d, 0o755).map_err(io)?;
    }
    w.char_dev("dev/console", 0o600, 5, 1).map_err(io)?;
    let bb = fs::read(&busybox).map_err(LabError::io("reading", &busybox))?;
    w.file("bin/busybox", 0o755, &bb).map_err(io)?;
    w.symlink("bin/sh", "busybox").map_err(io)?;
    w.file("init", 0o755, &init).map_err(io)?;
    w.file("check.sh", 0o755, init_script.as_bytes())
        .map_err(io)?;
    for (host, name) in extra_files {
        let data = fs::read(host).map_err(LabError::io("reading", host))?;
        let mode = fs::metadata(host)
            .map_err(LabError::io("reading", host))?
            .permissions()
            .mode();
        w.file(name, mode & 0o7777, &data)
            .map_err(|e| LabError::BadInput(format!("{name}: {e}")))?;
    }
    let bytes = w.finish().map_err(io)?;
    util::write_atomic(&out, &bytes)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_parsing_skips_comments_and_prefixes() {
        let opts = fragment_options("# comment\nA B # trailing\n\nCONFIG_C\n");
        assert_eq!(opts, ["A", "B", "C"]);
    }

    #[test]
    fn committed_fragment_has_the_boot_essentials() {
        let root = util::workspace_root().unwrap();
        let text = fs::read_to_string(root.join("guest/kernel.config")).unwrap();
        let opts = fragment_options(&text);
        for needed in [
            "64BIT",
            "SERIAL_8250_CONSOLE",
            "BLK_DEV_INITRD",
            "PVH",
            "ACPI",
            "SMP",
            "VIRTIO_MMIO",
        ] {
            assert!(
                opts.iter().any(|o| o == needed),
                "{needed} missing from guest/kernel.config"
            );
        }
    }

    #[test]
    fn initramfs_is_cached_and_holds_init_and_extra_files() {
        let dir = tempfile::tempdir().unwrap();
        let extra = dir.path().join("payload.txt");
        fs::write(&extra, "extra-content\n").unwrap();
        let script = format!("echo unit-test-{}", std::process::id());
        let a = initramfs(&script, &[(extra.clone(), "opt/payload.txt")]).unwrap();
        let b = initramfs(&script, &[(extra, "opt/payload.txt")]).unwrap();
        assert_eq!(a, b, "same inputs give the same cached image");
        let bytes = fs::read(&a).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("opt/payload.txt") && text.contains("extra-content"));
        assert!(text.contains(&script) && text.contains(INIT_MARKER));
        fs::remove_file(a).unwrap();
    }
}
