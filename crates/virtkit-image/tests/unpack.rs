//! Layer unpacking against real archives: what is unpacked, what hostile layers cannot
//! do, whiteouts, corrupt input, and interoperability with GNU tar. Tests that need root
//! (owners, device nodes, overlayfs) are `root_`.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use virtkit_image::{unpack::unpack, Digest, ImageError, Store, UnpackOptions, Whiteouts};

fn opts(whiteouts: Whiteouts) -> UnpackOptions {
    UnpackOptions {
        whiteouts,
        same_owner: false,
        ..UnpackOptions::default()
    }
}

/// A tar archive built entry by entry.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }
    fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        h
    }
    fn file(mut self, path: &str, body: &[u8], mode: u32) -> Layer {
        let mut h = Self::header(tar::EntryType::Regular, mode);
        h.set_size(body.len() as u64);
        self.0.append_data(&mut h, path, body).unwrap();
        self
    }
    fn dir(mut self, path: &str) -> Layer {
        let mut h = Self::header(tar::EntryType::Directory, 0o755);
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }
    fn link(mut self, kind: tar::EntryType, path: &str, target: &str) -> Layer {
        let mut h = Self::header(kind, 0o777);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }
    fn symlink(self, path: &str, target: &str) -> Layer {
        self.link(tar::EntryType::Symlink, path, target)
    }
    fn hardlink(self, path: &str, target: &str) -> Layer {
        self.link(tar::EntryType::Link, path, target)
    }
    /// An entry whose name is written raw into the header (the builder refuses `..`).
    fn raw_file(mut self, path: &[u8], body: &[u8]) -> Layer {
        let mut h = Self::header(tar::EntryType::Regular, 0o644);
        h.as_old_mut().name[..path.len()].copy_from_slice(path);
        h.set_size(body.len() as u64);
        h.set_cksum();
        self.0.append(&h, body).unwrap();
        self
    }
    fn tar(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn files_dirs_links_modes_and_times_in_every_compression() {
    let tar = Layer::new()
        .dir("etc")
        .file("etc/hostname", b"virtkit\n", 0o644)
        .file("usr/bin/tool", b"#!/bin/sh\n", 0o755) // parents not in the archive
        .symlink("bin", "usr/bin")
        .symlink("etc/abs", "/etc/passwd")
        .hardlink("usr/bin/tool2", "usr/bin/tool")
        .file("./etc/hostname", b"replaced\n", 0o600) // a later entry wins
        .tar();
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    for (what, bytes) in [("tar", tar.clone()), ("gzip", gzip(&tar)), ("zstd", zst)] {
        let d = tempfile::tempdir().unwrap();
        let s = unpack(&bytes[..], d.path(), &opts(Whiteouts::Overlay)).unwrap();
        assert_eq!(s.digest, Digest::of(&bytes), "{what}");
        assert_eq!(s.diff_id, Digest::of(&tar), "{what}");
        let p = |r: &str| d.path().join(r);
        assert_eq!(std::fs::read(p("etc/hostname")).unwrap(), b"replaced\n");
        assert_eq!(
            std::fs::metadata(p("etc/hostname"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o600
        );
        let tool = std::fs::metadata(p("usr/bin/tool")).unwrap();
        assert_eq!(tool.permissions().mode() & 0o7777, 0o755);
        assert_eq!(tool.mtime(), 1_600_000_000);
        assert_eq!(std::fs::read_link(p("bin")).unwrap(), Path::new("usr/bin"));
        assert_eq!(
            std::fs::read_link(p("etc/abs")).unwrap(),
            Path::new("/etc/passwd")
        );
        let t2 = std::fs::metadata(p("usr/bin/tool2")).unwrap();
        assert_eq!(
            t2.ino(),
            tool.ino(),
            "{what}: the hard link is not one inode"
        );
    }
}

/// Unpacks `tar` next to a sibling directory `outside`, returns (result, dest, outside).
fn hostile(tar: Vec<u8>) -> (Result<(), ImageError>, tempfile::TempDir) {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("layer")).unwrap();
    std::fs::create_dir(d.path().join("outside")).unwrap();
    let r = unpack(&tar[..], &d.path().join("layer"), &opts(Whiteouts::Overlay)).map(drop);
    (r, d)
}

fn outside_is_untouched(d: &tempfile::TempDir) {
    let n = std::fs::read_dir(d.path().join("outside")).unwrap().count();
    assert_eq!(n, 0, "something was written outside the layer");
    let top: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        top.len(),
        2,
        "something was written next to the layer: {top:?}"
    );
}

#[test]
fn hostile_layers_never_write_outside_their_directory() {
    // `..` in a name.
    let (r, d) = hostile(Layer::new().raw_file(b"../outside/pwned", b"x").tar());
    assert!(
        matches!(&r, Err(ImageError::BadEntry { why, .. }) if why.contains("..")),
        "{r:?}"
    );
    outside_is_untouched(&d);
    // A symbolic link pointing out, then a file through it: it lands inside, or fails.
    for target in ["../outside", "/", "../../../../../../../tmp"] {
        let (r, d) = hostile(
            Layer::new()
                .symlink("esc", target)
                .file("esc/pwned", b"x", 0o644)
                .tar(),
        );
        outside_is_untouched(&d);
        if r.is_ok() {
            assert!(
                d.path().join("layer").join("pwned").exists()
                    || d.path().join("layer/outside/pwned").exists()
                    || d.path().join("layer/tmp/pwned").exists()
            );
        }
    }
    // An absolute name stays inside.
    let (r, d) = hostile(Layer::new().raw_file(b"/abs/file", b"x").tar());
    r.unwrap();
    assert!(d.path().join("layer/abs/file").is_file());
    outside_is_untouched(&d);
    // Hard links to outside: `..`, an absolute target, through a symbolic link.
    let host_file = d.path().join("outside-secret");
    let (r, d) = hostile(Layer::new().hardlink("h", "../outside-secret").tar());
    assert!(r.is_err());
    outside_is_untouched(&d);
    let _ = host_file;
    let (r, d) = hostile(Layer::new().hardlink("h", "/etc/passwd").tar());
    assert!(r.is_err(), "a hard link reached the host's /etc/passwd");
    outside_is_untouched(&d);
    let (r, d) = hostile(
        Layer::new()
            .symlink("l", "/etc")
            .hardlink("h", "l/passwd")
            .tar(),
    );
    assert!(
        r.is_err(),
        "a hard link through a link reached the host's /etc/passwd"
    );
    outside_is_untouched(&d);
    // A hard link to a directory.
    let (r, d) = hostile(Layer::new().dir("d").hardlink("h", "d").tar());
    assert!(
        matches!(&r, Err(ImageError::BadEntry { why, .. }) if why.contains("to a directory")),
        "{r:?}"
    );
    outside_is_untouched(&d);
    // A file over a symbolic link replaces the link, never writes through it.
    let victim = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(victim.path(), b"host data").unwrap();
    let (r, d) = hostile(
        Layer::new()
            .symlink("s", victim.path().to_str().unwrap())
            .file("s", b"overwritten?", 0o644)
            .tar(),
    );
    r.unwrap();
    assert_eq!(std::fs::read(victim.path()).unwrap(), b"host data");
    assert_eq!(
        std::fs::read(d.path().join("layer/s")).unwrap(),
        b"overwritten?"
    );
    outside_is_untouched(&d);
}

/// A lower layer (`f`, `d/a`, `d/b`, `keep`) and an upper one whiting out `f` and making
/// `d` opaque with a new `d/c`.
fn whiteout_layers() -> (Vec<u8>, Vec<u8>) {
    let lower = Layer::new()
        .file("f", b"f", 0o644)
        .file("d/a", b"a", 0o644)
        .file("d/b", b"b", 0o644)
        .file("keep", b"k", 0o644)
        .tar();
    let upper = Layer::new()
        .file(".wh.f", b"", 0o644)
        .dir("d")
        .file("d/.wh..wh..opq", b"", 0o644)
        .file("d/c", b"c", 0o644)
        .tar();
    (lower, upper)
}

#[test]
fn whiteouts_applied_over_a_lower_layer() {
    let (lower, upper) = whiteout_layers();
    let d = tempfile::tempdir().unwrap();
    unpack(&lower[..], d.path(), &opts(Whiteouts::Apply)).unwrap();
    unpack(&upper[..], d.path(), &opts(Whiteouts::Apply)).unwrap();
    assert!(!d.path().join("f").exists());
    assert!(d.path().join("keep").exists());
    let mut names: Vec<_> = std::fs::read_dir(d.path().join("d"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["c"]);
}

#[test]
fn root_whiteouts_become_overlayfs_whiteouts_that_overlayfs_honours() {
    let (lower, upper) = whiteout_layers();
    let d = tempfile::tempdir().unwrap();
    for (name, tar) in [("lower", &lower), ("upper", &upper)] {
        std::fs::create_dir(d.path().join(name)).unwrap();
        unpack(&tar[..], &d.path().join(name), &UnpackOptions::default()).unwrap();
    }
    let wh = std::fs::symlink_metadata(d.path().join("upper/f")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &wh.file_type()
    ));
    assert_eq!(wh.rdev(), 0);
    std::fs::create_dir(d.path().join("merged")).unwrap();
    // overlayfs in a mount namespace of its own: nothing reaches the host.
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t overlay overlay -o lowerdir={0}/upper:{0}/lower {0}/merged && ls -A {0}/merged && echo --- && ls -A {0}/merged/d",
            d.path().display()
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text, "d\nkeep\n---\nc\n");
}

#[test]
fn corrupt_and_oversized_layers_are_errors() {
    let tar = Layer::new().file("big", &vec![7u8; 256 << 10], 0o644).tar();
    let gz = gzip(&tar);
    // Truncated compressed data.
    let d = tempfile::tempdir().unwrap();
    let r = unpack(&gz[..gz.len() / 2], d.path(), &opts(Whiteouts::Overlay));
    assert!(matches!(r, Err(ImageError::Archive(_))), "{r:?}");
    // A decompression bomb past the limit.
    let d = tempfile::tempdir().unwrap();
    let small = UnpackOptions {
        max_bytes: 64 << 10,
        ..opts(Whiteouts::Overlay)
    };
    assert!(unpack(&gz[..], d.path(), &small).is_err());
}

#[test]
fn the_store_verifies_blobs_and_unpacks_a_layer_once_or_not_at_all() {
    let s = tempfile::tempdir().unwrap();
    let store = Store::open(s.path()).unwrap();
    let gz = gzip(&Layer::new().file("hello", b"world", 0o644).tar());
    let d = Digest::of(&gz);
    // Two writers of one blob at once: both succeed, one blob.
    std::thread::scope(|sc| {
        for _ in 0..2 {
            sc.spawn(|| store.put_blob(&gz[..], &d).unwrap());
        }
    });
    assert_eq!(store.blobs().unwrap(), vec![d.clone()]);
    let layer = store.unpack_layer(&d, &opts(Whiteouts::Overlay)).unwrap();
    assert_eq!(std::fs::read(layer.join("hello")).unwrap(), b"world");
    assert_eq!(
        store.unpack_layer(&d, &opts(Whiteouts::Overlay)).unwrap(),
        layer
    );
    // A blob changed on disk is caught when used, and its unpack leaves nothing.
    let bad = gzip(&Layer::new().file("x", b"y", 0o644).tar());
    let bd = Digest::of(&bad);
    store.put_blob(&bad[..], &bd).unwrap();
    let mut tampered = gzip(&Layer::new().file("x", b"z", 0o644).tar());
    tampered.truncate(bad.len().min(tampered.len()));
    std::fs::write(store.blob_path(&bd), &tampered).unwrap();
    assert!(store.read_blob(&bd).is_err());
    assert!(store.unpack_layer(&bd, &opts(Whiteouts::Overlay)).is_err());
    assert!(!store.layer_path(&bd).exists());
    assert_eq!(
        std::fs::read_dir(s.path().join("tmp")).unwrap().count(),
        0,
        "leftovers in tmp/"
    );
    // Missing blobs, and pruning what nothing references.
    let none = Digest::of(b"none");
    assert!(matches!(
        store.read_blob(&none),
        Err(ImageError::MissingBlob(_))
    ));
    let removed = store.prune(&[d.clone()].into_iter().collect()).unwrap();
    assert_eq!(removed, vec![bd]);
    assert!(layer.exists());
    store.prune(&Default::default()).unwrap();
    assert!(!layer.exists() && store.blobs().unwrap().is_empty());
}

#[test]
fn a_gnu_tar_archive_unpacks_to_the_same_tree() {
    let src = tempfile::tempdir().unwrap();
    let p = |r: &str| src.path().join(r);
    std::fs::create_dir_all(p("tree/sub")).unwrap();
    std::fs::write(p("tree/a"), b"alpha").unwrap();
    std::fs::set_permissions(p("tree/a"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::write(p("tree/sub/b"), vec![9u8; 100_000]).unwrap();
    std::fs::hard_link(p("tree/a"), p("tree/sub/a-link")).unwrap();
    std::os::unix::fs::symlink("../a", p("tree/sub/rel")).unwrap();
    let set = Command::new("setfattr")
        .args(["-n", "user.virtkit", "-v", "yes"])
        .arg(p("tree/a"))
        .status()
        .expect("setfattr (apt-get install attr; .ci/run does)");
    assert!(set.success(), "this file system takes no user.* xattrs");
    let archive = src.path().join("layer.tar.gz");
    let st = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=user.*", "-czf"])
        .arg(&archive)
        .arg("-C")
        .arg(p("tree"))
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let out = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(&archive).unwrap();
    unpack(&bytes[..], out.path(), &opts(Whiteouts::Overlay)).unwrap();
    let o = |r: &str| out.path().join(r);
    assert_eq!(std::fs::read(o("a")).unwrap(), b"alpha");
    assert_eq!(
        std::fs::metadata(o("a")).unwrap().permissions().mode() & 0o7777,
        0o750
    );
    assert_eq!(std::fs::read(o("sub/b")).unwrap(), vec![9u8; 100_000]);
    assert_eq!(
        std::fs::metadata(o("sub/a-link")).unwrap().ino(),
        std::fs::metadata(o("a")).unwrap().ino()
    );
    assert_eq!(std::fs::read_link(o("sub/rel")).unwrap(), Path::new("../a"));
    let v = Command::new("getfattr")
        .args(["--only-values", "-n", "user.virtkit"])
        .arg(o("a"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&v.stdout),
        "yes",
        "the xattr did not come through"
    );
}
