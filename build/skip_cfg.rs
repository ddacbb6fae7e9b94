//! Shared build script of the crates with lab tests: `VIRTKIT_SKIP_LAB=1` at build time
//! sets the `virtkit_skip_lab` cfg, and those tests carry
//! `#[cfg_attr(virtkit_skip_lab, ignore = "VIRTKIT_SKIP_LAB=1")]`, so a skipped test is
//! reported as ignored in the test runner's summary, never as passed.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(virtkit_skip_lab)");
    println!("cargo::rerun-if-env-changed=VIRTKIT_SKIP_LAB");
    if std::env::var("VIRTKIT_SKIP_LAB").is_ok_and(|v| v == "1") {
        println!("cargo::rustc-cfg=virtkit_skip_lab");
    }
}
