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
    podman(
        d.path(),
        &[
            "import",
            "--change",
            r#"CMD ["/bin/sh", "-c", "cat /etc/hello"]"#,
            "--change",
            "ENV FOO=bar",
            "--change",
            "WORKDIR /etc",
            tar.to_str().unwrap(),
            "localhost/vk-interop:1",
        ],
    );
    let oci = d.path().join("oci");
    podman(
        d.path(),
        &[
            "save",
            "--format",
            "oci-dir",
            "-o",
            oci.to_str().unwrap(),
            "localhost/vk-interop:1",
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
    podman(
        d.path(),
        &[
            "import",
            "--change",
            "CMD [\"/bin/sh\"]",
            tar.to_str().unwrap(),
            "localhost/vk-tamper:1",
        ],
    );
    let oci = d.path().join("oci");
    podman(
        d.path(),
        &[
            "save",
            "--format",
            "oci-dir",
            "-o",
            oci.to_str().unwrap(),
            "localhost/vk-tamper:1",
        ],
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
