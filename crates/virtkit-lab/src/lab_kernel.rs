//! The lab's kernel: Debian's cloud kernel unpacked from its package (never installed),
//! and the base initramfs that loads its modules ([`crate::LAB_MODULES`] and their
//! dependencies, read from each module's `depends=`).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cpio::CpioWriter;
use crate::error::{LabError, Result};
use crate::guest;
use crate::util::{self, FileLock, InputHash};

/// Debian's cloud kernel, unpacked: `(vmlinuz, modules dir)`.
pub fn lab_kernel() -> Result<(PathBuf, PathBuf)> {
    let cache = util::cache_dir("lab-kernel")?;
    let _lock = FileLock::acquire(&cache.join(".lock"))?;
    let pkg = match util::run_captured(
        Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]),
    ) {
        Ok(text) => text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|d| d.starts_with("linux-image-6") || d.starts_with("linux-image-7"))
            .map(str::to_string),
        Err(_) => None,
    };
    let pkg = match pkg {
        Some(p) => p,
        None => {
            // apt knows nothing (no lists yet, or offline): use what is unpacked, else
            // refresh the lists when root and ask again.
            if let Some(found) = unpacked_kernels(&cache).into_iter().next() {
                found
            } else if util::is_root() {
                let _ = util::run_captured(Command::new("apt-get").args(["update", "-q"]));
                let text = util::run_captured(
                    Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]),
                )
                .map_err(|e| {
                    LabError::LabKernelNotFound(format!(
                        "apt-cache depends linux-image-cloud-amd64: {e}"
                    ))
                })?;
                text.lines()
                    .filter_map(|l| l.trim().strip_prefix("Depends: "))
                    .find(|d| d.starts_with("linux-image-"))
                    .map(str::to_string)
                    .ok_or_else(|| {
                        LabError::LabKernelNotFound(
                            "linux-image-cloud-amd64 has no kernel dependency".into(),
                        )
                    })?
            } else {
                return Err(LabError::LabKernelNotFound(
                    "apt-cache does not know linux-image-cloud-amd64 (run apt-get update as root)"
                        .into(),
                ));
            }
        }
    };
    let dir = cache.join(&pkg);
    if !dir.join(".done").is_file() {
        eprintln!("virtkit-lab: fetching the lab kernel {pkg}");
        let dl = cache.join("download");
        let _ = fs::remove_dir_all(&dl);
        fs::create_dir_all(&dl).map_err(LabError::io("creating", &dl))?;
        let download = || {
            util::run_captured(
                Command::new("apt-get")
                    .arg("download")
                    .arg(&pkg)
                    .current_dir(&dl),
            )
        };
        if let Err(first) = download() {
            // Stale package lists name a version the mirror no longer has: refresh, retry.
            if !util::is_root() {
                return Err(LabError::LabKernelNotFound(format!(
                    "apt-get download {pkg}: {first}"
                )));
            }
            let _ = util::run_captured(Command::new("apt-get").args(["update", "-q"]));
            download()
                .map_err(|e| LabError::LabKernelNotFound(format!("apt-get download {pkg}: {e}")))?;
        }
        let deb = fs::read_dir(&dl)
            .map_err(LabError::io("reading", &dl))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| {
                LabError::LabKernelNotFound(format!("apt-get download {pkg} gave no .deb"))
            })?;
        let tmp = cache.join(format!("{pkg}.tmp"));
        let _ = fs::remove_dir_all(&tmp);
        util::run_captured(Command::new("dpkg").arg("-x").arg(&deb).arg(&tmp))
            .map_err(|e| LabError::LabKernelNotFound(format!("dpkg -x {}: {e}", deb.display())))?;
        fs::write(tmp.join(".done"), b"").map_err(LabError::io("writing", &tmp))?;
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&tmp, &dir).map_err(LabError::io("renaming into", &dir))?;
        let _ = fs::remove_dir_all(&dl);
    }
    let version = pkg.trim_start_matches("linux-image-");
    let vmlinuz = dir.join(format!("boot/vmlinuz-{version}"));
    let modules = dir.join(format!("lib/modules/{version}/kernel"));
    if !vmlinuz.is_file() || !modules.is_dir() {
        return Err(LabError::LabKernelNotFound(format!(
            "{} or {} missing",
            vmlinuz.display(),
            modules.display()
        )));
    }
    Ok((vmlinuz, modules))
}

fn unpacked_kernels(cache: &Path) -> Vec<String> {
    let mut found: Vec<String> = fs::read_dir(cache)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(".done").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    found.reverse();
    found
}

/// Maps module names (with `_`) to their files under the modules dir.
fn module_index(dir: &Path) -> HashMap<String, PathBuf> {
    let mut index = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
        {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(name) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ko"))
            {
                index.insert(name.replace('-', "_"), p);
            }
        }
    }
    index
}

/// The `depends=` list of a module's `.modinfo`.
fn module_depends(ko: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    ko.windows(key.len())
        .position(|w| w == key)
        .map(|pos| {
            let rest = &ko[pos + key.len()..];
            let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end])
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default()
}

/// Resolves modules and their dependencies into load order: `(name, file)`.
fn resolve_modules(dir: &Path, wanted: &[String]) -> Result<Vec<(String, PathBuf)>> {
    let index = module_index(dir);
    let mut order: Vec<(String, PathBuf)> = Vec::new();
    fn visit(
        name: &str,
        index: &HashMap<String, PathBuf>,
        order: &mut Vec<(String, PathBuf)>,
        depth: usize,
    ) -> Result<()> {
        if order.iter().any(|(n, _)| n == name) {
            return Ok(());
        }
        let path = index.get(name).ok_or_else(|| {
            LabError::BadInput(format!(
                "lab kernel module {name} not found (built in, or a typo?)"
            ))
        })?;
        if depth > 32 {
            return Err(LabError::BadInput(format!(
                "module dependency loop at {name}"
            )));
        }
        let bytes = fs::read(path).map_err(LabError::io("reading", path))?;
        for dep in module_depends(&bytes) {
            visit(&dep, index, order, depth + 1)?;
        }
        order.push((name.to_string(), path.clone()));
        Ok(())
    }
    for w in wanted {
        visit(&w.replace('-', "_"), &index, &mut order, 0)?;
    }
    Ok(order)
}

/// The lab's base initramfs (busybox, modules, /init), cached by its inputs.
pub(crate) fn lab_base(modules_dir: &Path, modules: &[String]) -> Result<PathBuf> {
    let root = util::workspace_root()?;
    let init_path = root.join("guest/lab-init.sh");
    let init = fs::read(&init_path).map_err(LabError::io("reading", &init_path))?;
    let busybox = guest::busybox()?;
    let resolved = resolve_modules(modules_dir, modules)?;
    let mut hash = InputHash::new("virtkit-lab-base-v1");
    hash.add(&init).add_file(&busybox)?;
    for (name, path) in &resolved {
        hash.add(name.as_bytes())
            .add(path.to_string_lossy().as_bytes());
    }
    let cache = util::cache_dir("lab-kernel")?;
    let out = cache.join(format!("base-{}.cpio", hash.hex()));
    if out.is_file() {
        return Ok(out);
    }
    let io = |e| LabError::io("packing", &out)(e);
    let mut w = CpioWriter::new(Vec::new());
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "lib", "lib64", "etc", "proc", "sys", "dev", "tmp",
        "run", "root", "payload",
    ] {
        w.dir(d, 0o755).map_err(io)?;
    }
    w.char_dev("dev/console", 0o600, 5, 1).map_err(io)?;
    let bb = fs::read(&busybox).map_err(LabError::io("reading", &busybox))?;
    w.file("bin/busybox", 0o755, &bb).map_err(io)?;
    w.symlink("bin/sh", "busybox").map_err(io)?;
    w.file("init", 0o755, &init).map_err(io)?;
    w.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .map_err(io)?;
    w.file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")
        .map_err(io)?;
    w.file("etc/hosts", 0o644, b"127.0.0.1 localhost lab\n")
        .map_err(io)?;
    let mut list = String::new();
    for (name, path) in &resolved {
        let data = fs::read(path).map_err(LabError::io("reading", path))?;
        w.file(&format!("lab/mods/{name}.ko"), 0o644, &data)
            .map_err(io)?;
        list.push_str(name);
        list.push('\n');
    }
    w.file("lab/modules", 0o644, list.as_bytes()).map_err(io)?;
    let bytes = w.finish().map_err(io)?;
    util::write_atomic(&out, &bytes)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_depends_are_parsed() {
        let ko = b"junk\0license=GPL\0depends=kvm,irq-bypass\0vermagic=6.1\0";
        assert_eq!(module_depends(ko), ["kvm", "irq_bypass"]);
        assert!(module_depends(b"\0depends=\0").is_empty());
    }
}
