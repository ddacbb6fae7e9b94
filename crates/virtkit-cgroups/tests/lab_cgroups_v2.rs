//! The real cgroup tests (`tests/root_cgroups.rs`) against real cgroup v2: the
//! same test binary, built statically, run inside the lab (a QEMU VM whose
//! `/sys/fs/cgroup` is cgroup2). `VIRTKIT_SKIP_LAB=1` opts out (CI does not set it).
//!
//! By hand:
//! ```text
//! RUSTFLAGS="-C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs" CARGO_TARGET_DIR=target/static \
//!   cargo test --target x86_64-unknown-linux-gnu -p virtkit-cgroups --test root_cgroups --no-run
//! cargo xtask lab --file target/static/x86_64-unknown-linux-gnu/debug/deps/root_cgroups-<hash>:root_cgroups \
//!   -- ./root_cgroups
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use virtkit_lab::{has_interpreter, run_in, Payload, Venue, STATIC_TARGET};

/// Builds the `root_cgroups` test binary statically and returns its path.
fn static_root_tests() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&root)
        .args([
            "test",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .args(["--target", STATIC_TARGET, "-p", "virtkit-cgroups"])
        .args(["--test", "root_cgroups"])
        .env("CARGO_TARGET_DIR", root.join("target/static"))
        .env("RUSTFLAGS", virtkit_lab::STATIC_RUSTFLAGS)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .output()
        .expect("running cargo for the static test build");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "static build of root_cgroups failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exe = stdout
        .lines()
        .filter(|l| l.contains("\"name\":\"root_cgroups\""))
        .find_map(|l| {
            let rest = &l[l.find("\"executable\":\"")? + 14..];
            Some(PathBuf::from(&rest[..rest.find('"')?]))
        })
        .expect("cargo reported no root_cgroups executable");
    let bytes = std::fs::read(&exe).unwrap();
    assert!(!has_interpreter(&bytes), "{} is not static", exe.display());
    exe
}

#[test]
#[cfg_attr(virtkit_skip_lab, ignore = "VIRTKIT_SKIP_LAB=1")]
fn lab_cgroup_v2_real_tests() {
    let exe = static_root_tests();
    let payload = Payload::new(
        "echo \"cgroupfs: $(grep ' /sys/fs/cgroup ' /proc/mounts | cut -d' ' -f3)\"\n./root_cgroups\n",
    )
    .file(&exe, "root_cgroups")
    .timeout(Duration::from_secs(480));
    let out = run_in(Venue::Lab, &payload).expect("running the lab");
    assert!(
        out.output.contains("cgroupfs: cgroup2"),
        "the lab has no cgroup2 at /sys/fs/cgroup:\n{}",
        out.output
    );
    assert!(
        out.output.contains("(cgroup Ok(V2))"),
        "the tests did not detect cgroup v2:\n{}",
        out.output
    );
    assert!(
        out.success() && out.output.contains("test result: ok. 14 passed; 0 failed"),
        "real cgroup v2 tests failed in the lab (status {}):\n{}",
        out.status,
        out.output
    );
}
