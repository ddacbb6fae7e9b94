//! `cargo xtask bench --update-docs`: puts the last report's table into
//! docs/benchmarks.md, between `<!-- bench:begin -->` and `<!-- bench:end -->`, as a
//! dated section, newest first. Older sections and everything outside the markers stay
//! as they are; a report already there (same date) is replaced, not repeated.

use anyhow::{bail, Result};

use super::report::{context_lines, figures_table, Report};

pub const BEGIN: &str = "<!-- bench:begin -->";
pub const END: &str = "<!-- bench:end -->";
/// Opens each dated section: `<!-- bench:run 2026-12-07T06:40:12Z -->`.
const RUN: &str = "<!-- bench:run ";

/// The dated section for one report.
pub fn section(report: &Report) -> String {
    let mode = if report.quick { " (quick)" } else { "" };
    format!(
        "{RUN}{} -->\n### {} UTC{mode}\n\n{}\n{}\n",
        report.date,
        report
            .date
            .replace('T', " ")
            .trim_end_matches('Z')
            .get(..16)
            .unwrap_or(&report.date),
        context_lines(report),
        figures_table(report)
    )
}

/// The sections between the markers, each with its date.
fn sections(region: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = region;
    while let Some(start) = rest.find(RUN) {
        let body = &rest[start..];
        let next = body[RUN.len()..]
            .find(RUN)
            .map(|i| i + RUN.len())
            .unwrap_or(body.len());
        let date = body[RUN.len()..]
            .split(" -->")
            .next()
            .unwrap_or("")
            .to_string();
        out.push((date, body[..next].trim_end().to_string()));
        rest = &body[next..];
    }
    out
}

/// `doc` with the report's section added to its marked region (newest first). A document
/// without the markers gets them, under a heading, at its end.
pub fn update(doc: &str, report: &Report) -> Result<String> {
    let (before, region, after) = match (doc.find(BEGIN), doc.find(END)) {
        (Some(b), Some(e)) if b < e => {
            (&doc[..b + BEGIN.len()], &doc[b + BEGIN.len()..e], &doc[e..])
        }
        (None, None) => {
            let mut d = doc.trim_end().to_string();
            d.push_str("\n\n## Runs of `cargo xtask bench` (generated, newest first)\n\n");
            d.push_str(BEGIN);
            d.push('\n');
            d.push_str(END);
            d.push('\n');
            return update(&d, report);
        }
        _ => bail!("docs: {BEGIN} and {END} must both be there, in that order"),
    };
    if region.matches(BEGIN).count() > 0 {
        bail!("docs: nested {BEGIN}");
    }
    let new = section(report);
    let mut parts = vec![new.trim_end().to_string()];
    parts.extend(
        sections(region)
            .into_iter()
            .filter(|(date, _)| *date != report.date)
            .map(|(_, text)| text),
    );
    // Text inside the region that is not in a section (a placeholder) goes.
    Ok(format!("{before}\n{}\n{after}", parts.join("\n\n")))
}
