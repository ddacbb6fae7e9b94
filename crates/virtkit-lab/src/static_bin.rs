//! Statically linked builds of the workspace's programs, for the lab.

use std::path::PathBuf;
use std::process::Command;

use crate::error::{LabError, Result};
use crate::util;

/// The target triple static builds use (the gnu target with `+crt-static`).
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The `RUSTFLAGS` of static builds: glibc linked in, and the relative relocations of the
/// static-PIE packed (`DT_RELR`, glibc 2.36 and binutils 2.38 or later), which the program
/// applies to itself at start: 8 KiB instead of 200 KiB of `.rela.dyn` read at every start
/// (issue #12's memory overhead and start-up time, docs/benchmarks.md).
pub const STATIC_RUSTFLAGS: &str =
    "-C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs";

/// Builds `bin` of workspace package `package` statically (release profile, gnu target,
/// [`STATIC_RUSTFLAGS`]) in its own target dir, `<workspace>/target/static`,
/// and returns the binary's path. Cargo makes the second call cheap.
pub fn static_binary(package: &str, bin: &str) -> Result<PathBuf> {
    let root = util::workspace_root()?;
    let target_dir = root.join("target/static");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--release",
            "--target",
            STATIC_TARGET,
            "-p",
            package,
            "--bin",
            bin,
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", STATIC_RUSTFLAGS)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS");
    eprintln!("virtkit-lab: static build of {package}/{bin}");
    util::run_captured(&mut cmd)?;
    let path = target_dir.join(STATIC_TARGET).join("release").join(bin);
    if !path.is_file() {
        return Err(LabError::BadInput(format!(
            "cargo built no {}",
            path.display()
        )));
    }
    let bytes = std::fs::read(&path).map_err(LabError::io("reading", &path))?;
    if has_interpreter(&bytes) {
        return Err(LabError::BadInput(format!(
            "{} is not statically linked",
            path.display()
        )));
    }
    Ok(path)
}

/// Builds integration test `test` of workspace package `package` statically (debug
/// profile, all features, gnu target, [`STATIC_RUSTFLAGS`]) in `<workspace>/target/static`,
/// without running it, and returns the test binary's path: run it in the lab with
/// [`Payload::file`](crate::Payload::file) (for tests that need what only the lab has).
pub fn static_test(package: &str, test: &str) -> Result<PathBuf> {
    let root = util::workspace_root()?;
    let target_dir = root.join("target/static");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "test",
            "--no-run",
            "--all-features",
            "--message-format=json-render-diagnostics",
        ])
        .args(["--target", STATIC_TARGET, "-p", package, "--test", test])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", STATIC_RUSTFLAGS)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS");
    eprintln!("virtkit-lab: static build of test {package}/{test}");
    let out = util::run_captured(&mut cmd)?;
    let needle = format!("\"name\":\"{test}\"");
    let exe = out
        .lines()
        .filter(|l| l.contains(&needle) && l.contains("\"test\":true"))
        .find_map(|l| {
            let rest = &l[l.find("\"executable\":\"")? + 14..];
            Some(PathBuf::from(&rest[..rest.find('"')?]))
        })
        .ok_or_else(|| {
            LabError::BadInput(format!(
                "cargo reported no executable for test {package}/{test}"
            ))
        })?;
    let bytes = std::fs::read(&exe).map_err(LabError::io("reading", &exe))?;
    if has_interpreter(&bytes) {
        return Err(LabError::BadInput(format!(
            "{} is not statically linked",
            exe.display()
        )));
    }
    Ok(exe)
}

/// True when an ELF64 file has a `PT_INTERP` program header (it is dynamically linked).
pub fn has_interpreter(elf: &[u8]) -> bool {
    let rd16 = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let rd64 = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as usize)
    };
    if elf.get(0..5) != Some(b"\x7fELF\x02") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (rd64(0x20), rd16(0x36), rd16(0x38)) else {
        return false;
    };
    (0..phnum).any(|i| {
        let at = phoff.saturating_add(i.saturating_mul(phentsize));
        elf.get(at..at + 4) == Some(&3u32.to_le_bytes()[..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreter_detection() {
        let ls = std::fs::read("/bin/ls").unwrap();
        assert!(has_interpreter(&ls), "/bin/ls is dynamic");
        let bb = std::fs::read("/bin/busybox")
            .expect("busybox-static is needed (apt-get install busybox-static)");
        assert!(!has_interpreter(&bb), "busybox-static is static");
        assert!(!has_interpreter(b"not an elf"));
    }
}
