//! Project tasks: `cargo xtask test`, `cargo xtask demo`, ... (see README.md).

use std::process::Command;

use anyhow::{bail, Context, Result};

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .status()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed with {status}", args.join(" "));
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => cargo(&["test", "--workspace", "--all-features"]),
        Some(other) => bail!("unknown task `{other}`; tasks: test"),
        None => bail!("usage: cargo xtask <task>; tasks: test"),
    }
}
