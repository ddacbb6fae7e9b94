//! Lab tier (issue #20): a lab whose kernel stops answering is ended as a lab failure
//! once its heartbeat has been silent for `VIRTKIT_LAB_HEARTBEAT_SILENCE_S`, instead of
//! at the payload's time limit; a payload that runs longer than that silence, in a lab
//! that keeps beating, is not disturbed. See docs/testing.md, "Lockups in the lab".
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use virtkit_lab::{lab_opted_out, run_in, LabError, Payload, Venue, HEARTBEAT_SILENCE_ENV};

fn quick_silence() {
    // Both tests of this file set the same values (this file is its own process).
    std::env::set_var(HEARTBEAT_SILENCE_ENV, "15");
    std::env::set_var("VIRTKIT_LAB_RETRIES", "0");
}

#[test]
#[cfg_attr(virtkit_skip_lab, ignore = "VIRTKIT_SKIP_LAB=1")]
fn lab_whose_heartbeat_stops_is_ended_as_a_lab_failure() {
    if lab_opted_out("lab_whose_heartbeat_stops_is_ended_as_a_lab_failure") {
        return;
    }
    quick_silence();
    // Stop every process writing to the heartbeat port: to the host, the lab's kernel
    // has stopped, as in a wedge.
    let script = r#"n=0
for d in /proc/[0-9]*; do
  if [ "$(readlink "$d/fd/1")" = /dev/ttyS1 ]; then kill -STOP "${d#/proc/}" && n=$((n+1)); fi
done
echo "HEARTBEAT-STOPPED $n"
sleep 300"#;
    let t0 = Instant::now();
    let err = run_in(
        Venue::Lab,
        &Payload::new(script).timeout(Duration::from_secs(280)),
    )
    .expect_err("a lab without heartbeat cannot finish");
    let text = err.to_string();
    assert!(
        matches!(err, LabError::LabFailed { .. }) && text.contains("no heartbeat for"),
        "{text}"
    );
    assert!(err.is_lab_failure());
    assert!(text.contains("HEARTBEAT-STOPPED "), "{text}");
    assert!(!text.contains("HEARTBEAT-STOPPED 0"), "{text}");
    assert!(
        t0.elapsed() < Duration::from_secs(150),
        "ended after {:?}, not soon after the 15 s silence",
        t0.elapsed()
    );
}

#[test]
#[cfg_attr(virtkit_skip_lab, ignore = "VIRTKIT_SKIP_LAB=1")]
fn lab_that_keeps_beating_runs_a_payload_longer_than_the_silence() {
    if lab_opted_out("lab_that_keeps_beating_runs_a_payload_longer_than_the_silence") {
        return;
    }
    quick_silence();
    let out = run_in(
        Venue::Lab,
        &Payload::new("sleep 40; echo SLEPT-PAST-THE-SILENCE").timeout(Duration::from_secs(280)),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status, 0, "{}", out.console);
    assert!(
        out.output.contains("SLEPT-PAST-THE-SILENCE"),
        "{}",
        out.console
    );
}
