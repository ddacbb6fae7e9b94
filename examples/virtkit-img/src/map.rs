//! `virtkit-img map [--output=json] FILE`: qemu-img's allocation map.

use std::path::Path;

use anyhow::{bail, Result};
use virtkit_qcow2::{BackingMode, ImageFormat, OpenOptions, Qcow2};

use crate::{probe_format, Output};

/// Print the allocation map of the qcow2 image `file`.
pub fn cmd_map(file: &Path, format: Option<&str>, output: Output) -> Result<()> {
    let fmt = probe_format(file, format)?;
    let q = match fmt {
        ImageFormat::Qcow2 => Qcow2::open(
            file,
            OpenOptions {
                read_only: true,
                backing: BackingMode::Follow,
                repair_dirty: false,
                ..Default::default()
            },
        )?,
        ImageFormat::Raw => bail!("map supports qcow2 images"),
    };
    let map = q.map()?;
    if output == Output::Json {
        let lines: Vec<String> = map
            .iter()
            .map(|e| {
                let mut s = format!(
                    "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}",
                    e.start, e.length, e.depth, e.present, e.zero, e.data
                );
                if let Some(o) = e.offset {
                    s.push_str(&format!(", \"offset\": {o}"));
                }
                s.push('}');
                s
            })
            .collect();
        println!("[{}]", lines.join(",\n"));
    } else {
        println!("{:<20}{:<20}{:<20}File", "Offset", "Length", "Mapped to");
        for e in map.iter().filter(|e| e.data) {
            let file = if e.depth == 0 {
                file.display().to_string()
            } else {
                format!("(depth {})", e.depth)
            };
            match e.offset {
                Some(o) => println!("{:<#20x}{:<#20x}{:<#20x}{file}", e.start, e.length, o),
                None => println!(
                    "{:<#20x}{:<#20x}{:<20}{file}",
                    e.start, e.length, "(compressed)"
                ),
            }
        }
    }
    Ok(())
}
