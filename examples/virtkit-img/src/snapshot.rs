//! `virtkit-img snapshot -l|-c NAME|-a NAME|-d NAME FILE`: qemu-img's
//! internal snapshot command over `virtkit_qcow2`'s snapshot operations.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{ArgGroup, Args};
use virtkit_qcow2::{snapshot::format_list, BackingMode, OpenOptions, Qcow2};

/// The flags of `qemu-img snapshot`: exactly one action.
#[derive(Args)]
#[command(group(ArgGroup::new("action").required(true).args(["list", "create", "apply", "delete"])))]
pub struct SnapshotArgs {
    /// List the snapshots.
    #[arg(short = 'l')]
    list: bool,
    /// Create a snapshot named NAME.
    #[arg(short = 'c', value_name = "NAME")]
    create: Option<String>,
    /// Revert the disk to the snapshot with this id or name.
    #[arg(short = 'a', value_name = "NAME")]
    apply: Option<String>,
    /// Delete the snapshot with this id or name.
    #[arg(short = 'd', value_name = "NAME")]
    delete: Option<String>,
    /// Image format (only qcow2 has snapshots).
    #[arg(short = 'f', default_value = "qcow2")]
    format: String,
    file: PathBuf,
}

fn open(file: &Path, read_only: bool) -> Result<Qcow2> {
    // Snapshots are of the top image: its backing file is not needed.
    let opts = OpenOptions {
        read_only,
        backing: BackingMode::Ignore,
        ..Default::default()
    };
    Qcow2::open(file, opts).with_context(|| format!("cannot open {}", file.display()))
}

/// Run the command; returns the exit status.
pub fn cmd_snapshot(a: &SnapshotArgs) -> Result<i32> {
    if a.format != "qcow2" {
        anyhow::bail!(
            "only qcow2 images have internal snapshots (-f {})",
            a.format
        );
    }
    if a.list {
        print!("{}", format_list(open(&a.file, true)?.snapshots()));
        return Ok(0);
    }
    let mut q = open(&a.file, false)?;
    if let Some(name) = &a.create {
        q.create_snapshot(name)
            .with_context(|| format!("Could not create snapshot '{name}'"))?;
    } else if let Some(name) = &a.apply {
        q.apply_snapshot(name)
            .with_context(|| format!("Could not apply snapshot '{name}'"))?;
    } else if let Some(name) = &a.delete {
        q.delete_snapshot(name)
            .with_context(|| format!("Could not delete snapshot '{name}'"))?;
    }
    q.close()?;
    Ok(0)
}
