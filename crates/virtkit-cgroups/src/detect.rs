//! Finding the cgroup hierarchies: v1 ("legacy"), v2 ("unified") or hybrid.
//!
//! Detection reads `/proc/self/mountinfo`; every constructor that takes text or
//! a root directory exists so tests can point the crate at a fake tree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// How the cgroup filesystems are mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Only cgroup v1 hierarchies.
    Legacy,
    /// cgroup v1 controller hierarchies plus a cgroup2 mount (systemd's
    /// `/sys/fs/cgroup/unified`). Resource control uses v1.
    Hybrid,
    /// cgroup v2 with none of the managed controllers ([`V1_CONTROLLERS`])
    /// on a v1 hierarchy (a stray v1 `net_cls` mount may remain).
    Unified,
}

/// Which cgroup version resource control uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// cgroup v1: one hierarchy per controller (or group of controllers).
    V1,
    /// cgroup v2: one unified hierarchy.
    V2,
}

/// The v1 controllers this crate manages (and creates cgroups in).
pub const V1_CONTROLLERS: &[&str] = &[
    "cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "freezer", "devices",
];

/// The v2 controllers this crate enables in `cgroup.subtree_control` when
/// the parent offers them.
pub const V2_CONTROLLERS: &[&str] = &["cpuset", "cpu", "io", "memory", "pids"];

/// The mounted cgroup hierarchies, as found in mountinfo (or laid out by a test).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchies {
    layout: Layout,
    /// v1 controller name -> mount point. Co-mounted controllers
    /// ("cpu,cpuacct") map to the same directory.
    v1: BTreeMap<String, PathBuf>,
    /// The cgroup2 mount point, if any.
    unified: Option<PathBuf>,
}

impl Hierarchies {
    /// Detects the hierarchies of this process from `/proc/self/mountinfo`.
    pub fn detect() -> Result<Self> {
        let path = Path::new("/proc/self/mountinfo");
        let text = crate::fs::read(path)?;
        Self::from_mountinfo(&text)
    }

    /// Parses mountinfo text (the format of `/proc/<pid>/mountinfo`).
    pub fn from_mountinfo(text: &str) -> Result<Self> {
        let mut v1: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut unified = None;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let m =
                virtkit_namespaces::mountinfo::parse_line(line).ok_or_else(|| Error::Parse {
                    path: PathBuf::from("/proc/self/mountinfo"),
                    content: line.chars().take(200).collect(),
                    reason: format!("line {} is not a mountinfo line", i + 1),
                })?;
            match m.fstype.as_str() {
                "cgroup2" if unified.is_none() => unified = Some(m.mount_point),
                "cgroup" => {
                    for opt in m.super_options.split(',') {
                        if V1_CONTROLLERS.contains(&opt) || is_other_v1_controller(opt) {
                            v1.entry(opt.to_string())
                                .or_insert_with(|| m.mount_point.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        // Only the controllers this crate drives decide: a cgroup2 system with
        // a stray v1 net_cls mount (some container hosts) is unified.
        let managed_v1 = V1_CONTROLLERS.iter().any(|c| v1.contains_key(*c));
        let layout = match (!managed_v1, unified.is_some()) {
            (false, false) => Layout::Legacy,
            (false, true) => Layout::Hybrid,
            (true, true) => Layout::Unified,
            (true, false) => {
                return Err(Error::NoHierarchy(
                    "mountinfo has neither a cgroup2 mount nor a v1 mount of cpu, memory, \
                     pids or another managed controller"
                        .into(),
                ))
            }
        };
        Ok(Hierarchies {
            layout,
            v1,
            unified,
        })
    }

    /// A v1 layout rooted at `root`: each of [`V1_CONTROLLERS`] mounted at
    /// `root/<controller>` (as `/sys/fs/cgroup/<controller>`).
    pub fn v1_at(root: &Path) -> Self {
        Hierarchies {
            layout: Layout::Legacy,
            v1: V1_CONTROLLERS
                .iter()
                .map(|c| (c.to_string(), root.join(c)))
                .collect(),
            unified: None,
        }
    }

    /// A v2 layout: the unified hierarchy mounted at `root`.
    pub fn v2_at(root: &Path) -> Self {
        Hierarchies {
            layout: Layout::Unified,
            v1: BTreeMap::new(),
            unified: Some(root.to_path_buf()),
        }
    }

    /// The layout found.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The cgroup version used for resource control: v2 only when the layout
    /// is unified (a hybrid layout's cgroup2 mount has no controllers that
    /// matter here).
    pub fn version(&self) -> CgroupVersion {
        match self.layout {
            Layout::Unified => CgroupVersion::V2,
            Layout::Legacy | Layout::Hybrid => CgroupVersion::V1,
        }
    }

    /// The mount point of a v1 controller, if mounted.
    pub fn v1_mount(&self, controller: &str) -> Option<&Path> {
        self.v1.get(controller).map(PathBuf::as_path)
    }

    /// Every mounted v1 controller and its mount point.
    pub fn v1_mounts(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.v1.iter().map(|(k, v)| (k.as_str(), v.as_path()))
    }

    /// The cgroup2 mount point, if any (in a hybrid layout too).
    pub fn unified_mount(&self) -> Option<&Path> {
        self.unified.as_deref()
    }
}

fn is_other_v1_controller(opt: &str) -> bool {
    matches!(
        opt,
        "hugetlb" | "net_cls" | "net_prio" | "perf_event" | "rdma" | "misc"
    )
}

/// One line of `/proc/<pid>/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcCgroup {
    /// The hierarchy id (0 for the v2 hierarchy).
    pub hierarchy_id: u32,
    /// The controllers bound to the hierarchy (empty for v2; "name=systemd"
    /// appears as is).
    pub controllers: Vec<String>,
    /// The cgroup path, relative to the hierarchy's root (starts with '/').
    pub path: String,
}

impl ProcCgroup {
    /// Parses the content of `/proc/<pid>/cgroup`.
    pub fn parse(text: &str) -> Result<Vec<ProcCgroup>> {
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let err = || Error::Parse {
                path: PathBuf::from("/proc/self/cgroup"),
                content: line.chars().take(200).collect(),
                reason: "expected id:controllers:path".into(),
            };
            let mut it = line.splitn(3, ':');
            let id = it.next().ok_or_else(err)?;
            let ctl = it.next().ok_or_else(err)?;
            let path = it.next().ok_or_else(err)?;
            out.push(ProcCgroup {
                hierarchy_id: id.parse().map_err(|_| err())?,
                controllers: ctl
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path: path.to_string(),
            });
        }
        Ok(out)
    }

    /// The cgroups of the calling process, from `/proc/self/cgroup`.
    pub fn current() -> Result<Vec<ProcCgroup>> {
        Self::of_path(Path::new("/proc/self/cgroup"))
    }

    /// The cgroups of process `pid`, from `/proc/<pid>/cgroup`.
    pub fn of_pid(pid: i32) -> Result<Vec<ProcCgroup>> {
        Self::of_path(&PathBuf::from(format!("/proc/{pid}/cgroup")))
    }

    fn of_path(path: &Path) -> Result<Vec<ProcCgroup>> {
        let text = crate::fs::read(path)?;
        Self::parse(&text)
    }

    /// In a parsed list, the path of the v1 hierarchy holding `controller`, or
    /// of the v2 hierarchy when `controller` is `None`.
    pub fn find<'a>(list: &'a [ProcCgroup], controller: Option<&str>) -> Option<&'a str> {
        list.iter()
            .find(|c| match controller {
                None => c.hierarchy_id == 0 && c.controllers.is_empty(),
                Some(name) => c.controllers.iter().any(|x| x == name),
            })
            .map(|c| c.path.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_host_is_v1_for_resources() {
        let h = Hierarchies::from_mountinfo(HYBRID).unwrap();
        assert_eq!(h.layout(), Layout::Hybrid);
        assert_eq!(h.version(), CgroupVersion::V1);
        assert_eq!(
            h.v1_mount("memory"),
            Some(Path::new("/sys/fs/cgroup/memory"))
        );
        assert_eq!(h.unified_mount(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(h.v1_mount("name=systemd"), None);
        assert_eq!(h.v1_mounts().count(), 8);
    }

    #[test]
    fn unified_and_comounted_legacy() {
        let v2 = "25 20 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let h = Hierarchies::from_mountinfo(v2).unwrap();
        assert_eq!(h.layout(), Layout::Unified);
        assert_eq!(h.version(), CgroupVersion::V2);
        assert_eq!(h.unified_mount(), Some(Path::new("/sys/fs/cgroup")));

        let v1 =
            "30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw shared:10 - cgroup cgroup rw,cpu,cpuacct\n\
                  31 25 0:27 / /mnt/with\\040space rw - cgroup cgroup rw,memory\n";
        let h = Hierarchies::from_mountinfo(v1).unwrap();
        assert_eq!(h.layout(), Layout::Legacy);
        assert_eq!(h.v1_mount("cpu"), h.v1_mount("cpuacct"));
        assert_eq!(
            h.v1_mount("cpu"),
            Some(Path::new("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(h.v1_mount("memory"), Some(Path::new("/mnt/with space")));
    }

    #[test]
    fn stray_v1_mount_next_to_cgroup2_is_unified() {
        let text = "25 20 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n\
                    26 25 0:23 / /sys/fs/cgroup/net_cls rw - cgroup cgroup rw,net_cls,net_prio\n";
        let h = Hierarchies::from_mountinfo(text).unwrap();
        assert_eq!(h.layout(), Layout::Unified);
        assert_eq!(
            h.v1_mount("net_cls"),
            Some(Path::new("/sys/fs/cgroup/net_cls"))
        );
        // Only a named or an unmanaged v1 hierarchy, no cgroup2: nothing to drive.
        let text = "26 25 0:23 / /sys/fs/cgroup/net_cls rw - cgroup cgroup rw,net_cls\n";
        assert!(matches!(
            Hierarchies::from_mountinfo(text),
            Err(Error::NoHierarchy(_))
        ));
    }

    #[test]
    fn bad_mountinfo_is_an_error() {
        assert!(matches!(
            Hierarchies::from_mountinfo("garbage"),
            Err(Error::Parse { .. })
        ));
        assert!(matches!(
            Hierarchies::from_mountinfo("1 2 0:1 / / rw - ext4 /dev/vda rw\n"),
            Err(Error::NoHierarchy(_))
        ));
    }

    #[test]
    fn proc_cgroup() {
        let text = "4:memory:/process_api/e6\n2:cpu,cpuacct:/\n0::/user.slice\n";
        let l = ProcCgroup::parse(text).unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(
            ProcCgroup::find(&l, Some("memory")),
            Some("/process_api/e6")
        );
        assert_eq!(ProcCgroup::find(&l, Some("cpuacct")), Some("/"));
        assert_eq!(ProcCgroup::find(&l, None), Some("/user.slice"));
        assert!(ProcCgroup::parse("x:y").is_err());
        // The real file of this process parses.
        assert!(!ProcCgroup::current().unwrap().is_empty());
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the kernel (or a corrupted file) hands us: an error, never a panic.
        #[test]
        fn parsers_never_panic(text in "(?s).{0,400}") {
            let _ = Hierarchies::from_mountinfo(&text);
            let _ = ProcCgroup::parse(&text);
        }

        #[test]
        fn mountinfo_like_lines_never_panic(
            fields in proptest::collection::vec("[ -~]{0,12}", 0..12),
            fstype in prop_oneof![Just("cgroup"), Just("cgroup2"), Just("tmpfs")],
        ) {
            let line = format!("{} - {fstype} x rw,{}\n", fields.join(" "), fields.join(","));
            let _ = Hierarchies::from_mountinfo(&line);
        }
    }
}
