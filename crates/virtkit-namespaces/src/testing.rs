//! Fuzzing entry point (features `test-utils` and `oci`).
//!
//! `fuzz/fuzz_targets/oci_config.rs` calls [`oci_spec()`], and the crate's
//! `tests/fuzz_corpus.rs` replays every committed corpus input through it, so
//! a config that once crashed stays covered on stable Rust.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDeviceType, LinuxIdMapping, Spec};

use crate::fake::{Call, RecordingSyscalls};
use crate::idmap::{format_map, write_id_maps, IdMapping};
use crate::namespace::{clone_flags, set_domainname, set_hostname, unshare, NamespaceType};
use crate::rootfs::{
    default_devices, parse_mount_options, propagation_flags, setup_rootfs, DeviceNode, MountSpec,
    RootfsConfig,
};

/// What [`oci_spec()`] did with a spec.
#[derive(Debug)]
pub struct OciRun {
    /// The combined `CLONE_NEW*` flags of the spec's namespaces.
    pub clone_flags: i32,
    /// Whether both id maps were accepted.
    pub id_maps_ok: bool,
    /// The rootfs setup's verdict on the fake (an error as text).
    pub rootfs: Result<(), String>,
    /// The calls the fake recorded.
    pub calls: Vec<Call>,
}

fn id_maps(v: &Option<Vec<LinuxIdMapping>>) -> Vec<IdMapping> {
    v.iter()
        .flatten()
        .map(|m| IdMapping {
            container_id: m.container_id(),
            host_id: m.host_id(),
            size: m.size(),
        })
        .collect()
}

/// An OCI spec's data through this crate, as a runtime builds a container from it:
/// namespace types and their clone flags (checked against the spec's own values), uid and
/// gid maps (formatted, then written for a process on a recording fake), hostname and
/// domain name, and the rootfs: propagation, every mount's options, device nodes
/// (default ones replaced by the config's), masked and read-only paths, then the whole
/// [`setup_rootfs`] on the fake, with the rootfs and every masked and read-only path
/// present (alternately as directories and files). It must never panic.
pub fn oci_spec(spec: &Spec) -> OciRun {
    let mut run = OciRun {
        clone_flags: 0,
        id_maps_ok: false,
        rootfs: Ok(()),
        calls: Vec::new(),
    };
    let sys = RecordingSyscalls::new();
    let linux = spec.linux().as_ref();
    let mut types = Vec::new();
    for ns in linux
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
    {
        let name = ns.typ().to_string();
        let t = NamespaceType::from_oci(&name)
            .unwrap_or_else(|e| panic!("OCI namespace {name:?} is refused: {e}"));
        assert_eq!(t.clone_flag(), ns.typ() as i32, "clone flag of {name}");
        types.push(t);
    }
    run.clone_flags = clone_flags(&types);
    let _ = unshare(&sys, &types);
    if let Some(l) = linux {
        let (uid, gid) = (id_maps(l.uid_mappings()), id_maps(l.gid_mappings()));
        for maps in [&uid, &gid] {
            if let Ok(text) = format_map(maps) {
                assert_eq!(text.lines().count(), maps.len(), "{text:?}");
            }
        }
        run.id_maps_ok = write_id_maps(&sys, 4242, &uid, &gid, true).is_ok();
    }
    if let Some(h) = spec.hostname() {
        let _ = set_hostname(&sys, h);
    }
    if let Some(d) = spec.domainname() {
        let _ = set_domainname(&sys, d);
    }
    let bundle = Path::new("/bundle");
    let rootfs = bundle.join(
        spec.root()
            .as_ref()
            .map_or_else(|| PathBuf::from("rootfs"), |r| r.path().clone()),
    );
    let mut cfg = RootfsConfig::new(&rootfs);
    sys.add_path(&rootfs, true);
    cfg.readonly_root = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    if let Some(p) = linux.and_then(|l| l.rootfs_propagation().as_ref()) {
        match propagation_flags(p) {
            Ok(f) => cfg.propagation = f,
            Err(e) => run.rootfs = Err(e.to_string()),
        }
    }
    for m in spec.mounts().iter().flatten() {
        let options = m.options().clone().unwrap_or_default();
        let o = parse_mount_options(&options);
        let is_bind = m.typ().as_deref() == Some("bind") || o.flags & libc::MS_BIND != 0;
        let source = m.source().as_ref().map(|s| {
            if is_bind && s.is_relative() {
                bundle.join(s)
            } else {
                s.clone()
            }
        });
        if let Some(s) = &source {
            // Sources alternately files and directories: both bind kinds.
            sys.add_path(s, cfg.mounts.len() % 2 == 0);
        }
        cfg.mounts.push(MountSpec {
            source,
            destination: m.destination().clone(),
            fstype: m.typ().clone(),
            options,
        });
    }
    let mut devs = default_devices();
    if let Some(l) = linux {
        for d in l.devices().iter().flatten() {
            let kind = match d.typ() {
                LinuxDeviceType::B => 'b',
                LinuxDeviceType::P => 'p',
                _ => 'c',
            };
            devs.retain(|x| x.path != *d.path());
            devs.push(DeviceNode {
                path: d.path().clone(),
                kind,
                major: u32::try_from(d.major()).unwrap_or(u32::MAX),
                minor: u32::try_from(d.minor()).unwrap_or(u32::MAX),
                mode: d.file_mode().unwrap_or(0o666),
            });
        }
        cfg.masked_paths = l
            .masked_paths()
            .iter()
            .flatten()
            .map(PathBuf::from)
            .collect();
        cfg.readonly_paths = l
            .readonly_paths()
            .iter()
            .flatten()
            .map(PathBuf::from)
            .collect();
    }
    cfg.devices = devs;
    for (i, p) in cfg
        .masked_paths
        .iter()
        .chain(&cfg.readonly_paths)
        .enumerate()
    {
        sys.add_path(p, i % 2 == 0);
    }
    if run.rootfs.is_ok() {
        run.rootfs = setup_rootfs(&sys, &cfg).map_err(|e| e.to_string());
        // Tried both ways: pivot_root and MS_MOVE + chroot, and bound host devices.
        cfg.no_pivot = true;
        cfg.bind_devices = true;
        let other = RecordingSyscalls::new();
        other.add_path(&rootfs, true);
        let _ = setup_rootfs(&other, &cfg);
    }
    run.calls = sys.calls();
    run
}
