//! `virtkit` end to end (root): a busybox image pushed into a real registry (Debian's
//! docker-registry, skopeo) is pulled, listed and run with container-runner (the static
//! build the lab uses) and with runc, then removed and pruned; bad input exits 125 and
//! leaves no container behind.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::json;
use virtkit_lab::registry::TestRegistry;

fn virtkit(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_virtkit"))
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn blob(dir: &Path, media_type: &str, bytes: &[u8]) -> serde_json::Value {
    let d = virtkit_image::Digest::of(bytes);
    std::fs::write(dir.join("blobs/sha256").join(d.hex()), bytes).unwrap();
    json!({"mediaType": media_type, "digest": d.to_string(), "size": bytes.len()})
}

/// An OCI layout with a busybox image whose Cmd prints a greeting.
fn busybox_layout(dir: &Path) -> PathBuf {
    let l = dir.join("layout");
    std::fs::create_dir_all(l.join("blobs/sha256")).unwrap();
    std::fs::write(l.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    b.append_path_with_name("/bin/busybox", "bin/busybox")
        .unwrap();
    for link in ["sh", "echo", "cat", "id"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        b.append_link(&mut h, format!("bin/{link}"), "busybox")
            .unwrap();
    }
    let layer = b.into_inner().unwrap();
    let diff = virtkit_image::Digest::of(&layer).to_string();
    let ld = blob(&l, "application/vnd.oci.image.layer.v1.tar", &layer);
    let cfg = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh", "-c", "echo hello from $WHO"], "Env": ["WHO=the-image"], "WorkingDir": "/bin"},
        "rootfs": {"type": "layers", "diff_ids": [diff]}}))
    .unwrap();
    let cd = blob(&l, "application/vnd.oci.image.config.v1+json", &cfg);
    let m = serde_json::to_vec(&json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": cd, "layers": [ld]}))
    .unwrap();
    let mut md = blob(&l, "application/vnd.oci.image.manifest.v1+json", &m);
    md["annotations"] = json!({"org.opencontainers.image.ref.name": "v1"});
    std::fs::write(
        l.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [md]})).unwrap(),
    )
    .unwrap();
    l
}

#[test]
fn root_pull_images_run_rmi_and_prune() {
    let d = tempfile::tempdir().unwrap();
    let reg = TestRegistry::start(d.path(), None).unwrap();
    reg.push(&busybox_layout(d.path()), "v1", "vk/busybox:1", None)
        .unwrap();
    let root = d.path().join("state");
    let image = format!("{}/vk/busybox:1", reg.addr);
    let o = virtkit(&root, &["pull", &image]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let (out, _) = text(&virtkit(&root, &["images"]));
    assert!(out.contains(&image), "{out}");

    let container_runner =
        virtkit_lab::static_binary("container-runner", "container-runner").unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
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
    assert_eq!(
        std::fs::read_dir(root.join("containers")).unwrap().count(),
        0,
        "a container is left"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/self/mountinfo").unwrap(),
        mounts,
        "a mount is left"
    );

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
    std::fs::create_dir(root.join("containers/taken")).unwrap();
    bad(
        &["run", "--rm", "--name", "taken", &image],
        "already in use",
    );
    std::fs::remove_dir(root.join("containers/taken")).unwrap();
    bad(&["run", "--no-such-flag", &image], "unexpected argument");
    assert_eq!(
        std::fs::read_dir(root.join("containers")).unwrap().count(),
        0
    );

    let o = virtkit(&root, &["rmi", &image]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let (out, _) = text(&virtkit(&root, &["image", "prune"]));
    assert_eq!(out, "Deleted 3 blobs\n");
    let (out, _) = text(&virtkit(&root, &["images"]));
    assert_eq!(out.lines().count(), 1, "{out}");
}
