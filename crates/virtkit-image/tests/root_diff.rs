//! An overlayfs upper directory made into a layer (`virtkit_image::diff`, root: device
//! nodes, owners, `trusted.*` xattrs) and unpacked again with the crate's unpacker: the
//! same tree, whiteouts and opaque directories included; and `Store::commit` over a
//! real overlay mount whose upper directory a "container" changed.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use virtkit_image::{unpack::unpack, CommitChanges, Digest, Store, UnpackOptions, Whiteouts};

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

fn setx(p: &Path, k: &str, v: &[u8]) {
    let k = CString::new(k).unwrap();
    // SAFETY: C strings and a buffer of the length passed.
    let r = unsafe { libc::lsetxattr(c(p).as_ptr(), k.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    assert_eq!(r, 0, "{}: {}", p.display(), std::io::Error::last_os_error());
}

fn getx(p: &Path, k: &str) -> Option<Vec<u8>> {
    let k = CString::new(k).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: C strings and a buffer of the length passed.
    let n = unsafe { libc::lgetxattr(c(p).as_ptr(), k.as_ptr(), buf.as_mut_ptr().cast(), 256) };
    (n >= 0).then(|| {
        buf.truncate(n as usize);
        buf
    })
}

fn mknod(p: &Path, mode: u32, dev: u64) {
    // SAFETY: a C string.
    assert_eq!(unsafe { libc::mknod(c(p).as_ptr(), mode, dev) }, 0);
}

fn lchown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn set_mtime(p: &Path, secs: i64) {
    let ts = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
    ];
    // SAFETY: a C string and two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c(p).as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0);
}

/// Everything about a tree that a layer carries, by relative path.
fn describe(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let mut d = format!("mode={:o} owner={}:{}", m.mode(), m.uid(), m.gid());
            if !ft.is_symlink() && !ft.is_dir() {
                d += &format!(" mtime={}", m.mtime());
            }
            if ft.is_file() {
                d += &format!(" data={:?}", std::fs::read(&p).unwrap());
                if m.nlink() > 1 {
                    let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone());
                    d += &format!(" link={first}");
                }
            } else if ft.is_symlink() {
                d += &format!(" -> {}", std::fs::read_link(&p).unwrap().display());
            } else if ft.is_char_device() || ft.is_block_device() {
                d += &format!(" rdev={}", m.rdev());
            }
            // security.capability too: the unpacker must set it after the owner, as
            // chown(2) clears file capabilities.
            for k in ["user.note", "trusted.overlay.opaque", "security.capability"] {
                if let Some(v) = getx(&p, k) {
                    d += &format!(" {k}={v:?}");
                }
            }
            if ft.is_dir() {
                stack.push(p);
            }
            out.insert(rel, d);
        }
    }
    out
}

/// security.capability: cap_net_bind_service+ep, v2 format.
fn cap() -> [u8; 20] {
    [0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// An upper directory with every kind of entry, owners, times, xattrs, a whiteout and an
/// opaque directory.
fn upper(dir: &Path) {
    std::fs::create_dir_all(dir.join("etc/opaque")).unwrap();
    std::fs::create_dir_all(dir.join("usr/bin")).unwrap();
    std::fs::write(dir.join("etc/conf"), "conf\n").unwrap();
    std::fs::set_permissions(dir.join("etc/conf"), std::fs::Permissions::from_mode(0o640)).unwrap();
    lchown(&dir.join("etc/conf"), 1000, 100);
    setx(&dir.join("etc/conf"), "user.note", b"kept");
    std::fs::write(dir.join("etc/opaque/only"), "only\n").unwrap();
    setx(&dir.join("etc/opaque"), "trusted.overlay.opaque", b"y");
    mknod(&dir.join("etc/gone"), libc::S_IFCHR, 0); // a whiteout
    std::fs::write(dir.join("usr/bin/tool"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        dir.join("usr/bin/tool"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    setx(&dir.join("usr/bin/tool"), "security.capability", &cap());
    std::fs::hard_link(dir.join("usr/bin/tool"), dir.join("usr/bin/tool2")).unwrap();
    std::os::unix::fs::symlink("../../etc/passwd", dir.join("usr/bin/escape")).unwrap();
    lchown(&dir.join("usr/bin/escape"), 5, 5);
    std::os::unix::fs::symlink("/nonexistent/target", dir.join("dangling")).unwrap();
    mknod(
        &dir.join("usr/null"),
        libc::S_IFCHR | 0o666,
        libc::makedev(1, 3),
    );
    mknod(
        &dir.join("usr/disk"),
        libc::S_IFBLK | 0o600,
        libc::makedev(8, 1),
    );
    mknod(&dir.join("usr/fifo"), libc::S_IFIFO | 0o644, 0);
    for p in [
        "etc/conf",
        "usr/bin/tool",
        "usr/null",
        "usr/fifo",
        "etc/opaque/only",
    ] {
        set_mtime(&dir.join(p), 1_600_000_000);
    }
}

#[test]
fn root_an_upper_directory_round_trips_through_a_layer() {
    let d = tempfile::tempdir().unwrap();
    let up = d.path().join("upper");
    upper(&up);
    let store = Store::open(d.path().join("store")).unwrap();
    let layer = store.layer_from_dir(&up, &[]).unwrap();
    // The same tree makes the same layer.
    assert_eq!(store.layer_from_dir(&up, &[]).unwrap(), layer);
    let out = d.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let blob = std::fs::File::open(store.blob_path(&layer.digest)).unwrap();
    let opts = UnpackOptions {
        whiteouts: Whiteouts::Overlay,
        ..UnpackOptions::default()
    };
    let stats = unpack(blob, &out, &opts).unwrap();
    assert_eq!(stats.digest, layer.digest);
    assert_eq!(stats.diff_id, layer.diff_id);
    let (want, got) = (describe(&up), describe(&out));
    assert_eq!(want, got);
    assert!(got["etc/gone"].contains("rdev=0"), "{got:?}");
    assert!(got["etc/opaque"].contains("opaque=[121]"), "{got:?}");
    assert!(
        got["usr/bin/tool2"].contains("link=usr/bin/tool"),
        "{got:?}"
    );
    // The layer's entry names, OCI's whiteouts among them; no entry left the tree.
    let gz =
        flate2::read::GzDecoder::new(std::fs::File::open(store.blob_path(&layer.digest)).unwrap());
    let mut names = Vec::new();
    let mut caps = None;
    for e in tar::Archive::new(gz).entries().unwrap() {
        let mut e = e.unwrap();
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        if name == "usr/bin/tool" {
            for x in e.pax_extensions().unwrap().unwrap() {
                let x = x.unwrap();
                if x.key().unwrap() == "SCHILY.xattr.security.capability" {
                    caps = Some(x.value_bytes().to_vec());
                }
            }
        }
        names.push(name);
    }
    assert_eq!(caps.as_deref(), Some(&cap()[..]));
    for n in ["etc/.wh.gone", "etc/opaque/.wh..wh..opq", "usr/bin/tool2"] {
        assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
    }
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with('/') && !n.split('/').any(|c| c == "..")),
        "{names:?}"
    );
    // Not a directory: an error, and nothing left in the store's tmp/.
    assert!(store.layer_from_dir(&up.join("etc/conf"), &[]).is_err());
    assert_eq!(
        std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
        0
    );
}

fn mount_overlay(lower: &Path, upper: &Path, work: &Path, target: &Path) {
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let (o, t, dd) = (
        CString::new("overlay").unwrap(),
        c(target),
        CString::new(data).unwrap(),
    );
    // SAFETY: C strings.
    let r = unsafe { libc::mount(o.as_ptr(), t.as_ptr(), o.as_ptr(), 0, dd.as_ptr().cast()) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
}

#[test]
fn root_commit_of_a_containers_changes() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("store")).unwrap();
    let l = virtkit_lab::registry::busybox_layout(d.path(), &["/bin/sh"], &["A=1"]).unwrap();
    let base = store.import_oci_layout(&l, Some("v1"), "busybox").unwrap();
    let lower = store
        .unpack_layer(
            &base.parsed.layers[0].digest.parse().unwrap(),
            &UnpackOptions::default(),
        )
        .unwrap();
    let (up, work, merged) = (d.path().join("u"), d.path().join("w"), d.path().join("m"));
    for p in [&up, &work, &merged] {
        std::fs::create_dir(p).unwrap();
    }
    mount_overlay(&lower, &up, &work, &merged);
    // The "container": a new file, a deleted one, a directory replaced by an opaque one.
    std::fs::write(merged.join("new"), "new\n").unwrap();
    std::fs::remove_file(merged.join("bin/cat")).unwrap();
    std::fs::remove_dir_all(merged.join("bin")).unwrap();
    std::fs::create_dir(merged.join("bin")).unwrap();
    std::fs::write(merged.join("bin/only"), "only\n").unwrap();
    let t = c(&merged);
    // SAFETY: a C string.
    assert_eq!(unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) }, 0);
    let changes = CommitChanges {
        cmd: Some(vec!["/bin/only".into()]),
        env: vec!["A=2".into(), "B=3".into()],
        comment: Some("a test".into()),
        ..CommitChanges::default()
    };
    let got = store.commit(&up, "busybox", "committed", &changes).unwrap();
    assert_eq!(store.resolve("committed").unwrap(), got.manifest);
    assert_eq!(got.parsed.layers.len(), 2);
    let cd: Digest = got.parsed.config.digest.parse().unwrap();
    let cfg: serde_json::Value = serde_json::from_slice(&store.read_blob(&cd).unwrap()).unwrap();
    assert_eq!(cfg["config"]["Cmd"], serde_json::json!(["/bin/only"]));
    assert_eq!(cfg["config"]["Env"], serde_json::json!(["A=2", "B=3"]));
    assert_eq!(cfg["config"]["WorkingDir"], "/bin");
    assert_eq!(cfg["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
    assert_eq!(
        cfg["history"].as_array().unwrap().last().unwrap()["comment"],
        "a test"
    );
    // The image's root, layers applied: the container's view.
    let flat = d.path().join("flat");
    std::fs::create_dir(&flat).unwrap();
    let apply = UnpackOptions {
        whiteouts: Whiteouts::Apply,
        ..UnpackOptions::default()
    };
    for l in &got.parsed.layers {
        let f = std::fs::File::open(store.blob_path(&l.digest.parse().unwrap())).unwrap();
        unpack(f, &flat, &apply).unwrap();
    }
    let mut bin: Vec<String> = std::fs::read_dir(flat.join("bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    bin.sort();
    assert_eq!(bin, ["only"]);
    assert_eq!(std::fs::read_to_string(flat.join("new")).unwrap(), "new\n");
    // A missing base image: an error, no name.
    assert!(store
        .commit(&up, "nope", "x", &CommitChanges::default())
        .is_err());
    assert!(store.resolve("x").is_err());
}
