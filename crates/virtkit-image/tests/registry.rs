//! Pulls from a real registry: Debian's `docker-registry` (the CNCF distribution) started
//! by the test on 127.0.0.1, plain HTTP and then TLS with a self-signed CA and htpasswd
//! basic auth, images pushed into it with `skopeo` from OCI layouts made here. Needs
//! `docker-registry`, `skopeo`, `apache2-utils` and `openssl` (`.ci/run` installs them).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use serde_json::json;
use virtkit_image::registry::RegistryOptions;
use virtkit_image::{Digest, ImageError, Store, UnpackOptions};
use virtkit_lab::registry::{closed_addr, OciLayout, TestRegistry, TlsAuth};

fn gz_layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (p, body) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(body.len() as u64);
        b.append_data(&mut h, p, *body).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// An OCI layout holding an index with a linux/amd64 and a linux/arm64 image; returns the
/// layout and the amd64 image's (manifest, config) digests and its layer's bytes.
fn layout(dir: &Path) -> (PathBuf, Digest, Digest, Vec<u8>) {
    let l = OciLayout::create(&dir.join("layout")).unwrap();
    let big: Vec<u8> = (0..400_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let layer = gz_layer(&[
        ("etc/hello", b"hello from the registry\n"),
        ("data/big", &big),
    ]);
    let ld = l
        .blob("application/vnd.oci.image.layer.v1.tar+gzip", &layer)
        .unwrap();
    let diff = {
        let mut d = flate2::read::GzDecoder::new(&layer[..]);
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut d, &mut v).unwrap();
        Digest::of(&v).to_string()
    };
    let mut manifests = Vec::new();
    let mut amd64 = None;
    for arch in ["amd64", "arm64"] {
        let cfg = serde_json::to_vec(&json!({"architecture": arch, "os": "linux",
            "config": {"Cmd": ["/bin/true"], "Env": [format!("ARCH={arch}")]},
            "rootfs": {"type": "layers", "diff_ids": [diff]}}))
        .unwrap();
        let cd = l
            .blob("application/vnd.oci.image.config.v1+json", &cfg)
            .unwrap();
        let m = serde_json::to_vec(&json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": cd, "layers": [ld]}))
        .unwrap();
        let mut md = l
            .blob("application/vnd.oci.image.manifest.v1+json", &m)
            .unwrap();
        md["platform"] = json!({"architecture": arch, "os": "linux"});
        if arch == "amd64" {
            amd64 = Some((Digest::of(&m), Digest::of(&cfg)));
        }
        manifests.push(md);
    }
    let idx = serde_json::to_vec(&json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}))
    .unwrap();
    let mut id = l
        .blob("application/vnd.oci.image.index.v1+json", &idx)
        .unwrap();
    id["annotations"] = json!({"org.opencontainers.image.ref.name": "v1"});
    let (m, c) = amd64.unwrap();
    (l.finish(vec![id]).unwrap(), m, c, layer)
}

fn plain() -> RegistryOptions {
    RegistryOptions::default()
}

#[test]
fn pull_from_a_plain_http_registry_on_the_loopback() {
    let d = tempfile::tempdir().unwrap();
    let reg = TestRegistry::start(d.path(), None).unwrap();
    let (l, manifest, config, layer) = layout(d.path());
    reg.push(&l, "v1", "vk/app:1", None).unwrap();
    let store = Store::open(d.path().join("store")).unwrap();
    let image = format!("{}/vk/app:1", reg.addr);
    let got = store.pull(&image, &plain()).unwrap();
    // The index resolved to linux/amd64.
    assert_eq!(got.manifest, manifest);
    assert_eq!(got.parsed.config.digest, config.to_string());
    assert_eq!(store.resolve(&image).unwrap(), manifest);
    let ld: Digest = got.parsed.layers[0].digest.parse().unwrap();
    let dir = store.unpack_layer(&ld, &UnpackOptions::default()).unwrap();
    assert_eq!(
        std::fs::read(dir.join("etc/hello")).unwrap(),
        b"hello from the registry\n"
    );
    // The same image as Docker schema 2 (a manifest list and v2 manifests).
    reg.push_with(&l, "v1", "vk/app-docker:1", None, &["--format", "v2s2"])
        .unwrap();
    let docker = format!("{}/vk/app-docker:1", reg.addr);
    let s4 = Store::open(d.path().join("store4")).unwrap();
    let got4 = s4.pull(&docker, &plain()).unwrap();
    let raw = s4.read_blob(&got4.manifest).unwrap();
    assert!(
        String::from_utf8_lossy(&raw)
            .contains("application/vnd.docker.distribution.manifest.v2+json"),
        "not a Docker schema 2 manifest"
    );
    assert_eq!(got4.parsed.config.digest, config.to_string());
    // By digest too, and a second pull fetches nothing new.
    let by_digest = format!("{}/vk/app@{manifest}", reg.addr);
    assert_eq!(store.pull(&by_digest, &plain()).unwrap().manifest, manifest);

    // A pull interrupted half-way resumes: plant a half blob whose bytes are wrong; the
    // resumed pull keeps them (a range request for the rest) and the digest check
    // catches it, then a fresh pull succeeds.
    let s2 = Store::open(d.path().join("store2")).unwrap();
    let half = layer.len() / 2;
    std::fs::write(
        s2.root().join("tmp").join(format!("partial-{}", ld.hex())),
        vec![0u8; half],
    )
    .unwrap();
    let e = s2.pull(&image, &plain()).unwrap_err();
    assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
    assert!(s2.images().unwrap().is_empty());
    // The right first half resumes into the right blob.
    std::fs::write(
        s2.root().join("tmp").join(format!("partial-{}", ld.hex())),
        &layer[..half],
    )
    .unwrap();
    s2.pull(&image, &plain()).unwrap();
    assert_eq!(std::fs::read(s2.blob_path(&ld)).unwrap(), layer);

    // Bad input: unknown tag, unknown repository, a registry that is down, a bad name.
    let err = |image: &str| store.pull(image, &plain()).unwrap_err().to_string();
    let e = err(&format!("{}/vk/app:nope", reg.addr));
    assert!(
        e.contains("registry") && e.to_lowercase().contains("manifest"),
        "{e}"
    );
    let e = err(&format!("{}/vk/none:1", reg.addr));
    assert!(e.contains("registry"), "{e}");
    let e = err(&format!("{}/vk/app:1", closed_addr().unwrap()));
    assert!(e.contains("registry"), "{e}");
    let e = err("127.0.0.1:5000/vk/app:bad tag!");
    assert!(e.contains("image reference"), "{e}");
    // A layer corrupted in the registry's storage is refused, nothing named, no blob.
    let data = reg
        .data
        .join("docker/registry/v2/blobs/sha256")
        .join(&ld.hex()[..2])
        .join(ld.hex())
        .join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let s3 = Store::open(d.path().join("store3")).unwrap();
    let e = s3.pull(&image, &plain()).unwrap_err();
    assert!(e.to_string().to_lowercase().contains("digest"), "{e}");
    assert!(s3.images().unwrap().is_empty() && !s3.has_blob(&ld));
}

#[test]
fn pull_over_tls_with_a_custom_ca_and_basic_auth() {
    let d = tempfile::tempdir().unwrap();
    let tls = TlsAuth::make(d.path(), "vkuser", "s3cret").unwrap();
    let reg = TestRegistry::start(d.path(), Some(&tls)).unwrap();
    let (l, manifest, _, _) = layout(d.path());
    let image = format!("{}/vk/secure:1", reg.addr);
    reg.push(&l, "v1", "vk/secure:1", Some((&tls, "vkuser:s3cret")))
        .unwrap();
    let store = Store::open(d.path().join("store")).unwrap();
    let ok = RegistryOptions {
        tls_verify: None,
        ca_file: Some(tls.cert()),
        credentials: Some(("vkuser".into(), "s3cret".into())),
    };
    assert_eq!(store.pull(&image, &ok).unwrap().manifest, manifest);
    // Wrong password, no password, no CA: each refused, nothing named.
    let s2 = Store::open(d.path().join("store2")).unwrap();
    for (what, opts) in [
        (
            "a wrong password",
            RegistryOptions {
                credentials: Some(("vkuser".into(), "nope".into())),
                ..ok.clone()
            },
        ),
        (
            "no credentials",
            RegistryOptions {
                credentials: None,
                ..ok.clone()
            },
        ),
        (
            "no CA",
            RegistryOptions {
                ca_file: None,
                tls_verify: Some(true),
                ..ok.clone()
            },
        ),
    ] {
        let e = s2.pull(&image, &opts).unwrap_err();
        assert!(e.to_string().contains("registry"), "{what}: {e}");
        assert!(s2.images().unwrap().is_empty(), "{what}");
    }
}

#[test]
fn push_and_pull_with_token_auth() {
    let d = tempfile::tempdir().unwrap();
    let tokens =
        virtkit_lab::registry::token::TokenServer::start(&d.path().join("tok"), "vkuser", "t0ken")
            .unwrap();
    let reg = TestRegistry::start_token(d.path(), &tokens).unwrap();
    let (l, manifest, _, _) = layout(d.path());
    let src = Store::open(d.path().join("src")).unwrap();
    src.import_oci_layout(&l, None, "local/img:1").unwrap();
    let image = format!("{}/vk/tokened:1", reg.addr);
    let ok = RegistryOptions {
        credentials: Some(("vkuser".into(), "t0ken".into())),
        ..plain()
    };
    // Without credentials the registry's Bearer challenge cannot be met.
    let e = src.push("local/img:1", &image, &plain()).unwrap_err();
    assert!(e.to_string().contains("registry"), "{e}");
    let pushed = src.push("local/img:1", &image, &ok).unwrap();
    assert_eq!(pushed.manifest, manifest);
    assert!(tokens.issued.load(std::sync::atomic::Ordering::SeqCst) > 0);
    let store = Store::open(d.path().join("store")).unwrap();
    assert_eq!(store.pull(&image, &ok).unwrap().manifest, manifest);
    let s2 = Store::open(d.path().join("store2")).unwrap();
    for bad in [
        plain(),
        RegistryOptions {
            credentials: Some(("vkuser".into(), "wrong".into())),
            ..plain()
        },
    ] {
        let e = s2.pull(&image, &bad).unwrap_err();
        assert!(e.to_string().contains("registry"), "{e}");
        assert!(s2.images().unwrap().is_empty());
    }
}
