//! `virtkit` end to end (root): a busybox image pushed into a real registry (Debian's
//! docker-registry, skopeo) is pulled, listed and run with container-runner (the static
//! build the lab uses) and with runc, then removed and pruned; bad input exits 125 and
//! leaves no container behind.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use virtkit_lab::registry::{busybox_layout, TestRegistry};

fn virtkit(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_virtkit"))
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// The containers kept under the state directory `root`.
fn containers(root: &Path) -> usize {
    std::fs::read_dir(root.join("containers"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("record.json").exists())
        .count()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn root_pull_images_run_rmi_and_prune() {
    let d = tempfile::tempdir().unwrap();
    let reg = TestRegistry::start(d.path(), None).unwrap();
    let layout = busybox_layout(
        d.path(),
        &["/bin/sh", "-c", "echo hello from $WHO"],
        &["WHO=the-image"],
    )
    .unwrap();
    reg.push(&layout, "v1", "vk/busybox:1", None).unwrap();
    let root = d.path().join("state");
    let image = format!("{}/vk/busybox:1", reg.addr);
    let o = virtkit(&root, &["pull", &image]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let (out, _) = text(&virtkit(&root, &["images"]));
    assert!(out.contains(&image), "{out}");

    let container_runner =
        virtkit_lab::static_binary("container-runner", "container-runner").unwrap();
    // Mounts under the test's own directory (other tests' daemons, such as podman's
    // cleanup, may change the rest of the host's table meanwhile).
    let ours = |d: &Path| {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(d.to_str().unwrap()))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let mounts = ours(d.path());
    for runtime in [container_runner.to_str().unwrap(), "runc"] {
        // The image's Cmd, Env and WorkingDir.
        let o = virtkit(&root, &["run", "--rm", "--runtime", runtime, &image]);
        assert_eq!(
            text(&o).0,
            "hello from the-image\n",
            "{runtime}: {:?}",
            text(&o)
        );
        assert_eq!(o.status.code(), Some(0));
        // Flags over the image, and the container's exit status as ours.
        let o = virtkit(
            &root,
            &[
                "run",
                "--rm",
                "--runtime",
                runtime,
                "-e",
                "WHO=a-flag",
                "-w",
                "/",
                "--name",
                "vk-cli-test",
                &image,
                "sh",
                "-c",
                "echo $WHO $(pwd); exit 7",
            ],
        );
        assert_eq!(text(&o).0, "a-flag /\n", "{runtime}: {:?}", text(&o));
        assert_eq!(o.status.code(), Some(7));
    }
    assert_eq!(containers(&root), 0, "a container is left");
    assert_eq!(ours(d.path()), mounts, "a mount is left");

    // Bad input: 125 with a message, nothing left.
    let bad = |args: &[&str], needle: &str| {
        let o = virtkit(&root, args);
        assert_eq!(o.status.code(), Some(125), "{args:?}: {:?}", text(&o));
        assert!(
            text(&o).1.contains(needle),
            "{args:?}: expected {needle:?} in {:?}",
            text(&o)
        );
    };
    bad(&["run", "--rm", "nope/none:1"], "no image named");
    bad(&["pull", &format!("{}/vk/none:1", reg.addr)], "registry");
    bad(
        &["run", "--rm", "--name", "bad/name", &image],
        "invalid container name",
    );
    let o = virtkit(&root, &["create", "--name", "taken", &image]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    bad(
        &["run", "--rm", "--name", "taken", &image],
        "already in use",
    );
    assert_eq!(virtkit(&root, &["rm", "taken"]).status.code(), Some(0));
    bad(&["run", "--no-such-flag", &image], "unexpected argument");
    assert_eq!(containers(&root), 0);

    let o = virtkit(&root, &["rmi", &image]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let (out, _) = text(&virtkit(&root, &["image", "prune"]));
    assert_eq!(out, "Deleted 3 blobs\n");
    let (out, _) = text(&virtkit(&root, &["images"]));
    assert_eq!(out.lines().count(), 1, "{out}");
}

#[test]
fn root_named_volumes_bind_mounts_and_tmpfs() {
    let d = tempfile::tempdir().unwrap();
    let reg = TestRegistry::start(d.path(), None).unwrap();
    let layout = busybox_layout(d.path(), &["/bin/sh"], &[]).unwrap();
    reg.push(&layout, "v1", "vk/busybox:1", None).unwrap();
    let root = d.path().join("state");
    let image = format!("{}/vk/busybox:1", reg.addr);
    assert_eq!(virtkit(&root, &["pull", &image]).status.code(), Some(0));
    let runner = virtkit_lab::static_binary("container-runner", "container-runner").unwrap();
    let rt = runner.to_str().unwrap();
    let sh = |extra: &[&str], script: &str| {
        let mut args = vec!["run", "--rm", "--runtime", rt];
        args.extend_from_slice(extra);
        args.extend([image.as_str(), "sh", "-c", script]);
        virtkit(&root, &args)
    };
    // A named volume keeps its data across containers.
    assert_eq!(
        virtkit(&root, &["volume", "create", "vkdata"])
            .status
            .code(),
        Some(0)
    );
    let o = sh(&["-v", "vkdata:/data"], "echo kept > /data/file");
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let o = sh(&["-v", "vkdata:/data"], "cat /data/file");
    assert_eq!(text(&o).0, "kept\n", "{:?}", text(&o));
    let (ls, _) = text(&virtkit(&root, &["volume", "ls"]));
    assert!(ls.contains("vkdata"), "{ls}");
    // A host directory, read-only; a tmpfs, writable.
    let host = d.path().join("host");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("in"), "from the host\n").unwrap();
    let o = sh(
        &[
            "-v",
            &format!("{}:/ro:ro", host.display()),
            "--tmpfs",
            "/scratch",
        ],
        "cat /ro/in; echo t > /scratch/t && cat /scratch/t; echo no > /ro/out || echo refused",
    );
    assert_eq!(text(&o).0, "from the host\nt\nrefused\n", "{:?}", text(&o));
    assert!(!host.join("out").exists());
    // Bad specs exit 125.
    for (spec, needle) in [
        ("/nonexistent:/x", "does not exist"),
        ("a:b:c:d", "expected SOURCE"),
        ("bad/name:/x", "invalid volume name"),
    ] {
        let o = sh(&["-v", spec], "true");
        assert_eq!(o.status.code(), Some(125), "{spec}: {:?}", text(&o));
        assert!(text(&o).1.contains(needle), "{spec}: {:?}", text(&o));
    }
    assert_eq!(
        virtkit(&root, &["volume", "rm", "vkdata"]).status.code(),
        Some(0)
    );
    assert!(!root.join("volumes/vkdata").exists());
    assert_eq!(
        virtkit(&root, &["volume", "rm", "vkdata"]).status.code(),
        Some(125)
    );
}
