//! container-runner's command line where no container runs (no root needed).
#![allow(clippy::unwrap_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_container-runner");

#[test]
fn delete_of_an_unknown_container_fails_but_succeeds_with_force_as_runc() {
    let root = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .arg("--root")
            .arg(root.path())
            .args(args)
            .output()
            .unwrap()
    };
    let plain = run(&["delete", "no-such-container"]);
    assert!(!plain.status.success(), "{plain:?}");
    assert!(
        String::from_utf8_lossy(&plain.stderr).contains("no-such-container"),
        "{plain:?}"
    );
    let forced = run(&["delete", "--force", "no-such-container"]);
    assert!(forced.status.success(), "{forced:?}");
    // A bad id stays an error, forced or not.
    let bad = run(&["delete", "--force", "../escape"]);
    assert!(!bad.status.success(), "{bad:?}");
}
