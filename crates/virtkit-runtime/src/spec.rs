//! Reading the bundle's `config.json` and turning its parts into what the lower
//! crates take: the rootfs set-up, id maps, namespace types, hook state.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use virtkit_namespaces::idmap::IdMapping;
use virtkit_namespaces::namespace::NamespaceType;
use virtkit_namespaces::rootfs::{
    default_devices, propagation_flags, DeviceNode, MountSpec, RootfsConfig,
};

use crate::error::{bail, Context, Result};
use crate::host::Host;
use crate::state::Container;

pub(crate) fn ns_type(t: LinuxNamespaceType) -> NamespaceType {
    match t {
        LinuxNamespaceType::Mount => NamespaceType::Mount,
        LinuxNamespaceType::Cgroup => NamespaceType::Cgroup,
        LinuxNamespaceType::Uts => NamespaceType::Uts,
        LinuxNamespaceType::Ipc => NamespaceType::Ipc,
        LinuxNamespaceType::User => NamespaceType::User,
        LinuxNamespaceType::Pid => NamespaceType::Pid,
        LinuxNamespaceType::Network => NamespaceType::Net,
        LinuxNamespaceType::Time => NamespaceType::Time,
    }
}

pub(crate) fn load_spec(bundle: &Path) -> Result<Spec> {
    let p = bundle.join("config.json");
    Spec::load(&p).with_context(|| format!("load {}", p.display()))
}

/// The state JSON handed to hooks.
pub(crate) fn hook_state(host: &dyn Host, c: &Container, status: &str) -> Vec<u8> {
    let mut v = c.oci_state(host);
    v["status"] = serde_json::Value::from(status);
    v["pid"] = serde_json::Value::from(c.saved.pid);
    serde_json::to_vec(&v).unwrap_or_default()
}

/// A `cgroup` mount on v1: a tmpfs with the container's own directory of each
/// hierarchy bound at `<dest>/<hierarchy>` (as runc does), never the host's whole tree.
pub(crate) fn cgroup_v1_mounts(
    dest: &Path,
    options: &[String],
    cg_path: &str,
    dirs: &[PathBuf],
) -> Vec<MountSpec> {
    let keep: Vec<String> = options
        .iter()
        .filter(|o| ["nosuid", "noexec", "nodev"].contains(&o.as_str()))
        .cloned()
        .collect();
    let mut out = vec![MountSpec {
        source: Some(PathBuf::from("tmpfs")),
        destination: dest.to_path_buf(),
        fstype: Some("tmpfs".into()),
        options: [keep.clone(), vec!["mode=755".into(), "size=64k".into()]].concat(),
    }];
    let depth = Path::new(cg_path).components().count();
    for d in dirs {
        let Some(name) = d.ancestors().nth(depth).and_then(|m| m.file_name()) else {
            continue;
        };
        let mut o = vec!["rbind".to_string()];
        o.extend(keep.iter().cloned());
        out.push(MountSpec {
            source: Some(d.clone()),
            destination: dest.join(name),
            fstype: Some("bind".into()),
            options: o,
        });
    }
    out
}

pub(crate) fn rootfs_config(
    spec: &Spec,
    bundle: &Path,
    rootfs: &Path,
    no_pivot: bool,
    userns: bool,
    cg: &dyn virtkit_cgroups::CgroupManager,
) -> Result<RootfsConfig> {
    let mut cfg = RootfsConfig::new(rootfs);
    cfg.no_pivot = no_pivot;
    cfg.bind_devices = userns;
    let linux = spec.linux().as_ref();
    if let Some(p) = linux.and_then(|l| l.rootfs_propagation().as_ref()) {
        if !p.is_empty() {
            cfg.propagation = propagation_flags(p)?;
        }
    }
    cfg.readonly_root = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    for m in spec.mounts().iter().flatten() {
        let src = m.source().as_ref().map(|s| {
            let is_bind = m.typ().as_deref() == Some("bind")
                || m.options()
                    .iter()
                    .flatten()
                    .any(|o| o == "bind" || o == "rbind");
            if is_bind && s.is_relative() {
                bundle.join(s)
            } else {
                s.clone()
            }
        });
        let options = m.options().clone().unwrap_or_default();
        let ty = m.typ().as_deref();
        if matches!(ty, Some("cgroup") | Some("cgroup2")) {
            let ro = options.iter().any(|o| o == "ro");
            if cg.version() == virtkit_cgroups::CgroupVersion::V1 {
                cfg.mounts.extend(cgroup_v1_mounts(
                    m.destination(),
                    &options,
                    cg.path(),
                    &cg.dirs(),
                ));
                if ro {
                    cfg.readonly_paths.push(m.destination().clone());
                }
            } else {
                // In the container's cgroup namespace cgroup2 shows its own subtree.
                cfg.mounts.push(MountSpec {
                    source: Some(PathBuf::from("cgroup")),
                    destination: m.destination().clone(),
                    fstype: Some("cgroup2".into()),
                    options,
                });
            }
            continue;
        }
        cfg.mounts.push(MountSpec {
            source: src,
            destination: m.destination().clone(),
            fstype: m.typ().clone(),
            options,
        });
    }
    let mut devs = default_devices();
    if let Some(l) = linux {
        for d in l.devices().iter().flatten() {
            let kind = match d.typ() {
                oci_spec::runtime::LinuxDeviceType::B => 'b',
                oci_spec::runtime::LinuxDeviceType::P => 'p',
                _ => 'c',
            };
            devs.retain(|x| x.path != *d.path());
            devs.push(DeviceNode {
                path: d.path().clone(),
                kind,
                major: d.major() as u32,
                minor: d.minor() as u32,
                mode: d.file_mode().unwrap_or(0o666),
            });
        }
        cfg.masked_paths = l
            .masked_paths()
            .iter()
            .flatten()
            .map(PathBuf::from)
            .collect();
        cfg.readonly_paths
            .extend(l.readonly_paths().iter().flatten().map(PathBuf::from));
    }
    cfg.devices = devs;
    Ok(cfg)
}

pub(crate) fn id_maps(v: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>) -> Vec<IdMapping> {
    v.iter()
        .flatten()
        .map(|m| IdMapping {
            container_id: m.container_id(),
            host_id: m.host_id(),
            size: m.size(),
        })
        .collect()
}

/// Whether `run` may guard against CVE-2019-5736 with the exec DMZ alone (see
/// `crate::dmz`): the container gets a new PID namespace (no process of it or of anyone
/// else can see init before its execve), no hook runs inside it while init is the
/// runtime (createContainer, startContainer), and no seccomp profile (whose rules would
/// apply to the DMZ's own execve as well).
pub(crate) fn dmz_suffices(spec: &Spec) -> bool {
    let Some(linux) = spec.linux() else {
        return false;
    };
    let inside_hooks = spec.hooks().as_ref().is_some_and(|h| {
        [h.create_container(), h.start_container()]
            .iter()
            .any(|x| x.as_ref().is_some_and(|x| !x.is_empty()))
    });
    new_pid_namespace(spec) && !inside_hooks && linux.seccomp().is_none()
}

/// Checks a config without a mount namespace (new or joined). Such a container makes no
/// mount at all: its root is a `chroot` into the rootfs, its `/dev` the rootfs's own
/// directory with the device nodes made there (as runc makes them). runc 1.1 makes the
/// config's mounts, its bind of the rootfs and `rootfsPropagation` (rslave by default) in
/// the caller's mount namespace, where they stay; nothing may reach the caller's mount
/// table here, so what would need a mount is refused, as is what runc ignores in this
/// mode (`root.readonly`). Masked and read-only paths get runc's own error.
pub(crate) fn check_without_mount_ns(spec: &Spec, userns: bool) -> Result<()> {
    let linux = spec.linux().as_ref();
    let set = |v: Option<&Vec<String>>| v.is_some_and(|v| !v.is_empty());
    if set(linux.and_then(|l| l.masked_paths().as_ref()))
        || set(linux.and_then(|l| l.readonly_paths().as_ref()))
    {
        bail!("unable to restrict sys entries without a private MNT namespace");
    }
    const ADD: &str = "add a \"mount\" namespace to linux.namespaces";
    if let Some(m) = spec.mounts().as_ref().and_then(|m| m.first()) {
        bail!(
            "mount {}: without a mount namespace of its own the container cannot mount \
             anything (runc would mount in the caller's mount namespace and leave it there); \
             {ADD} or remove the mounts",
            m.destination().display()
        );
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        bail!("root.readonly needs a mount namespace (runc ignores it without one); {ADD} or set it to false");
    }
    if let Some(p) = linux.and_then(|l| l.rootfs_propagation().as_ref()) {
        if !p.is_empty() {
            bail!("linux.rootfsPropagation {p:?} needs a mount namespace (runc would change the caller's /); {ADD}");
        }
    }
    if userns {
        bail!("a user namespace needs a mount namespace too (its device nodes are bind mounts; runc fails here); {ADD}");
    }
    Ok(())
}

/// Whether the container gets a PID namespace of its own (a new one, not a path).
pub(crate) fn new_pid_namespace(spec: &Spec) -> bool {
    spec.linux().as_ref().is_some_and(|l| {
        l.namespaces()
            .iter()
            .flatten()
            .any(|n| n.typ() == LinuxNamespaceType::Pid && n.path().is_none())
    })
}

/// `linux.timeOffsets` as the lines of `/proc/self/timens_offsets` (`monotonic` and
/// `boottime`, seconds and nanoseconds); an error for another clock or bad nanoseconds.
pub(crate) fn time_offsets(spec: &Spec) -> Result<Option<String>> {
    let Some(offsets) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.time_offsets().as_ref())
    else {
        return Ok(None);
    };
    let mut out = String::new();
    let mut clocks: Vec<_> = offsets.iter().collect();
    clocks.sort_by(|a, b| a.0.cmp(b.0));
    for (clock, off) in clocks {
        if clock != "monotonic" && clock != "boottime" {
            bail!("linux.timeOffsets: unknown clock {clock:?} (monotonic or boottime)");
        }
        let nanos = off.nanosecs().unwrap_or(0);
        if nanos >= 1_000_000_000 {
            bail!("linux.timeOffsets.{clock}.nanosecs {nanos}: must be below one second");
        }
        out.push_str(&format!("{clock} {} {nanos}\n", off.secs().unwrap_or(0)));
    }
    Ok((!out.is_empty()).then_some(out))
}

/// The index of the first of `mounts` that needs the container's cgroup: a bind of one
/// of its directories `dirs` (v1) or a cgroup2 mount; `mounts.len()` if none does.
pub(crate) fn first_cgroup_mount(mounts: &[MountSpec], dirs: &[PathBuf]) -> usize {
    mounts
        .iter()
        .position(|m| {
            matches!(m.fstype.as_deref(), Some("cgroup" | "cgroup2"))
                || m.source
                    .as_deref()
                    .is_some_and(|s| dirs.iter().any(|d| s.starts_with(d)))
        })
        .unwrap_or(mounts.len())
}

/// The example `config.json` of runc's `spec` command: the runtime-spec defaults, with a
/// terminal and a hostname.
pub fn example_spec() -> Spec {
    let mut spec = Spec::default();
    spec.set_hostname(Some("container-runner".into()));
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(true));
    }
    spec
}
