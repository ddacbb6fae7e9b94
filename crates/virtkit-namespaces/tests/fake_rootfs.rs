//! Unit tests of the rootfs and namespace logic against the recording fake (no root).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use virtkit_namespaces::fake::{Call, RecordingSyscalls};
use virtkit_namespaces::idmap::{format_map, write_id_maps, IdMapError, IdMapping};
use virtkit_namespaces::namespace::{self, NamespaceType};
use virtkit_namespaces::rootfs::{
    finalize_rootfs, mount_in_root, parse_mount_options, pivot, prepare_rootfs, propagation_flags,
    MountSpec, RootfsConfig, RootfsError,
};

fn spec(src: Option<&str>, dest: &str, t: &str, opts: &[&str]) -> MountSpec {
    MountSpec {
        source: src.map(PathBuf::from),
        destination: PathBuf::from(dest),
        fstype: Some(t.to_string()),
        options: opts.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn options_parse_like_runc() {
    let o = parse_mount_options(&[
        "rbind".into(),
        "ro".into(),
        "rw".into(),
        "nosuid".into(),
        "rprivate".into(),
        "size=65536k".into(),
        "mode=755".into(),
    ]);
    assert_eq!(o.flags, libc::MS_BIND | libc::MS_REC | libc::MS_NOSUID);
    assert_eq!(o.propagation, vec![libc::MS_PRIVATE | libc::MS_REC]);
    assert_eq!(o.data, "size=65536k,mode=755");
    assert!(propagation_flags("sideways").is_err());
}

#[test]
fn proc_mount_resolves_in_root() {
    let sys = RecordingSyscalls::new();
    mount_in_root(
        &sys,
        Path::new("/r"),
        &spec(Some("proc"), "/proc", "proc", &["nosuid", "noexec"]),
    )
    .unwrap();
    let calls = sys.calls();
    assert_eq!(
        calls[0],
        Call::Resolve(
            PathBuf::from("/r"),
            PathBuf::from("/proc"),
            virtkit_namespaces::syscalls::TargetKind::Dir
        )
    );
    assert_eq!(
        calls[1],
        Call::Mount {
            source: Some(PathBuf::from("proc")),
            target: PathBuf::from("/r/proc"),
            fstype: Some("proc".into()),
            flags: libc::MS_NOSUID | libc::MS_NOEXEC,
            data: None,
        }
    );
}

#[test]
fn recursive_options_become_mount_setattr_bits() {
    use virtkit_namespaces::syscalls::mount_attr as a;
    let o = parse_mount_options(&[
        "rbind".into(),
        "rnosuid".into(),
        "rnodev".into(),
        "rnoexec".into(),
        "rnoatime".into(),
        "rnosymfollow".into(),
    ]);
    assert_eq!(
        o.rec_attr_set,
        a::NOSUID | a::NODEV | a::NOEXEC | a::NOATIME | a::NOSYMFOLLOW
    );
    assert_eq!(o.rec_attr_clr, a::ATIME_MASK);
    assert_eq!(o.data, "", "recursive options are not filesystem data");
    // A later option undoes an earlier one.
    let o = parse_mount_options(&["rnoexec".into(), "rexec".into(), "rrw".into()]);
    assert_eq!(o.rec_attr_set, 0);
    assert_eq!(o.rec_attr_clr, a::NOEXEC | a::RDONLY);
    let o = parse_mount_options(&["rnoatime".into(), "rstrictatime".into()]);
    assert_eq!(
        (o.rec_attr_set, o.rec_attr_clr),
        (a::STRICTATIME, a::ATIME_MASK)
    );

    let sys = RecordingSyscalls::new();
    mount_in_root(
        &sys,
        Path::new("/r"),
        &spec(
            Some("/src"),
            "/data",
            "bind",
            &["rbind", "rnoexec", "rsuid"],
        ),
    )
    .unwrap();
    let set_attr = sys
        .calls()
        .into_iter()
        .find(|c| matches!(c, Call::SetMountAttrs(..)))
        .expect("mount_setattr after the bind");
    assert_eq!(
        set_attr,
        Call::SetMountAttrs(PathBuf::from("/r/data"), a::NOEXEC, a::NOSUID, true)
    );
}

#[test]
fn tmpcopyup_mounts_then_copies_what_was_under_the_tmpfs() {
    let o = parse_mount_options(&["tmpcopyup".into(), "mode=755".into()]);
    assert!(o.copy_up);
    assert_eq!(o.data, "mode=755", "tmpcopyup is not filesystem data");
    let sys = RecordingSyscalls::new();
    mount_in_root(
        &sys,
        Path::new("/r"),
        &spec(Some("tmpfs"), "/etc", "tmpfs", &["tmpcopyup", "nosuid"]),
    )
    .unwrap();
    let calls = sys.calls();
    let mount = calls
        .iter()
        .position(|c| matches!(c, Call::Mount { .. }))
        .unwrap();
    let copy = calls
        .iter()
        .position(|c| *c == Call::CopyTree(PathBuf::from("/r/etc"), PathBuf::from("/r/etc")))
        .expect("a copy after the mount");
    assert!(mount < copy, "{calls:?}");
    // Refused, not ignored, where it means nothing.
    for (t, opts) in [
        ("bind", &["rbind", "tmpcopyup"][..]),
        ("proc", &["tmpcopyup"][..]),
    ] {
        let sys = RecordingSyscalls::new();
        let e = mount_in_root(&sys, Path::new("/r"), &spec(Some("/x"), "/x", t, opts)).unwrap_err();
        assert!(matches!(e, RootfsError::CopyUpNotTmpfs { .. }), "{e}");
        assert!(sys.mounts().is_empty());
    }
    // A failed copy fails the mount.
    let sys = RecordingSyscalls::new();
    sys.fail_on("copy_tree", libc::ENOSPC);
    assert!(mount_in_root(
        &sys,
        Path::new("/r"),
        &spec(Some("tmpfs"), "/etc", "tmpfs", &["tmpcopyup"])
    )
    .is_err());
}

#[test]
fn proc_and_sys_over_a_symlink_or_a_file_are_refused_as_runc_does() {
    for (fstype, dest) in [("proc", "/proc"), ("sysfs", "/sys")] {
        let sys = RecordingSyscalls::new();
        sys.add_symlink(format!("/r{dest}"));
        let e = mount_in_root(&sys, Path::new("/r"), &spec(None, dest, fstype, &[])).unwrap_err();
        assert!(
            matches!(
                e,
                RootfsError::NotADirectory {
                    what: "symbolic link",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("ordinary directory"), "{e}");
        assert!(
            sys.mounts().is_empty(),
            "nothing mounted: {:?}",
            sys.calls()
        );
        let sys = RecordingSyscalls::new();
        sys.add_path(format!("/r{dest}"), false);
        let e = mount_in_root(&sys, Path::new("/r"), &spec(None, dest, fstype, &[])).unwrap_err();
        assert!(
            matches!(e, RootfsError::NotADirectory { what: "file", .. }),
            "{e}"
        );
        // A directory, or nothing yet (created as one), is fine.
        let sys = RecordingSyscalls::new();
        sys.add_path(format!("/r{dest}"), true);
        mount_in_root(&sys, Path::new("/r"), &spec(None, dest, fstype, &[])).unwrap();
        mount_in_root(
            &RecordingSyscalls::new(),
            Path::new("/r"),
            &spec(None, dest, fstype, &[]),
        )
        .unwrap();
    }
    // Only procfs and sysfs are checked (a tmpfs may go over a symlink's target, as in
    // runc).
    let sys = RecordingSyscalls::new();
    sys.add_symlink("/r/run");
    mount_in_root(&sys, Path::new("/r"), &spec(None, "/run", "tmpfs", &[])).unwrap();
}

#[test]
fn readonly_bind_is_bind_then_remount() {
    let sys = RecordingSyscalls::new();
    sys.add_path("/etc/hosts", false);
    mount_in_root(
        &sys,
        Path::new("/r"),
        &spec(
            Some("/etc/hosts"),
            "/etc/hosts",
            "bind",
            &["bind", "ro", "nosuid"],
        ),
    )
    .unwrap();
    let calls = sys.calls();
    assert!(matches!(
        &calls[0],
        Call::Resolve(_, _, virtkit_namespaces::syscalls::TargetKind::File)
    ));
    let m = sys.mounts();
    assert_eq!(m.len(), 2);
    assert!(matches!(&m[0], Call::Mount { flags, .. } if *flags == libc::MS_BIND));
    assert!(matches!(&m[1], Call::Mount { flags, source: None, .. }
        if *flags == libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID));
}

#[test]
fn relative_destination_is_rejected() {
    let sys = RecordingSyscalls::new();
    let e = mount_in_root(&sys, Path::new("/r"), &spec(None, "proc", "proc", &[])).unwrap_err();
    assert!(matches!(e, RootfsError::RelativeDestination(_)));
    assert!(sys.calls().is_empty());
}

#[test]
fn prepare_sets_propagation_binds_root_and_creates_devices() {
    let sys = RecordingSyscalls::new();
    sys.add_path("/r", true);
    let mut cfg = RootfsConfig::new("/r");
    cfg.mounts = vec![spec(Some("tmpfs"), "/dev", "tmpfs", &["mode=755"])];
    prepare_rootfs(&sys, &cfg).unwrap();
    let m = sys.mounts();
    assert!(matches!(&m[0], Call::Mount { target, flags, .. }
        if target == Path::new("/") && *flags == libc::MS_SLAVE | libc::MS_REC));
    assert!(matches!(&m[1], Call::Mount { target, flags, .. }
        if target == Path::new("/r") && *flags == libc::MS_BIND | libc::MS_REC));
    let nodes: Vec<_> = sys
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Mknod(p, mode, dev) => Some((p, mode, dev)),
            _ => None,
        })
        .collect();
    let names: Vec<_> = nodes.iter().map(|n| n.0.display().to_string()).collect();
    assert_eq!(
        names,
        [
            "/r/dev/null",
            "/r/dev/zero",
            "/r/dev/full",
            "/r/dev/random",
            "/r/dev/urandom",
            "/r/dev/tty"
        ]
    );
    assert_eq!(nodes[0].1, libc::S_IFCHR | 0o666);
    assert_eq!(nodes[0].2, libc::makedev(1, 3));
    assert!(sys
        .calls()
        .contains(&Call::Symlink("pts/ptmx".into(), "/r/dev/ptmx".into())));
}

#[test]
fn missing_rootfs_is_an_error() {
    let sys = RecordingSyscalls::new();
    let e = prepare_rootfs(&sys, &RootfsConfig::new("/nope")).unwrap_err();
    assert!(matches!(e, RootfsError::NoRootfs(_)));
}

#[test]
fn pivot_detaches_old_root_from_inside_it() {
    let sys = RecordingSyscalls::new();
    pivot(&sys, &RootfsConfig::new("/r")).unwrap();
    let slave = |t: &str, flags| Call::Mount {
        source: None,
        target: t.into(),
        fstype: None,
        flags,
        data: None,
    };
    assert_eq!(
        sys.calls(),
        [
            Call::OpenDir("/".into()),
            Call::Chdir("/r".into()),
            Call::PivotRoot(".".into(), ".".into()),
            // Into the old root (stacked on the new one) before making it a slave: "."
            // looked up from the new root would name the new root.
            Call::Fchdir("/".into()),
            slave(".", libc::MS_SLAVE | libc::MS_REC),
            Call::Umount(".".into(), libc::MNT_DETACH),
            Call::Chdir("/".into()),
            // The configured propagation (default rslave), now on the new root.
            slave("/", libc::MS_SLAVE | libc::MS_REC),
        ]
    );
}

#[test]
fn private_propagation_is_not_applied_again_after_the_pivot() {
    let sys = RecordingSyscalls::new();
    let mut cfg = RootfsConfig::new("/r");
    cfg.propagation = libc::MS_PRIVATE | libc::MS_REC;
    pivot(&sys, &cfg).unwrap();
    assert_eq!(sys.calls().last(), Some(&Call::Chdir("/".into())));
}

#[test]
fn a_shared_mount_under_the_rootfs_is_made_private_before_the_bind() {
    // On a systemd host `/` is shared; with `rootfsPropagation: rshared` the copy in the
    // container's namespace stays a peer of the host's. The bind of the rootfs (and every
    // mount under it) would reach the host, and pivot_root would fail with EINVAL.
    let sys = RecordingSyscalls::new();
    sys.add_path("/var/lib/c/rootfs", true);
    sys.set_mountinfo(
        "22 1 8:1 / / rw shared:1 - ext4 /dev/sda1 rw\n\
         40 22 8:2 / /var/lib rw shared:5 - ext4 /dev/sda2 rw\n\
         41 22 0:5 / /proc rw shared:3 - proc proc rw\n",
    );
    let mut cfg = RootfsConfig::new("/var/lib/c/rootfs");
    cfg.propagation = libc::MS_SHARED | libc::MS_REC;
    cfg.devices.clear();
    cfg.dev_symlinks = false;
    prepare_rootfs(&sys, &cfg).unwrap();
    let m: Vec<(PathBuf, u64)> = sys
        .mounts()
        .into_iter()
        .filter_map(|c| match c {
            Call::Mount { target, flags, .. } => Some((target, flags)),
            _ => None,
        })
        .collect();
    assert_eq!(
        m,
        [
            ("/".into(), libc::MS_SHARED | libc::MS_REC),
            ("/var/lib".into(), libc::MS_PRIVATE),
            ("/var/lib/c/rootfs".into(), libc::MS_BIND | libc::MS_REC),
        ]
    );
    // Not shared: left alone (runc does the same).
    let sys = RecordingSyscalls::new();
    sys.add_path("/var/lib/c/rootfs", true);
    sys.set_mountinfo("22 1 8:1 / / rw master:1 - ext4 /dev/sda1 rw\n");
    prepare_rootfs(&sys, &cfg).unwrap();
    assert_eq!(sys.mounts().len(), 2, "{:?}", sys.mounts());
}

#[test]
fn pivot_failure_is_reported() {
    let sys = RecordingSyscalls::new();
    sys.fail_on("pivot_root", libc::EINVAL);
    let e = pivot(&sys, &RootfsConfig::new("/r")).unwrap_err();
    assert!(matches!(e, RootfsError::Pivot(_)));
    let src = std::error::Error::source(&e).unwrap().to_string();
    assert!(src.contains("pivot_root"), "{src}");
}

#[test]
fn no_pivot_moves_and_chroots() {
    let sys = RecordingSyscalls::new();
    let mut cfg = RootfsConfig::new("/r");
    cfg.no_pivot = true;
    pivot(&sys, &cfg).unwrap();
    assert!(sys.calls().contains(&Call::Chroot(".".into())));
    assert!(!sys.calls().iter().any(|c| matches!(c, Call::PivotRoot(..))));
}

#[test]
fn masked_and_readonly_paths() {
    let sys = RecordingSyscalls::new();
    sys.add_path("/proc/kcore", false);
    sys.add_path("/proc/acpi", true);
    sys.add_path("/proc/sys", true);
    let mut cfg = RootfsConfig::new("/r");
    cfg.masked_paths = vec![
        "/proc/kcore".into(),
        "/proc/acpi".into(),
        "/proc/missing".into(),
    ];
    cfg.readonly_paths = vec!["/proc/sys".into()];
    finalize_rootfs(&sys, &cfg).unwrap();
    let c = sys.calls();
    assert!(c.contains(&Call::MakeReadonly("/proc/sys".into(), true)));
    assert!(c.contains(&Call::Mount {
        source: Some("/dev/null".into()),
        target: "/proc/kcore".into(),
        fstype: None,
        flags: libc::MS_BIND,
        data: None
    }));
    assert!(c.contains(&Call::Mount {
        source: Some("tmpfs".into()),
        target: "/proc/acpi".into(),
        fstype: Some("tmpfs".into()),
        flags: libc::MS_RDONLY,
        data: None
    }));
    assert!(!c
        .iter()
        .any(|x| matches!(x, Call::Mount { target, .. } if target == Path::new("/proc/missing"))));
}

#[test]
fn unshare_combines_flags() {
    let sys = RecordingSyscalls::new();
    namespace::unshare(&sys, &[NamespaceType::Uts, NamespaceType::Net]).unwrap();
    assert_eq!(
        sys.calls(),
        vec![Call::Unshare(libc::CLONE_NEWUTS | libc::CLONE_NEWNET)]
    );
    assert!(NamespaceType::from_oci("bogus").is_err());
    assert_eq!(
        NamespaceType::from_oci("network").unwrap(),
        NamespaceType::Net
    );
}

#[test]
fn id_maps_written_in_order() {
    let sys = RecordingSyscalls::new();
    let m = [IdMapping {
        container_id: 0,
        host_id: 100000,
        size: 65536,
    }];
    write_id_maps(&sys, 42, &m, &m, true).unwrap();
    let c = sys.calls();
    assert_eq!(
        c[0],
        Call::Write("/proc/42/uid_map".into(), b"0 100000 65536\n".to_vec())
    );
    assert_eq!(
        c[1],
        Call::Write("/proc/42/setgroups".into(), b"deny".to_vec())
    );
    assert_eq!(
        c[2],
        Call::Write("/proc/42/gid_map".into(), b"0 100000 65536\n".to_vec())
    );
    let bad = [IdMapping {
        container_id: u32::MAX,
        host_id: 0,
        size: 2,
    }];
    assert!(matches!(format_map(&bad), Err(IdMapError::Invalid { .. })));
}
