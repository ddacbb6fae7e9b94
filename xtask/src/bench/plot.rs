//! The report's plot: one horizontal bar per figure with its ratio (ours / the peer's;
//! for an absolute target, our value / the limit), the target marked on each bar, green
//! where it is met and red where not. SVG through plotters (no fonts needed: the SVG
//! names a font family and the viewer draws the text).

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::report::{number, Figure, Report, TargetOf};

const MET: RGBColor = RGBColor(46, 139, 87);
const MISSED: RGBColor = RGBColor(200, 55, 45);
const NO_TARGET: RGBColor = RGBColor(140, 140, 140);

/// One bar: its label, length, target (same scale), colour, and the note at its end.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub label: String,
    pub length: f64,
    pub target: Option<f64>,
    pub met: Option<bool>,
    pub note: String,
}

/// The bars of a report, in report order (figures with neither a peer nor a target have no
/// ratio and no bar).
pub fn bars(report: &Report) -> Vec<Bar> {
    report.figures.iter().filter_map(bar).collect()
}

fn bar(f: &Figure) -> Option<Bar> {
    let (length, target) = f.plotted()?;
    let note = match f.target {
        Some(t) if t.of == TargetOf::Value => format!(
            "{} {} (limit {} {} {}{})",
            number(f.value),
            f.unit,
            t.cmp.symbol(),
            number(t.limit),
            f.unit,
            match (f.ratio, &f.peer) {
                (Some(r), Some(p)) => format!("; {r:.2}× {p}"),
                _ => String::new(),
            }
        ),
        Some(t) => format!("{length:.2}× (target {} {:.2})", t.cmp.symbol(), t.limit),
        None => format!("{length:.2}× (no target)"),
    };
    Some(Bar {
        label: format!("{}: {}", f.group, f.name),
        length,
        target,
        met: f.met,
        note,
    })
}

/// The SVG text of the plot.
pub fn render_svg(report: &Report) -> Result<String> {
    let bars = bars(report);
    let n = bars.len().max(1);
    let longest = bars.iter().map(|b| b.label.len()).max().unwrap_or(10);
    let label_w = (longest as u32 * 7 + 20).clamp(120, 420);
    let (w, h) = (label_w + 760, 110 + 30 * n as u32);
    let xmax = bars
        .iter()
        .flat_map(|b| [b.length, b.target.unwrap_or(0.0)])
        .fold(1.0f64, f64::max)
        * 1.35;
    let title = format!(
        "virtkit vs peers, {} ({}; load {:.1} → {:.1})",
        report.date.get(..10).unwrap_or(&report.date),
        if report.quick {
            "quick run"
        } else {
            "full run"
        },
        report.load_start[0],
        report.load_end[0]
    );
    let err = |e: &dyn std::fmt::Debug| anyhow!("drawing the plot: {e:?}");
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(label_w)
            .build_cartesian_2d(0f64..xmax, 0f64..n as f64)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .light_line_style(WHITE)
            .label_style(("sans-serif", 12))
            .axis_desc_style(("sans-serif", 13))
            .x_desc("ours / peer's (for an absolute target: ours / the limit); | = target")
            .x_label_formatter(&|x| format!("{x:.1}"))
            .draw()
            .map_err(|e| err(&e))?;
        // Parity: ours equal to the peer's.
        chart
            .draw_series(std::iter::once(PathElement::new(
                [(1.0, 0.0), (1.0, n as f64)],
                ShapeStyle::from(&BLACK.mix(0.25)).stroke_width(1),
            )))
            .map_err(|e| err(&e))?;
        let row = |i: usize| (n - 1 - i) as f64;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, b)| {
                let color = match b.met {
                    Some(true) => MET,
                    Some(false) => MISSED,
                    None => NO_TARGET,
                };
                Rectangle::new(
                    [(0.0, row(i) + 0.2), (b.length, row(i) + 0.8)],
                    color.filled(),
                )
            }))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(bars.iter().enumerate().filter_map(|(i, b)| {
                let t = b.target?;
                Some(PathElement::new(
                    [(t, row(i) + 0.05), (t, row(i) + 0.95)],
                    ShapeStyle::from(&BLACK).stroke_width(3),
                ))
            }))
            .map_err(|e| err(&e))?;
        let left =
            TextStyle::from(("sans-serif", 12).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        let right = TextStyle::from(("sans-serif", 12).into_font())
            .pos(Pos::new(HPos::Right, VPos::Center));
        for (i, b) in bars.iter().enumerate() {
            let end = b.length.max(b.target.unwrap_or(0.0));
            let (x, y) = chart.backend_coord(&(end, row(i) + 0.5));
            root.draw(&Text::new(b.note.clone(), (x + 6, y), left.clone()))
                .map_err(|e| err(&e))?;
            let (x0, _) = chart.backend_coord(&(0.0, row(i) + 0.5));
            root.draw(&Text::new(b.label.clone(), (x0 - 8, y), right.clone()))
                .map_err(|e| err(&e))?;
        }
        if bars.is_empty() {
            let (x, y) = chart.backend_coord(&(xmax / 2.0, 0.5));
            root.draw(&Text::new(
                "no figures with a ratio (see report.md)",
                (x, y),
                TextStyle::from(("sans-serif", 14).into_font())
                    .pos(Pos::new(HPos::Center, VPos::Center)),
            ))
            .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}
