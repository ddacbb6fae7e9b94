//! The `lab-stamp` timer that times guest boots inside the lab, run here on the host.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use virtkit_lab::BootResult;

const STAMP: &str = env!("CARGO_BIN_EXE_lab-stamp");

fn stamp(args: &[&str]) -> (i32, String) {
    let out = Command::new(STAMP).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn passes_output_through_and_times_the_marker() {
    let (code, out) = stamp(&[
        "--marker",
        "VIRTKIT-INIT",
        "--",
        "sh",
        "-c",
        "echo before; sleep 0.2; echo VIRTKIT-INIT uptime=1; echo to-stderr >&2; exit 3",
    ]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("before\n") && out.contains("to-stderr\n"),
        "{out}"
    );
    let wrapped = format!("BOOT-BEGIN t\n{out}BOOT-END t\n");
    let r = BootResult::parse(&wrapped, "t").unwrap();
    assert_eq!(r.status, 3);
    assert!(r.reached_init);
    let marker = r.marker_us.expect("the marker was seen");
    assert!(
        marker >= 200_000,
        "the marker came after the 0.2 s sleep: {marker} us"
    );
    assert!(r.total_us >= marker, "{out}");
}

#[test]
fn kills_a_command_past_its_timeout() {
    let start = std::time::Instant::now();
    let (code, out) = stamp(&["--timeout", "1", "--marker", "never", "--", "sleep", "30"]);
    assert!(
        start.elapsed().as_secs() < 10,
        "the timeout was not enforced"
    );
    assert_eq!(code, 137, "{out}");
    assert!(out.contains("BOOT-STAMP status=137 marker_us=-1"), "{out}");
}

#[test]
fn reports_a_missing_command_and_bad_usage() {
    let (code, out) = stamp(&["--", "/nonexistent/vmm"]);
    assert_eq!(code, 127);
    assert!(out.contains("BOOT-STAMP status=127"), "{out}");
    let (code, _) = stamp(&["--timeout", "x", "--", "true"]);
    assert_eq!(code, 2);
    let (code, _) = stamp(&[]);
    assert_eq!(code, 2);
}
