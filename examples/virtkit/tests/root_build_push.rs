//! `build`, `push`, `pull`, `commit` and `save` end to end (root): an image built from a
//! Dockerfile (RUN in a container of our runtime, COPY, ENV, CMD) is pushed to a real
//! registry, removed, pulled back and run; podman pulls the same image from the registry
//! and runs it; a container's changes become an image with `commit`; `save` writes a
//! docker-archive that podman loads.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use virtkit_lab::registry::{busybox_layout, TestRegistry};

fn vk(root: &Path, args: &[&str]) -> Output {
    let rt = virtkit_lab::static_binary("container-runner", "container-runner").unwrap();
    Command::new(env!("CARGO_BIN_EXE_virtkit"))
        .arg("--root")
        .arg(root)
        .arg("--runtime")
        .arg(rt)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(root: &Path, args: &[&str]) -> String {
    let o = vk(root, args);
    assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

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

#[test]
fn root_build_push_pull_run_and_podman_runs_it() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("state");
    let layout = busybox_layout(d.path(), &["/bin/sh"], &[]).unwrap();
    ok(&root, &["load", "-i", layout.to_str().unwrap(), "bb:1"]);
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
    ok(&root, &["build", "-t", "built:1", ctx.to_str().unwrap()]);
    let expected = "built by RUN\ncopied in\nbuilder\n";
    assert_eq!(
        ok(&root, &["run", "--rm", "--network", "none", "built:1"]),
        expected
    );

    // Push, forget, pull back, run.
    let reg = TestRegistry::start(d.path(), None).unwrap();
    let dest = format!("{}/vk/built:1", reg.addr);
    ok(&root, &["push", "built:1", &dest]);
    ok(&root, &["rmi", "built:1"]);
    ok(&root, &["image", "prune"]);
    ok(&root, &["pull", &dest]);
    assert_eq!(
        ok(&root, &["run", "--rm", "--network", "none", &dest]),
        expected
    );

    // podman pulls it from the registry and runs it.
    let o = podman(d.path(), &["pull", "--tls-verify=false", &dest]);
    assert!(o.status.success(), "podman pull: {}", text(&o));
    let o = podman(
        d.path(),
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
            &dest,
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        expected,
        "podman run: {}",
        text(&o)
    );

    // commit: a container's change, and a new CMD.
    ok(
        &root,
        &[
            "create",
            "--name",
            "c1",
            "--network",
            "none",
            "bb:1",
            "sh",
            "-c",
            "echo changed > /state.txt",
        ],
    );
    ok(&root, &["start", "c1"]);
    let t0 = std::time::Instant::now();
    while !ok(&root, &["ps", "-a"]).contains("Exited (0)") {
        assert!(t0.elapsed().as_secs() < 20, "c1 did not exit");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    ok(
        &root,
        &[
            "commit",
            "-c",
            "CMD [\"cat\", \"/state.txt\"]",
            "c1",
            "committed:1",
        ],
    );
    ok(&root, &["rm", "c1"]);
    assert_eq!(
        ok(&root, &["run", "--rm", "--network", "none", "committed:1"]),
        "changed\n"
    );
    let bad = vk(&root, &["commit", "-c", "RUN true", "nobody", "x:1"]);
    assert_ne!(bad.status.code(), Some(0));

    // save: a docker-archive podman loads and runs.
    let archive = d.path().join("committed.tar");
    ok(
        &root,
        &["save", "-o", archive.to_str().unwrap(), "committed:1"],
    );
    let o = podman(d.path(), &["load", "-i", archive.to_str().unwrap()]);
    assert!(o.status.success(), "podman load: {}", text(&o));
    let loaded = String::from_utf8_lossy(&o.stdout).into_owned();
    let name = loaded
        .lines()
        .find_map(|l| l.strip_prefix("Loaded image: "))
        .unwrap_or_else(|| panic!("podman load said {loaded}"))
        .trim()
        .to_string();
    let o = podman(
        d.path(),
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
            &name,
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "changed\n",
        "podman run: {}",
        text(&o)
    );
    // Bad input: a Dockerfile step that fails, a build context that is missing.
    std::fs::write(ctx.join("Dockerfile"), "FROM bb:1\nRUN exit 3\n").unwrap();
    let o = vk(&root, &["build", "-t", "broken:1", ctx.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    assert!(!ok(&root, &["images"]).contains("broken"));
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
