//! `build`, `push`, `pull`, `commit` and `save` end to end (root): an image built from a
//! Dockerfile (RUN in a container of our runtime, COPY, ENV, CMD) is pushed to a real
//! registry, removed, pulled back and run; podman pulls the same image from the registry
//! and runs it; a container's changes become an image with `commit`; `save` writes a
//! docker-archive that podman loads.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{text, Vk};

use virtkit_lab::registry::{busybox_layout, TestRegistry};

/// podman with a private store, cgroupfs and the host's rlimits (see the notes).
fn podman(dir: &Path, args: &[&str]) -> Output {
    Command::new("podman")
        .arg("--root")
        .arg(dir.join("podman-root"))
        .arg("--runroot")
        .arg(dir.join("podman-run"))
        .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// `podman run --rm` of `image` with runc, no network; its stdout.
fn podman_run(dir: &Path, image: &str) -> String {
    let o = podman(
        dir,
        &[
            "--runtime",
            "/usr/sbin/runc",
            "run",
            "--rm",
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            image,
        ],
    );
    assert!(o.status.success(), "podman run: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn root_build_push_pull_run_and_podman_runs_it() {
    let d = tempfile::tempdir().unwrap();
    let vk = Vk::new(d.path().join("state"));
    let layout = busybox_layout(d.path(), &["/bin/sh"], &[]).unwrap();
    vk.ok(&["load", "-i", layout.to_str().unwrap(), "bb:1"]);
    let ctx = d.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(ctx.join("greeting.txt"), "copied in\n").unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM bb:1\n\
         RUN echo built by RUN > /hello.txt\n\
         COPY greeting.txt /greeting.txt\n\
         ENV WHO=builder\n\
         CMD [\"sh\", \"-c\", \"cat /hello.txt /greeting.txt; echo $WHO\"]\n",
    )
    .unwrap();
    vk.ok(&["build", "-t", "built:1", ctx.to_str().unwrap()]);
    let expected = "built by RUN\ncopied in\nbuilder\n";
    assert_eq!(
        vk.ok(&["run", "--rm", "--network", "none", "built:1"]),
        expected
    );

    // Push, forget, pull back, run.
    let reg = TestRegistry::start(d.path(), None).unwrap();
    let dest = format!("{}/vk/built:1", reg.addr);
    vk.ok(&["push", "built:1", &dest]);
    vk.ok(&["rmi", "built:1"]);
    vk.ok(&["image", "prune"]);
    vk.ok(&["pull", &dest]);
    assert_eq!(
        vk.ok(&["run", "--rm", "--network", "none", &dest]),
        expected
    );

    // podman pulls it from the registry and runs it.
    let o = podman(d.path(), &["pull", "--tls-verify=false", &dest]);
    assert!(o.status.success(), "podman pull: {}", text(&o));
    assert_eq!(podman_run(d.path(), &dest), expected);

    // commit: a container's change, and a new CMD.
    vk.ok(&[
        "create",
        "--name",
        "c1",
        "--network",
        "none",
        "bb:1",
        "sh",
        "-c",
        "echo changed > /state.txt",
    ]);
    vk.ok(&["start", "c1"]);
    let t0 = std::time::Instant::now();
    while !vk.ok(&["ps", "-a"]).contains("Exited (0)") {
        assert!(t0.elapsed().as_secs() < 20, "c1 did not exit");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    vk.ok(&[
        "commit",
        "-c",
        "CMD [\"cat\", \"/state.txt\"]",
        "c1",
        "committed:1",
    ]);
    vk.ok(&["rm", "c1"]);
    assert_eq!(
        vk.ok(&["run", "--rm", "--network", "none", "committed:1"]),
        "changed\n"
    );
    let bad = vk.run(&["commit", "-c", "RUN true", "nobody", "x:1"]);
    assert_ne!(bad.status.code(), Some(0));

    // save: a docker-archive podman loads and runs.
    let archive = d.path().join("committed.tar");
    vk.ok(&["save", "-o", archive.to_str().unwrap(), "committed:1"]);
    let o = podman(d.path(), &["load", "-i", archive.to_str().unwrap()]);
    assert!(o.status.success(), "podman load: {}", text(&o));
    let loaded = String::from_utf8_lossy(&o.stdout).into_owned();
    let name = loaded
        .lines()
        .find_map(|l| l.strip_prefix("Loaded image: "))
        .unwrap_or_else(|| panic!("podman load said {loaded}"))
        .trim()
        .to_string();
    assert_eq!(podman_run(d.path(), &name), "changed\n");
    // Bad input: a Dockerfile step that fails, a build context that is missing.
    std::fs::write(ctx.join("Dockerfile"), "FROM bb:1\nRUN exit 3\n").unwrap();
    let o = vk.run(&["build", "-t", "broken:1", ctx.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    assert!(!vk.ok(&["images"]).contains("broken"));
    let _ = podman(d.path(), &["rmi", "-a", "-f"]);
    // podman unmounts its containers' roots from a cleanup process of its own: wait for
    // that, so no mount of this test outlives it.
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(d.path().to_str().unwrap())
    {
        assert!(
            t0.elapsed().as_secs() < 20,
            "podman left mounts under the test directory"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
