//! `cargo xtask fuzz [TARGET...] [--time SECONDS] [--jobs N] [--build-only]`: the fuzz suite
//! as one command. Installs cargo-fuzz when missing, runs each chosen target (default: all
//! of `fuzz/Cargo.toml`'s) for the given time with a per-input timeout (a hang is a
//! finding), keeps the corpus under `fuzz/corpus/TARGET`, minimizes it afterwards, and on a
//! crash prints the target, the input and the one command that reproduces it; exits
//! non-zero when any target crashed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// libFuzzer's per-input limit, seconds: an input that runs longer is a hang, reported
/// like a crash.
pub const INPUT_TIMEOUT_S: u32 = 10;

fn fuzz_dir() -> Result<PathBuf> {
    Ok(virtkit_lab::workspace_root()?.join("fuzz"))
}

/// The targets `fuzz/Cargo.toml` declares, in file order.
pub fn targets(fuzz: &Path) -> Result<Vec<String>> {
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml"))
        .with_context(|| format!("reading {}/Cargo.toml", fuzz.display()))?;
    let mut out = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin {
            if let Some(v) = line.strip_prefix("name") {
                let name = v
                    .trim_start()
                    .trim_start_matches('=')
                    .trim()
                    .trim_matches('"');
                out.push(name.to_string());
            }
        }
    }
    if out.is_empty() {
        bail!("no [[bin]] targets in {}/Cargo.toml", fuzz.display());
    }
    Ok(out)
}

fn cargo_fuzz(fuzz: &Path) -> Command {
    let mut c = Command::new("cargo");
    // cargo-fuzz needs nightly flags (-Z sanitizer); the stable toolchain accepts them
    // with RUSTC_BOOTSTRAP, so no second toolchain is needed.
    c.env("RUSTC_BOOTSTRAP", "1").arg("fuzz").current_dir(fuzz);
    c
}

fn ensure_cargo_fuzz() -> Result<()> {
    let ok = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Ok(());
    }
    eprintln!("xtask: fuzz: installing cargo-fuzz (cargo install cargo-fuzz --locked)");
    let st = Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("running cargo install")?;
    if !st.success() {
        bail!("cargo install cargo-fuzz failed ({st})");
    }
    Ok(())
}

fn artifacts(dir: &Path) -> BTreeSet<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Replaces the found (non-`seed-`) inputs of `corpus` by a minimal set with the same
/// coverage: libFuzzer's `-merge=1` into a fresh directory, then swapped in. Committed
/// `seed-*` files are never removed.
fn minimize(fuzz: &Path, t: &str, corpus: &Path) -> Result<()> {
    let merged = fuzz.join("corpus").join(format!(".{t}.merge"));
    let _ = std::fs::remove_dir_all(&merged);
    std::fs::create_dir_all(&merged)?;
    let st = cargo_fuzz(fuzz)
        .args(["run", "--release", t])
        .arg(&merged)
        .arg(corpus)
        .arg("--")
        .arg("-merge=1")
        .arg(format!("-timeout={INPUT_TIMEOUT_S}"))
        .status()
        .context("cargo fuzz run -merge=1")?;
    if !st.success() {
        let _ = std::fs::remove_dir_all(&merged);
        bail!("merge exited with {st}");
    }
    let is_seed = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("seed-"))
    };
    let before = artifacts(corpus).len();
    for f in artifacts(corpus) {
        if !is_seed(&f) {
            std::fs::remove_file(&f)?;
        }
    }
    for f in artifacts(&merged) {
        if let Some(name) = f.file_name() {
            if !corpus.join(name).exists() {
                std::fs::rename(&f, corpus.join(name))?;
            }
        }
    }
    std::fs::remove_dir_all(&merged)?;
    eprintln!(
        "xtask: fuzz: {t}: corpus {before} -> {} files",
        artifacts(corpus).len()
    );
    Ok(())
}

/// Options parsed from the command line.
#[derive(Debug, Default)]
struct Options {
    targets: Vec<String>,
    time: u64,
    jobs: u32,
    build_only: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        time: 60,
        jobs: 1,
        ..Options::default()
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .with_context(|| format!("fuzz: {a} needs a value"))
        };
        match a.as_str() {
            "--time" => o.time = val()?.parse().context("fuzz: --time SECONDS")?,
            "--jobs" => o.jobs = val()?.parse().context("fuzz: --jobs N")?,
            "--build-only" => o.build_only = true,
            s if s.starts_with('-') => {
                bail!("fuzz: unknown option {s}; usage: fuzz [TARGET...] [--time S] [--jobs N] [--build-only]")
            }
            t => o.targets.push(t.to_string()),
        }
    }
    if o.jobs == 0 {
        bail!("fuzz: --jobs must be at least 1");
    }
    Ok(o)
}

/// Runs the fuzz task.
pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let fuzz = fuzz_dir()?;
    let all = targets(&fuzz)?;
    let chosen = if o.targets.is_empty() {
        all.clone()
    } else {
        for t in &o.targets {
            if !all.contains(t) {
                bail!("fuzz: no target {t:?}; targets: {}", all.join(", "));
            }
        }
        o.targets.clone()
    };
    ensure_cargo_fuzz()?;
    let mut crashed = Vec::new();
    for t in &chosen {
        let st = cargo_fuzz(&fuzz)
            .args(["build", "--release", t])
            .status()
            .context("cargo fuzz build")?;
        if !st.success() {
            bail!("fuzz: target {t} does not build");
        }
        if o.build_only {
            continue;
        }
        let corpus = fuzz.join("corpus").join(t);
        let art_dir = fuzz.join("artifacts").join(t);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&art_dir)?;
        let before = artifacts(&art_dir);
        let started = Instant::now();
        let mut cmd = cargo_fuzz(&fuzz);
        cmd.args(["run", "--release", t])
            .arg(&corpus)
            .arg("--")
            .arg(format!("-timeout={INPUT_TIMEOUT_S}"))
            .arg(format!("-max_total_time={}", o.time))
            .arg("-print_final_stats=1");
        if o.jobs > 1 {
            cmd.arg(format!("-fork={}", o.jobs));
        }
        let st = cmd.status().context("cargo fuzz run")?;
        let new: Vec<_> = artifacts(&art_dir).difference(&before).cloned().collect();
        eprintln!(
            "xtask: fuzz: {t}: {:.0} s, exit {st}, {} new artifact(s)",
            started.elapsed().as_secs_f64(),
            new.len()
        );
        if !st.success() || !new.is_empty() {
            for input in &new {
                eprintln!(
                    "xtask: fuzz: CRASH in {t}: input {}\n  reproduce: cd {} && RUSTC_BOOTSTRAP=1 cargo fuzz run --release {t} {}",
                    input.display(),
                    fuzz.display(),
                    input.display()
                );
            }
            crashed.push(t.clone());
            continue;
        }
        // Keep the corpus small: drop inputs that add no coverage (the committed seeds stay).
        if let Err(e) = minimize(&fuzz, t, &corpus) {
            eprintln!("xtask: fuzz: {t}: corpus minimization failed ({e:#}); corpus kept as is");
        }
    }
    if !crashed.is_empty() {
        bail!("fuzz: crashes or hangs in {}", crashed.join(", "));
    }
    eprintln!("xtask: fuzz: {} target(s) clean", chosen.len());
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lists_the_targets_of_the_fuzz_manifest() {
        let fuzz = virtkit_lab::workspace_root().unwrap().join("fuzz");
        let t = targets(&fuzz).unwrap();
        assert!(t.contains(&"virtio_blk".to_string()), "{t:?}");
        assert!(!t.contains(&"virtkit-fuzz".to_string()), "{t:?}");
    }

    #[test]
    fn parses_options() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let o = parse(&s(&["a", "--time", "30", "--jobs", "2", "b"])).unwrap();
        assert_eq!((o.targets, o.time, o.jobs), (s(&["a", "b"]), 30, 2));
        assert!(parse(&s(&["--jobs", "0"])).is_err());
        assert!(parse(&s(&["--bogus"])).is_err());
        assert!(parse(&s(&["--time"])).is_err());
    }
}
