//! `cargo xtask bench [--quick] [--update-docs] [GROUP...]`: runs the benchmark groups
//! (each side by side with its peer, through the scripts in benches/scripts), and writes
//! `target/bench/report.md`, `target/bench/report.json` and `target/bench/ratios.svg`.
//!
//! - `--quick`: fewer runs and rounds, smaller sizes (the report says so).
//! - `GROUP...`: only these groups (`boot`, `vmm-startup`, `vmm-memory`, `qcow2`, `blk`,
//!   `net`, `containers`, `workflow`).
//! - `--update-docs`: put the report's table into docs/benchmarks.md as a dated section
//!   (between `<!-- bench:begin -->` and `<!-- bench:end -->`, newest first). Alone, it
//!   uses the last report (target/bench/report.json) and runs nothing; with `--quick` or
//!   groups, it runs them first.
//!
//! A group whose prerequisite is missing, whose script fails, or whose result lines are
//! missing or malformed fails: the report says why, and the command exits non-zero at
//! the end, after the other groups ran. A missed target is a finding, not a failure.

mod docs;
mod groups;
mod plot;
mod report;
#[cfg(test)]
mod tests;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use groups::{Build, Group, Need};
use report::{GroupRun, Machine, Report};

const USAGE: &str = "usage: cargo xtask bench [--quick] [--update-docs] [GROUP...]";

#[derive(Debug, Default, PartialEq)]
struct Options {
    quick: bool,
    update_docs: bool,
    groups: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut o = Options::default();
    for a in args {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--update-docs" => o.update_docs = true,
            "-h" | "--help" => bail!(
                "{USAGE}\ngroups: {}",
                groups::GROUPS
                    .iter()
                    .map(|g| g.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            s if s.starts_with('-') => bail!("bench: unknown option {s}; {USAGE}"),
            s => o.groups.push(s.to_string()),
        }
    }
    Ok(o)
}

/// The entry point of `cargo xtask bench`.
pub fn run(args: &[String]) -> Result<()> {
    let opts = parse_args(args)?;
    let root = virtkit_lab::workspace_root()?;
    let out_dir = root.join("target/bench");
    if opts.update_docs && !opts.quick && opts.groups.is_empty() {
        let path = out_dir.join("report.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("reading {} (run `cargo xtask bench` first)", path.display())
        })?;
        let report: Report =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        return update_docs(&root, &report);
    }
    let selected = groups::select(&opts.groups).map_err(anyhow::Error::msg)?;
    let report = run_groups(&root, &out_dir, &selected, opts.quick, args)?;
    if opts.update_docs {
        update_docs(&root, &report)?;
    }
    let failed = report.failed_groups();
    if !failed.is_empty() {
        bail!(
            "bench: {} of {} groups failed: {} (see {})",
            failed.len(),
            report.groups.len(),
            failed
                .iter()
                .map(|g| g.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            out_dir.join("report.md").display()
        );
    }
    Ok(())
}

fn update_docs(root: &Path, report: &Report) -> Result<()> {
    let path = root.join("docs/benchmarks.md");
    let doc =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let new = docs::update(&doc, report)?;
    std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "xtask bench: added the report of {} to {}",
        report.date,
        path.display()
    );
    Ok(())
}

fn run_groups(
    root: &Path,
    out_dir: &Path,
    selected: &[&Group],
    quick: bool,
    args: &[String],
) -> Result<Report> {
    let logs = out_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let start = Instant::now();
    let date = utc_now();
    let load_start = load_average();
    let mut command = String::from("cargo xtask bench");
    for a in args {
        command.push(' ');
        command.push_str(a);
    }
    eprintln!(
        "xtask bench: {} group(s){}, load average {:.2} {:.2} {:.2}",
        selected.len(),
        if quick { ", quick" } else { "" },
        load_start[0],
        load_start[1],
        load_start[2]
    );
    let build_start = Instant::now();
    let builds = build_all(selected);
    let builds_seconds = build_start.elapsed().as_secs_f64();
    let mut runs = Vec::new();
    let mut figures = Vec::new();
    for g in selected {
        let (run, figs) = run_group(root, &logs, g, quick, &builds);
        if let Some(e) = &run.error {
            eprintln!("xtask bench: group {} FAILED: {e}", g.name);
        } else {
            eprintln!(
                "xtask bench: group {} ok ({} figures, {})",
                g.name,
                figs.len(),
                report::duration(run.seconds)
            );
        }
        runs.push(run);
        figures.extend(figs);
    }
    let report = Report {
        quick,
        date,
        commit: commit(root),
        command,
        machine: machine(),
        load_start,
        load_end: load_average(),
        seconds: start.elapsed().as_secs_f64(),
        builds_seconds,
        groups: runs,
        figures,
    };
    write_outputs(out_dir, &report)?;
    Ok(report)
}

fn write_outputs(out_dir: &Path, report: &Report) -> Result<()> {
    let write = |name: &str, bytes: &[u8]| -> Result<PathBuf> {
        let p = out_dir.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    };
    write(
        "report.json",
        serde_json::to_string_pretty(report)?.as_bytes(),
    )?;
    let plot = match plot::render_svg(report) {
        Ok(svg) => {
            write("ratios.svg", svg.as_bytes())?;
            Some("ratios.svg")
        }
        Err(e) => {
            eprintln!("xtask bench: no plot: {e:#}");
            None
        }
    };
    let md = write(
        "report.md",
        report::render_markdown(report, plot).as_bytes(),
    )?;
    println!("\n{}", report::figures_table(report));
    eprintln!(
        "xtask bench: wrote {} (and report.json{}) in {}",
        md.display(),
        if plot.is_some() { ", ratios.svg" } else { "" },
        out_dir.display()
    );
    Ok(())
}

/// A build and how it went: the program's path for a static build, or why it failed.
type Built = (Build, Result<Option<PathBuf>, String>);

/// Does every build the groups need, once each, before any measurement (a failed build
/// fails the groups that need it; the others go on).
fn build_all(selected: &[&Group]) -> Vec<Built> {
    let mut builds: Vec<Build> = Vec::new();
    for b in selected.iter().flat_map(|g| g.builds) {
        if !builds.contains(b) {
            builds.push(*b);
        }
    }
    let mut done = Vec::new();
    for b in builds {
        let start = Instant::now();
        eprintln!("xtask bench: build: {}", b.describe());
        let result = match b {
            Build::Static(package, bin) => virtkit_lab::static_binary(package, bin)
                .map(Some)
                .map_err(|e| e.to_string()),
            Build::Cargo { args, env } => {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let root = virtkit_lab::workspace_root().map_err(|e| e.to_string());
                root.and_then(|root| {
                    let status = Command::new(&cargo)
                        .args(args)
                        .envs(env.iter().copied())
                        .current_dir(root)
                        .stdin(Stdio::null())
                        .status()
                        .map_err(|e| format!("running {cargo}: {e}"))?;
                    if status.success() {
                        Ok(None)
                    } else {
                        Err(format!("exited with {status}"))
                    }
                })
            }
        };
        match &result {
            Ok(_) => eprintln!(
                "xtask bench: build: {} done in {}",
                b.describe(),
                report::duration(start.elapsed().as_secs_f64())
            ),
            Err(e) => eprintln!("xtask bench: build: {} FAILED: {e}", b.describe()),
        }
        done.push((b, result));
    }
    done
}

/// Runs one group; never fails itself: a failure is recorded in the returned run.
fn run_group(
    root: &Path,
    logs: &Path,
    g: &Group,
    quick: bool,
    builds: &[Built],
) -> (GroupRun, Vec<report::Figure>) {
    let start = Instant::now();
    let mode = g.mode(quick);
    let mut run = GroupRun {
        name: g.name.to_string(),
        title: g.title.to_string(),
        command: g.command(quick),
        measures: mode.measures.to_string(),
        ok: false,
        error: None,
        seconds: 0.0,
        log: None,
    };
    eprintln!("\nxtask bench: == {} ({})", g.name, run.command);
    let result = (|| -> Result<Vec<report::Figure>> {
        let missing: Vec<String> = g
            .needs
            .iter()
            .filter_map(|n| groups::check(*n, root).err())
            .collect();
        if !missing.is_empty() {
            bail!("prerequisite missing: {}", missing.join("; "));
        }
        for (b, r) in builds.iter().filter(|(b, _)| g.builds.contains(b)) {
            if let Err(e) = r {
                bail!("build failed: {}: {}", b.describe(), failure_excerpt(e));
            }
        }
        // Short errors, not backtraces, in the logs and the report.
        let mut env: Vec<(String, String)> = [("RUST_BACKTRACE", "0"), ("RUST_LIB_BACKTRACE", "0")]
            .iter()
            .chain(mode.env)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if g.needs.contains(&Need::StaticVmRunner) {
            // The one built before the measurements (building again here would time the
            // compiler if the sources changed meanwhile).
            let vm_runner = builds
                .iter()
                .find_map(|(b, r)| match (b, r) {
                    (Build::Static("vm-runner", "vm-runner"), Ok(Some(p))) => Some(p.clone()),
                    _ => None,
                })
                .context("no static vm-runner was built")?;
            env.push(("VM_RUNNER".into(), vm_runner.display().to_string()));
        }
        let log = logs.join(format!("{}.log", g.name));
        run.log = Some(log.strip_prefix(root).unwrap_or(&log).display().to_string());
        let (status, output) = run_script(
            root,
            g.script,
            mode.args,
            &env,
            Duration::from_secs(mode.timeout_s),
            true,
        )?;
        std::fs::write(&log, &output).with_context(|| format!("writing {}", log.display()))?;
        let (figures, errors) = report::parse_output(g.name, &output);
        match status {
            None => bail!(
                "timed out after {} s (killed); last output:\n{}",
                mode.timeout_s,
                failure_excerpt(&output)
            ),
            Some(s) if s != 0 => bail!(
                "{} exited with status {s}:\n{}",
                g.script,
                failure_excerpt(&output)
            ),
            _ => {}
        }
        if !errors.is_empty() {
            bail!("bad or missing result lines: {}", errors.join("; "));
        }
        if figures.is_empty() {
            bail!("{} printed no RESULT lines", g.script);
        }
        Ok(figures)
    })();
    run.seconds = start.elapsed().as_secs_f64();
    match result {
        Ok(figures) => {
            run.ok = true;
            (run, figures)
        }
        Err(e) => {
            run.error = Some(format!("{e:#}"));
            (run, Vec::new())
        }
    }
}

/// The lines of a failed command's output that say why: from its first `Error:`,
/// `error:` or `error[...]` line (up to 8 lines, stopping at a backtrace), else its last 8.
fn failure_excerpt(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    let is_error = |l: &&str| {
        let t = l.trim_start();
        t.starts_with("Error:") || t.starts_with("error:") || t.starts_with("error[")
    };
    match lines.iter().position(is_error) {
        Some(i) => lines[i..]
            .iter()
            .take_while(|l| !l.to_lowercase().contains("backtrace:"))
            .take(8)
            .copied()
            .collect::<Vec<_>>()
            .join("\n"),
        None => lines[lines.len().saturating_sub(8)..].join("\n"),
    }
}

/// Runs `bash SCRIPT ARGS` in its own process group, echoing its output as it comes (with
/// `echo`) and collecting it; `None` as the status when it ran past `timeout` (the group is killed).
fn run_script(
    root: &Path,
    script: &str,
    args: &[&str],
    env: &[(String, String)],
    timeout: Duration,
    echo: bool,
) -> Result<(Option<i32>, String)> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("bash");
    cmd.arg(root.join(script))
        .args(args)
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().with_context(|| format!("starting {script}"))?;
    let output = Arc::new(Mutex::new(String::new()));
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .enumerate()
    .map(|(i, pipe)| {
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(pipe);
            let mut buf = Vec::new();
            while let Ok(n) = r.read_until(b'\n', &mut buf) {
                if n == 0 {
                    break;
                }
                let line = String::from_utf8_lossy(&buf).into_owned();
                buf.clear();
                if !echo {
                } else if i == 0 {
                    let _ = std::io::stdout().write_all(line.as_bytes());
                } else {
                    let _ = std::io::stderr().write_all(line.as_bytes());
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                }
            }
        })
    })
    .collect();
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s.code().unwrap_or(128));
        }
        if Instant::now() >= deadline {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for r in readers {
        let _ = r.join();
    }
    let text = output.lock().map(|s| s.clone()).unwrap_or_default();
    Ok((status, text))
}

fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut v = text
        .split_whitespace()
        .map(|w| w.parse().unwrap_or(f64::NAN));
    [
        v.next().unwrap_or(f64::NAN),
        v.next().unwrap_or(f64::NAN),
        v.next().unwrap_or(f64::NAN),
    ]
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map(|kib| kib / (1024.0 * 1024.0))
        .unwrap_or(0.0);
    Machine {
        cores,
        cpu_model,
        kernel,
        memory_gib,
    }
}

/// `abc1234`, with a note when the work tree has uncommitted changes.
fn commit(root: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(s) if !s.is_empty() => format!("{head} (work tree with uncommitted changes)"),
        _ => head,
    }
}

/// Now, UTC, `2026-12-07T06:40:12Z`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, proleptic
/// Gregorian).
fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
