//! Images out of the store: pushed to a real registry (Debian's `docker-registry` on
//! 127.0.0.1, plain HTTP) and pulled back, exported as an OCI layout and a
//! docker-archive, read back by us and by `skopeo`. An image with an uncompressed layer
//! (busybox) and a gzip one made by `Store::commit`. Needs `docker-registry`, `skopeo`
//! and busybox-static (`.ci/run` installs them).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use virtkit_image::registry::RegistryOptions;
use virtkit_image::{CommitChanges, Digest, Store};
use virtkit_lab::registry::{busybox_layout, TestRegistry};

/// A store holding `vk/app:1`: busybox plus a committed layer with `/etc/added`.
fn image(d: &Path) -> (Store, Digest) {
    let store = Store::open(d.join("store")).unwrap();
    let l = busybox_layout(d, &["/bin/sh", "-c", "cat /etc/added"], &["A=1"]).unwrap();
    store.import_oci_layout(&l, Some("v1"), "busybox").unwrap();
    let upper = d.join("upper");
    std::fs::create_dir_all(upper.join("etc")).unwrap();
    std::fs::write(upper.join("etc/added"), "added\n").unwrap();
    let changes = CommitChanges {
        env: vec!["B=2".into()],
        ..CommitChanges::default()
    };
    let got = store
        .commit(&upper, "busybox", "vk/app:1", &changes)
        .unwrap();
    (store, got.manifest)
}

fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("skopeo (apt-get install skopeo)");
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn oci_layout_round_trips_and_skopeo_reads_it() {
    let d = tempfile::tempdir().unwrap();
    let (store, md) = image(d.path());
    let dir = d.path().join("out-oci");
    assert_eq!(store.export_oci_layout("vk/app:1", &dir).unwrap(), md);
    // Our own import gives the very same manifest.
    let s2 = Store::open(d.path().join("store2")).unwrap();
    let back = s2.import_oci_layout(&dir, Some("1"), "again").unwrap();
    assert_eq!(back.manifest, md);
    // skopeo reads it, and converts it to a docker-archive we import again.
    let oci = format!("oci:{}:1", dir.display());
    let inspect = skopeo(&["inspect", &oci]);
    assert!(inspect.contains("\"B=2\""), "{inspect}");
    let da = d.path().join("via-skopeo.tar");
    skopeo(&[
        "copy",
        &oci,
        &format!("docker-archive:{}:vk/app:1", da.display()),
    ]);
    let s3 = Store::open(d.path().join("store3")).unwrap();
    s3.import_docker_archive(&da, None).unwrap();
    // A second export to the same place is refused and leaves the first whole.
    assert!(store.export_oci_layout("vk/app:1", &dir).is_err());
    assert!(dir.join("index.json").is_file());
    assert!(store
        .export_oci_layout("no/such:image", &d.path().join("x"))
        .is_err());
    assert!(!d.path().join("x").exists());
}

#[test]
fn docker_archive_has_uncompressed_layers_and_loads() {
    let d = tempfile::tempdir().unwrap();
    let (store, _) = image(d.path());
    let tar = d.path().join("app.tar");
    let cfg = store.export_docker_archive("vk/app:1", &tar).unwrap();
    // skopeo reads it as docker load would.
    let inspect = skopeo(&["inspect", &format!("docker-archive:{}", tar.display())]);
    assert!(inspect.contains("\"B=2\""), "{inspect}");
    // Our import: the layers stored as they are in the archive, uncompressed, so their
    // digests are the config's diff ids.
    let s2 = Store::open(d.path().join("store2")).unwrap();
    let got = s2.import_docker_archive(&tar, None).unwrap();
    assert_eq!(got.parsed.config.digest, cfg.to_string());
    assert_eq!(s2.resolve("vk/app:1").unwrap(), got.manifest);
    let config: serde_json::Value = serde_json::from_slice(&s2.read_blob(&cfg).unwrap()).unwrap();
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let layers: Vec<String> = got.parsed.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(layers, diff_ids);
    assert_eq!(layers.len(), 2);
}

#[test]
fn push_then_pull_gives_the_same_image() {
    let d = tempfile::tempdir().unwrap();
    let (store, md) = image(d.path());
    let reg = TestRegistry::start(d.path(), None).unwrap();
    let dest = format!("{}/vk/pushed:1", reg.addr);
    let opts = RegistryOptions::default();
    let p = store.push("vk/app:1", &dest, &opts).unwrap();
    assert_eq!(p.manifest, md);
    assert_eq!(p.uploaded.len(), 3, "{p:?}");
    // Again: the registry has every blob.
    let p = store.push("vk/app:1", &dest, &opts).unwrap();
    assert!(p.uploaded.is_empty() && p.skipped.len() == 3, "{p:?}");
    let s2 = Store::open(d.path().join("pulled")).unwrap();
    assert_eq!(s2.pull(&dest, &opts).unwrap().manifest, md);
    let inspect = skopeo(&["inspect", "--tls-verify=false", &format!("docker://{dest}")]);
    assert!(inspect.contains(&md.to_string()), "{inspect}");
    // A blob changed in the store is never committed to the registry.
    let m = store.manifest(&md).unwrap();
    let top: Digest = m.layers[1].digest.parse().unwrap();
    let p = store.blob_path(&top);
    let mut bytes = std::fs::read(&p).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&p, bytes).unwrap();
    let e = store
        .push("vk/app:1", &format!("{}/vk/other:1", reg.addr), &opts)
        .unwrap_err();
    assert!(e.to_string().contains("changed in the store"), "{e}");
}
