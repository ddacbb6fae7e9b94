//! `virtkit-img check [-r leaks|all] [--output=json] FILE`: qemu-img's
//! consistency check and its report.

use std::path::Path;

use anyhow::{bail, Result};
use serde_json::json;
use virtkit_qcow2::{check_image, BackingMode, ImageFormat, OpenOptions, Qcow2, Repair};

use crate::{Output, RepairArg};

/// Check (and with `repair`, repair) `file`; returns qemu-img check's exit
/// status (0 clean, 2 corruptions, 3 leaks only).
pub fn cmd_check(
    file: &Path,
    format: &str,
    repair: Option<RepairArg>,
    output: Output,
) -> Result<i32> {
    let fmt: ImageFormat = format.parse()?;
    if fmt != ImageFormat::Qcow2 {
        bail!("only qcow2 images can be checked");
    }
    let r = match repair {
        None => Repair::None,
        Some(RepairArg::Leaks) => Repair::Leaks,
        Some(RepairArg::All) => Repair::All,
    };
    let q = Qcow2::open(
        file,
        OpenOptions {
            read_only: r == Repair::None,
            backing: BackingMode::Ignore,
            repair_dirty: false,
            ..Default::default()
        },
    )?;
    let rep = check_image(&q, r)?;
    if output == Output::Json {
        let mut v = json!({
            "image-end-offset": rep.image_end_offset,
            "total-clusters": rep.total_clusters,
            "check-errors": rep.check_errors,
            "allocated-clusters": rep.allocated_clusters,
            "filename": file.display().to_string(),
            "format": "qcow2",
            "fragmented-clusters": rep.fragmented_clusters,
            "compressed-clusters": rep.compressed_clusters,
        });
        if rep.leaks > 0 {
            v["leaks"] = json!(rep.leaks);
        }
        if rep.corruptions > 0 {
            v["corruptions"] = json!(rep.corruptions);
        }
        if rep.leaks_fixed > 0 {
            v["leaks-fixed"] = json!(rep.leaks_fixed);
        }
        if rep.corruptions_fixed > 0 {
            v["corruptions-fixed"] = json!(rep.corruptions_fixed);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for m in &rep.messages {
            eprintln!("{m}");
        }
        if rep.leaks_fixed > 0 || rep.corruptions_fixed > 0 {
            println!(
                "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n",
                rep.leaks_fixed, rep.corruptions_fixed
            );
        }
        let open_c = rep.corruptions - rep.corruptions_fixed;
        let open_l = rep.leaks - rep.leaks_fixed;
        if open_c == 0 && open_l == 0 && rep.check_errors == 0 {
            println!("No errors were found on the image.");
        } else {
            if open_c > 0 {
                println!("\n{open_c} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.");
            }
            if open_l > 0 {
                println!("\n{open_l} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.");
            }
        }
        let pct = |n: u64| {
            if rep.total_clusters == 0 {
                0.0
            } else {
                n as f64 * 100.0 / rep.total_clusters as f64
            }
        };
        let pa = |n: u64| {
            if rep.allocated_clusters == 0 {
                0.0
            } else {
                n as f64 * 100.0 / rep.allocated_clusters as f64
            }
        };
        println!(
            "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters",
            rep.allocated_clusters,
            rep.total_clusters,
            pct(rep.allocated_clusters),
            pa(rep.fragmented_clusters),
            pa(rep.compressed_clusters)
        );
        println!("Image end offset: {}", rep.image_end_offset);
    }
    Ok(rep.exit_code())
}
