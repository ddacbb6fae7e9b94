//! The benchmark report: the scripts' `RESULT` lines parsed into figures, the run's
//! context (machine, date, load), and its Markdown and JSON forms.
//!
//! A script prints one line per figure, after its human output:
//!
//! ```text
//! RESULT name=boot-1vcpu-128mib value=1609.0 unit=ms peer=qemu-microvm peer_value=2018.0 target_ratio=<=0.80 label="exec to /init marker"
//! ```
//!
//! `value` is ours; `peer`/`peer_value` the peer's figure measured in the same run (both or
//! neither); `target_ratio=<=X` / `>=X` is a target on ours / peer's, `target_value=<=X` /
//! `>=X` one on our value itself; `label` (quoted when it has spaces) says what was
//! measured. A line `RESULT-MISSING NAME: why` says that a figure could not be had.

use std::fmt::Write as _;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// What a target is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetOf {
    /// Ours divided by the peer's figure.
    Ratio,
    /// Our figure itself (an absolute target).
    Value,
}

/// How a figure compares with its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmp {
    #[serde(rename = "<=")]
    AtMost,
    #[serde(rename = ">=")]
    AtLeast,
}

impl Cmp {
    pub fn symbol(self) -> &'static str {
        match self {
            Cmp::AtMost => "≤",
            Cmp::AtLeast => "≥",
        }
    }

    fn holds(self, x: f64, limit: f64) -> bool {
        match self {
            Cmp::AtMost => x <= limit,
            Cmp::AtLeast => x >= limit,
        }
    }
}

/// A figure's target: `of` (ratio or value) `cmp` `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub of: TargetOf,
    pub cmp: Cmp,
    pub limit: f64,
}

impl Target {
    /// `<=0.8` or `>=1.0`.
    fn parse(of: TargetOf, text: &str) -> Result<Target> {
        let (cmp, rest) = if let Some(r) = text.strip_prefix("<=") {
            (Cmp::AtMost, r)
        } else if let Some(r) = text.strip_prefix(">=") {
            (Cmp::AtLeast, r)
        } else {
            bail!("target {text:?}: expected <=X or >=X");
        };
        let limit = rest
            .parse()
            .with_context(|| format!("target {text:?}: not a number"))?;
        Ok(Target { of, cmp, limit })
    }

    /// `ratio ≤ 0.80` / `≤ 8 ms`.
    pub fn describe(&self, unit: &str) -> String {
        match self.of {
            TargetOf::Ratio => format!("ratio {} {:.2}", self.cmp.symbol(), self.limit),
            TargetOf::Value => format!("{} {} {unit}", self.cmp.symbol(), number(self.limit)),
        }
    }
}

/// One measured figure of a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    pub group: String,
    pub name: String,
    pub label: String,
    pub value: f64,
    pub unit: String,
    pub peer: Option<String>,
    pub peer_value: Option<f64>,
    /// Ours / the peer's, when there is a peer.
    pub ratio: Option<f64>,
    pub target: Option<Target>,
    /// Whether the target is met (`None` without a target).
    pub met: Option<bool>,
}

impl Figure {
    /// The figure as the plot shows it: the ratio for a ratio target (or none), our value
    /// over the limit for an absolute one; with the target on the same scale.
    pub fn plotted(&self) -> Option<(f64, Option<f64>)> {
        match self.target {
            Some(t) if t.of == TargetOf::Value => Some((self.value / t.limit, Some(1.0))),
            Some(t) => Some((self.ratio?, Some(t.limit))),
            None => Some((self.ratio?, None)),
        }
    }
}

/// Splits `key=value key="quoted value"` words.
fn fields(text: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .with_context(|| format!("{rest:?}: expected key=value"))?;
        let key = &rest[..eq];
        if key.is_empty() || key.contains(char::is_whitespace) {
            bail!("{rest:?}: expected key=value");
        }
        let after = &rest[eq + 1..];
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q
                .find('"')
                .with_context(|| format!("{key}: unterminated quote"))?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        out.push((key.to_string(), value.to_string()));
        rest = next.trim_start();
    }
    Ok(out)
}

fn num(key: &str, text: &str) -> Result<f64> {
    let v: f64 = text
        .parse()
        .with_context(|| format!("{key}={text:?}: not a number"))?;
    if !v.is_finite() {
        bail!("{key}={text}: no figure (the run produced none)");
    }
    Ok(v)
}

/// Parses one `RESULT ...` line (without a group: the caller knows it).
pub fn parse_result_line(group: &str, line: &str) -> Result<Figure> {
    let rest = line
        .trim()
        .strip_prefix("RESULT ")
        .with_context(|| format!("{line:?}: not a RESULT line"))?;
    let (mut name, mut label, mut unit) = (None, None, None);
    let (mut value, mut peer, mut peer_value, mut target) = (None, None, None, None);
    for (k, v) in fields(rest).with_context(|| format!("RESULT line {line:?}"))? {
        match k.as_str() {
            "name" => name = Some(v),
            "label" => label = Some(v),
            "unit" => unit = Some(v),
            "value" => value = Some(num(&k, &v)?),
            "peer" => peer = Some(v),
            "peer_value" => peer_value = Some(num(&k, &v)?),
            "target_ratio" => target = Some(Target::parse(TargetOf::Ratio, &v)?),
            "target_value" => target = Some(Target::parse(TargetOf::Value, &v)?),
            // Unknown keys are for other readers; keep going.
            _ => {}
        }
    }
    let name = name.with_context(|| format!("{line:?}: no name="))?;
    let value = value.with_context(|| format!("{name}: no value="))?;
    let unit = unit.with_context(|| format!("{name}: no unit="))?;
    if peer.is_some() != peer_value.is_some() {
        bail!("{name}: peer= and peer_value= go together");
    }
    let ratio = peer_value.map(|p| value / p);
    if let Some(t) = target {
        if t.of == TargetOf::Ratio && ratio.is_none() {
            bail!("{name}: target_ratio= without a peer");
        }
    }
    let met = target.map(|t| match t.of {
        TargetOf::Ratio => ratio.is_some_and(|r| t.cmp.holds(r, t.limit)),
        TargetOf::Value => t.cmp.holds(value, t.limit),
    });
    Ok(Figure {
        group: group.to_string(),
        label: label.unwrap_or_else(|| name.clone()),
        name,
        value,
        unit,
        peer,
        peer_value,
        ratio,
        target,
        met,
    })
}

/// The figures in a script's output, and the problems found with its result lines.
pub fn parse_output(group: &str, output: &str) -> (Vec<Figure>, Vec<String>) {
    let mut figures = Vec::new();
    let mut errors = Vec::new();
    for line in output.lines().map(str::trim) {
        if line.starts_with("RESULT ") {
            match parse_result_line(group, line) {
                Ok(f) => figures.push(f),
                Err(e) => errors.push(format!("{e:#}")),
            }
        } else if let Some(why) = line.strip_prefix("RESULT-MISSING ") {
            errors.push(format!("figure missing: {why}"));
        }
    }
    (figures, errors)
}

/// The machine a report was made on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_gib: f64,
}

/// How one group went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRun {
    pub name: String,
    pub title: String,
    /// The command it ran (or would have run).
    pub command: String,
    /// What it measures in this mode.
    pub measures: String,
    pub ok: bool,
    /// Why it failed (a missing prerequisite, the script's exit status, bad result lines).
    pub error: Option<String>,
    pub seconds: f64,
    /// The script's full output, relative to the workspace.
    pub log: Option<String>,
}

/// A whole run of `cargo xtask bench`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub quick: bool,
    /// UTC, `2026-12-07T06:40:12Z`.
    pub date: String,
    pub commit: String,
    pub command: String,
    pub machine: Machine,
    pub load_start: [f64; 3],
    pub load_end: [f64; 3],
    pub seconds: f64,
    /// Of `seconds`, the builds done before the groups ran (not in the groups' times).
    #[serde(default)]
    pub builds_seconds: f64,
    pub groups: Vec<GroupRun>,
    pub figures: Vec<Figure>,
}

impl Report {
    pub fn failed_groups(&self) -> Vec<&GroupRun> {
        self.groups.iter().filter(|g| !g.ok).collect()
    }
}

/// A figure with sensible digits: 1609, 209.7, 99.4, 8.06, 0.512.
pub fn number(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// `12 min 5 s`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    if s >= 60 {
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}

fn load(l: &[f64; 3]) -> String {
    format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2])
}

/// Table cells may not hold `|`.
fn cell(s: &str) -> String {
    s.replace('|', "/")
}

/// The figures' table (also what `--update-docs` puts into docs/benchmarks.md).
pub fn figures_table(report: &Report) -> String {
    let mut s = String::from(
        "| group | figure | ours | peer | peer's | ratio | target | met |\n\
         | --- | --- | ---: | --- | ---: | ---: | --- | --- |\n",
    );
    for f in &report.figures {
        let peer_value = f
            .peer_value
            .map(|v| format!("{} {}", number(v), f.unit))
            .unwrap_or_else(|| "—".into());
        let ratio = f
            .ratio
            .map(|r| format!("{r:.2}×"))
            .unwrap_or_else(|| "—".into());
        let target = f
            .target
            .map(|t| t.describe(&f.unit))
            .unwrap_or_else(|| "—".into());
        let met = match f.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        let _ = writeln!(
            s,
            "| {} | {} (`{}`) | {} {} | {} | {peer_value} | {ratio} | {target} | {met} |",
            f.group,
            cell(&f.label),
            f.name,
            number(f.value),
            f.unit,
            f.peer.as_deref().unwrap_or("—"),
        );
    }
    for g in report.failed_groups() {
        let _ = writeln!(
            s,
            "| {} | **FAILED**: {} | | | | | | |",
            g.name,
            cell(g.error.as_deref().unwrap_or("failed")).replace('\n', " ")
        );
    }
    s
}

/// The run's context as a list: mode, command, machine, date, load.
pub fn context_lines(report: &Report) -> String {
    let m = &report.machine;
    let mode = if report.quick {
        "**quick** (`--quick`: fewer runs and rounds, smaller sizes; noisier than a full run)"
    } else {
        "full"
    };
    let met = report
        .figures
        .iter()
        .filter(|f| f.met == Some(true))
        .count();
    let with_target = report.figures.iter().filter(|f| f.met.is_some()).count();
    let failed = report.failed_groups();
    let failed = if failed.is_empty() {
        "none".to_string()
    } else {
        failed
            .iter()
            .map(|g| g.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "- Date: {} (UTC), commit {}\n\
         - Mode: {mode}\n\
         - Command: `{}`\n\
         - Machine: {} cores ({}), {:.0} GiB memory, kernel {}\n\
         - Load average (1, 5, 15 min): {} at the start, {} at the end\n\
         - Took {} ({} of it building the programs first, measurements {}); targets met: \
         {met} of {with_target}; groups failed: {failed}\n",
        report.date.replace('T', " ").trim_end_matches('Z'),
        report.commit,
        report.command,
        m.cores,
        m.cpu_model,
        m.memory_gib,
        m.kernel,
        load(&report.load_start),
        load(&report.load_end),
        duration(report.seconds),
        duration(report.builds_seconds),
        duration(report.seconds - report.builds_seconds),
    )
}

/// target/bench/report.md.
pub fn render_markdown(report: &Report, plot: Option<&str>) -> String {
    let mut s = String::from("# virtkit benchmark report\n\n");
    s.push_str(&context_lines(report));
    if let Some(p) = plot {
        let _ = writeln!(
            s,
            "- Plot: [{p}]({p}) (each figure's ratio against its target)"
        );
    }
    s.push_str(
        "\nRatios are ours / the peer's, measured side by side in the same run; a target on \
         the value itself (≤ 8 ms, ≤ 5 MiB) is absolute. Lower is better for times and \
         memory, higher for throughput and IOPS.\n\n## Figures\n\n",
    );
    s.push_str(&figures_table(report));
    s.push_str(
        "\n## Groups\n\n| group | status | time | command | measures |\n| --- | --- | ---: | --- | --- |\n",
    );
    for g in &report.groups {
        let status = if g.ok {
            "ok".to_string()
        } else {
            "**FAILED**".to_string()
        };
        let _ = writeln!(
            s,
            "| {} | {status} | {} | `{}` | {} |",
            g.name,
            duration(g.seconds),
            cell(&g.command),
            cell(&g.measures)
        );
    }
    let failed = report.failed_groups();
    if !failed.is_empty() {
        s.push_str("\n## Failures\n\n");
        for g in failed {
            let _ = writeln!(
                s,
                "- **{}** ({}): {}{}",
                g.name,
                g.title,
                g.error.as_deref().unwrap_or("failed"),
                g.log
                    .as_ref()
                    .map(|l| format!(" (output: `{l}`)"))
                    .unwrap_or_default()
            );
        }
    }
    s
}
