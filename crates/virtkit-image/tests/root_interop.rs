//! Interoperability with podman (root; a podman store of the test's own, vfs driver, no
//! network): an image podman made, saved as an OCI image layout and as a docker-archive,
//! imports into our store with every blob verified; its layers unpack to the files podman
//! was given, with the diff ids its config lists; its config becomes the runtime spec.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use oci_spec::image::ImageConfiguration;
use virtkit_image::{runtime_spec, RunOptions, Store, UnpackOptions};

fn podman(root: &Path, args: &[&str]) -> String {
    let out = Command::new("podman")
        .arg("--root")
        .arg(root.join("storage"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args(["--storage-driver", "vfs"])
        .args(args)
        .output()
        .expect("podman (apt-get install podman; .ci/run does)");
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A root file system tarball: static busybox, `sh`, and `/etc/hello`.
fn rootfs_tar(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("rootfs.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&p).unwrap());
    b.append_path_with_name("/bin/busybox", "bin/busybox")
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    b.append_link(&mut h, "bin/sh", "busybox").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(6);
    b.append_data(&mut h, "etc/hello", &b"hello\n"[..]).unwrap();
    b.finish().unwrap();
    p
}

/// `podman import`s the rootfs tarball as `name` with `changes` (Dockerfile lines), then
/// `podman save`s it as an OCI layout; the layout's directory.
fn podman_image(d: &Path, tar: &Path, name: &str, changes: &[&str]) -> std::path::PathBuf {
    let mut args = vec!["import"];
    for c in changes {
        args.extend(["--change", c]);
    }
    args.extend([tar.to_str().unwrap(), name]);
    podman(d, &args);
    let oci = d.join("oci");
    podman(
        d,
        &[
            "save",
            "--format",
            "oci-dir",
            "-o",
            oci.to_str().unwrap(),
            name,
        ],
    );
    oci
}

fn check(store: &Store, name: &str) {
    let m = store.manifest(&store.resolve(name).unwrap()).unwrap();
    let cfg_bytes = store.read_blob(&m.config.digest.parse().unwrap()).unwrap();
    let cfg: ImageConfiguration = serde_json::from_slice(&cfg_bytes).unwrap();
    let want_diff_ids: Vec<String> = cfg.rootfs().diff_ids().clone();
    let mut diff_ids = Vec::new();
    let mut lowers = Vec::new();
    for l in &m.layers {
        let d = l.digest.parse().unwrap();
        let dir = store.unpack_layer(&d, &UnpackOptions::default()).unwrap();
        let f = std::fs::File::open(store.blob_path(&d)).unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let s =
            virtkit_image::unpack::unpack(f, scratch.path(), &UnpackOptions::default()).unwrap();
        diff_ids.push(s.diff_id.to_string());
        lowers.push(dir);
    }
    assert_eq!(diff_ids, want_diff_ids, "{name}: diff ids");
    let top = lowers.last().unwrap();
    assert!(top.join("bin/busybox").is_file(), "{name}");
    assert_eq!(std::fs::read(top.join("etc/hello")).unwrap(), b"hello\n");
    assert_eq!(
        std::fs::read_link(top.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let spec = runtime_spec(
        oci_spec::runtime::Spec::default(),
        &cfg,
        top,
        &RunOptions::default(),
    )
    .unwrap();
    let p = spec.process().as_ref().unwrap();
    assert_eq!(
        p.args().as_ref().unwrap(),
        &["/bin/sh", "-c", "cat /etc/hello"]
    );
    assert!(
        p.env().as_ref().unwrap().contains(&"FOO=bar".to_string()),
        "{:?}",
        p.env()
    );
    assert_eq!(p.cwd(), Path::new("/etc"));
}

#[test]
fn root_images_saved_by_podman_import_verify_and_unpack() {
    let d = tempfile::tempdir().unwrap();
    let tar = rootfs_tar(d.path());
    let oci = podman_image(
        d.path(),
        &tar,
        "localhost/vk-interop:1",
        &[
            r#"CMD ["/bin/sh", "-c", "cat /etc/hello"]"#,
            "ENV FOO=bar",
            "WORKDIR /etc",
        ],
    );
    let archive = d.path().join("docker.tar");
    podman(
        d.path(),
        &[
            "save",
            "--format",
            "docker-archive",
            "-o",
            archive.to_str().unwrap(),
            "localhost/vk-interop:1",
        ],
    );

    let store = Store::open(d.path().join("store")).unwrap();
    store.import_oci_layout(&oci, None, "from-oci").unwrap();
    check(&store, "from-oci");
    let imported = store.import_docker_archive(&archive, None).unwrap();
    let names: Vec<String> = store
        .images()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(
        names.contains(&"localhost/vk-interop:1".to_string()),
        "{names:?}"
    );
    assert_eq!(
        store.resolve("localhost/vk-interop:1").unwrap(),
        imported.manifest
    );
    check(&store, "localhost/vk-interop:1");

    // Pruning keeps what the names need, and drops an image's blobs once untagged.
    let before = store.blobs().unwrap().len();
    assert!(store
        .prune(&store.referenced().unwrap())
        .unwrap()
        .is_empty());
    store.untag("from-oci").unwrap();
    let removed = store.prune(&store.referenced().unwrap()).unwrap();
    assert!(!removed.is_empty() && store.blobs().unwrap().len() == before - removed.len());
    check(&store, "localhost/vk-interop:1");
}

#[test]
fn root_a_tampered_layout_is_refused_and_leaves_nothing_named() {
    let d = tempfile::tempdir().unwrap();
    let tar = rootfs_tar(d.path());
    let oci = podman_image(
        d.path(),
        &tar,
        "localhost/vk-tamper:1",
        &[r#"CMD ["/bin/sh"]"#],
    );
    // Flip a byte of the biggest blob (the layer).
    let mut blobs: Vec<_> = std::fs::read_dir(oci.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    blobs.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let layer = blobs.last().unwrap();
    let mut bytes = std::fs::read(layer).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(layer, &bytes).unwrap();
    let store = Store::open(d.path().join("store")).unwrap();
    let e = store.import_oci_layout(&oci, None, "tampered").unwrap_err();
    assert!(e.to_string().contains("digest mismatch"), "{e}");
    assert!(
        store.images().unwrap().is_empty(),
        "a name was recorded for a refused image"
    );
    assert_eq!(
        std::fs::read_dir(d.path().join("store/tmp"))
            .unwrap()
            .count(),
        0
    );
    // Not a layout at all.
    let e = store.import_oci_layout(d.path(), None, "x").unwrap_err();
    assert!(e.to_string().contains("not an OCI image layout"), "{e}");
    let e = store.import_docker_archive(&tar, Some("x")).unwrap_err();
    assert!(e.to_string().contains("not a docker-archive"), "{e}");
}

/// runc runs the bundle in the foreground; its output.
fn runc_run(bundle: &Path, id: &str) -> String {
    let state = tempfile::tempdir().unwrap();
    let out = Command::new("runc")
        .arg("--root")
        .arg(state.path())
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("runc");
    assert!(
        out.status.success(),
        "runc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tar layer of (path, body) files; a body of `None` is a whiteout of that path.
fn layer(files: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, body) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        let (name, data) = match body {
            Some(d) => (path.to_string(), *d),
            None => {
                let p = Path::new(path);
                let wh = format!(".wh.{}", p.file_name().unwrap().to_string_lossy());
                (p.parent().unwrap().join(wh).display().to_string(), &b""[..])
            }
        };
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name.trim_start_matches('/'), data)
            .unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn root_a_bundle_of_a_stored_image_runs_under_runc_with_its_layers_overlaid() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("store")).unwrap();
    // Two layers: busybox and two files, then one file deleted and one replaced.
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let lower = layer(&[
        ("bin/busybox", Some(&busybox)),
        ("etc/keep", Some(b"lower\n")),
        ("etc/gone", Some(b"lower\n")),
        ("etc/changed", Some(b"lower\n")),
    ]);
    let upper = layer(&[("etc/gone", None), ("etc/changed", Some(b"upper\n"))]);
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for l in [&lower, &upper] {
        let dg = virtkit_image::Digest::of(l);
        store.put_blob(&l[..], &dg).unwrap();
        layers.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": dg.to_string(), "size": l.len()}));
        diff_ids.push(dg.to_string());
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/busybox", "sh", "-c"],
                   "Cmd": ["cat /etc/keep /etc/changed; ls /etc; echo $GREETING; pwd"],
                   "Env": ["GREETING=from-the-image"], "WorkingDir": "/etc"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap();
    let cd = virtkit_image::Digest::of(&config);
    store.put_blob(&config[..], &cd).unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": config.len()},
        "layers": layers
    }))
    .unwrap();
    let md = virtkit_image::Digest::of(&manifest);
    store.put_blob(&manifest[..], &md).unwrap();
    store.tag("local/two-layers:1", &md).unwrap();

    let before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let bdir = d.path().join("bundle");
    let b = store
        .create_bundle(
            "local/two-layers:1",
            &bdir,
            oci_spec::runtime::Spec::default(),
            &RunOptions::default(),
        )
        .unwrap();
    let out = runc_run(&bdir, "vk-image-bundle");
    assert_eq!(out, "lower\nupper\nchanged\nkeep\nfrom-the-image\n/etc\n");
    // The container's writes stay in its upper directory; the shared layers are untouched.
    let b2 = d.path().join("bundle2");
    let second = store
        .create_bundle(
            "local/two-layers:1",
            &b2,
            oci_spec::runtime::Spec::default(),
            &RunOptions {
                args: vec!["echo written > /etc/keep; cat /etc/keep".into()],
                ..RunOptions::default()
            },
        )
        .unwrap();
    assert_eq!(runc_run(&b2, "vk-image-bundle2"), "written\n");
    assert_eq!(
        std::fs::read(b2.join("upper/etc/keep")).unwrap(),
        b"written\n"
    );
    for l in [&lower, &upper] {
        let p = store.layer_path(&virtkit_image::Digest::of(l));
        assert!(p.is_dir());
    }
    assert_eq!(
        std::fs::read(
            store
                .layer_path(&virtkit_image::Digest::of(&lower))
                .join("etc/keep")
        )
        .unwrap(),
        b"lower\n"
    );
    second.remove().unwrap();
    b.remove().unwrap();
    assert!(!bdir.exists() && !b2.exists());
    assert_eq!(
        std::fs::read_to_string("/proc/self/mountinfo").unwrap(),
        before,
        "a mount is left"
    );
    // A bundle directory that exists is refused, and an unknown image too.
    std::fs::create_dir(&bdir).unwrap();
    assert!(store
        .create_bundle(
            "local/two-layers:1",
            &bdir,
            oci_spec::runtime::Spec::default(),
            &RunOptions::default()
        )
        .is_err());
    let e = store
        .create_bundle(
            "nope:1",
            &d.path().join("b3"),
            oci_spec::runtime::Spec::default(),
            &RunOptions::default(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("no image named"), "{e}");
    assert!(!d.path().join("b3").exists());
}
