//! The benchmark groups: which script each runs with which arguments (full and
//! `--quick`), what it measures, and what it needs before it can run. A missing
//! prerequisite fails the group with a message saying what to do; it is never skipped.

use std::path::{Path, PathBuf};

/// How a group runs in one mode.
#[derive(Debug, Clone, Copy)]
pub struct Mode {
    pub args: &'static [&'static str],
    pub env: &'static [(&'static str, &'static str)],
    /// What the figures are, in this mode (for the report).
    pub measures: &'static str,
    /// The group is killed after this long.
    pub timeout_s: u64,
}

/// Something a group needs before its script can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Root,
    /// A program on PATH (or an absolute path).
    Program(&'static str),
    /// A usable `/dev/kvm` (opened read-write).
    Kvm,
    /// The test guest's kernel, built by `cargo xtask guest` (a script would otherwise
    /// spend minutes building it inside the measurement).
    GuestKernel,
    /// The static release vm-runner (as the lab uses), passed to the script as VM_RUNNER.
    StaticVmRunner,
}

/// A build a group's script needs, done before any group is measured (so that the
/// groups' times, and the machine's load during them, are not the compiler's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// `virtkit_lab::static_binary(package, bin)`: what the lab runs (target/static).
    Static(&'static str, &'static str),
    /// `cargo ARGS` with ENV, the same build the script starts itself.
    Cargo {
        args: &'static [&'static str],
        env: &'static [(&'static str, &'static str)],
    },
}

impl Build {
    pub fn describe(&self) -> String {
        match self {
            Build::Static(p, b) => format!("static {p}/{b}"),
            Build::Cargo { args, env } => {
                let mut parts: Vec<String> =
                    env.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
                parts.push("cargo".into());
                parts.extend(args.iter().map(|a| a.to_string()));
                parts.join(" ")
            }
        }
    }
}

/// The lab's own tools and the VMM it boots guests with.
const LAB_BUILDS: [Build; 3] = [
    Build::Static("virtkit-lab", "lab-stamp"),
    Build::Static("virtkit-lab", "lab-kvm-hold"),
    Build::Static("vm-runner", "vm-runner"),
];
const BENCH_PROGRAMS: Build = Build::Cargo {
    args: &[
        "build",
        "--release",
        "-p",
        "virtkit-benches",
        "--bin",
        "blk-vs-qemu",
        "--bin",
        "net-vs-qemu",
    ],
    env: &[],
};

/// One benchmark group.
#[derive(Debug, Clone, Copy)]
pub struct Group {
    pub name: &'static str,
    pub title: &'static str,
    /// Relative to the workspace root; run with bash.
    pub script: &'static str,
    pub full: Mode,
    pub quick: Mode,
    pub needs: &'static [Need],
    pub builds: &'static [Build],
}

impl Group {
    pub fn mode(&self, quick: bool) -> &Mode {
        if quick {
            &self.quick
        } else {
            &self.full
        }
    }

    /// The command line as a person would type it (env, script, args).
    pub fn command(&self, quick: bool) -> String {
        let m = self.mode(quick);
        let mut parts: Vec<String> = m.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.push(self.script.to_string());
        parts.extend(m.args.iter().map(|a| a.to_string()));
        parts.join(" ")
    }
}

const QEMU: Need = Need::Program("qemu-system-x86_64");

/// Every group, in the order they run.
pub const GROUPS: &[Group] = &[
    Group {
        name: "boot",
        title: "VM boot: exec to the guest's /init marker, vm-runner vs QEMU microvm (lab)",
        script: "benches/scripts/boot-vs-qemu.sh",
        full: Mode {
            args: &["--runs", "7"],
            env: &[],
            measures: "median of 7 boots each (1 vCPU, 128 MiB, vmlinux), interleaved, one warm-up each",
            timeout_s: 1800,
        },
        quick: Mode {
            args: &["--runs", "3"],
            env: &[],
            measures: "median of 3 boots each (1 vCPU, 128 MiB, vmlinux), interleaved, one warm-up each",
            timeout_s: 420,
        },
        needs: &[QEMU, Need::GuestKernel],
        builds: &LAB_BUILDS,
    },
    Group {
        name: "vmm-startup",
        title: "VMM start-up CPU time (host), vm-runner vs QEMU microvm",
        script: "benches/scripts/vmm-startup.sh",
        full: Mode {
            args: &["30"],
            env: &[],
            measures: "p50 of 30 starts each, guest vmlinux + initramfs, 1 vCPU, 128 MiB",
            timeout_s: 600,
        },
        quick: Mode {
            args: &["10"],
            env: &[],
            measures: "p50 of 10 starts each, guest vmlinux + initramfs, 1 vCPU, 128 MiB",
            timeout_s: 180,
        },
        needs: &[Need::Kvm, QEMU, Need::Program("python3"), Need::GuestKernel, Need::StaticVmRunner],
        builds: &[Build::Static("vm-runner", "vm-runner")],
    },
    Group {
        name: "vmm-memory",
        title: "VMM memory overhead (host), vm-runner vs QEMU microvm",
        script: "benches/scripts/vmm-memory.sh",
        full: Mode {
            args: &[],
            env: &[],
            measures: "RSS minus touched guest RAM after 2 s, 1 vCPU, 128 MiB, idle guest",
            timeout_s: 300,
        },
        quick: Mode {
            args: &[],
            env: &[],
            measures: "RSS minus touched guest RAM after 2 s, 1 vCPU, 128 MiB, idle guest",
            timeout_s: 120,
        },
        needs: &[Need::Kvm, QEMU, Need::Program("python3"), Need::StaticVmRunner],
        builds: &[Build::Static("vm-runner", "vm-runner")],
    },
    Group {
        name: "qcow2",
        title: "qcow2: virtkit-img vs qemu-img (host, O_DIRECT)",
        script: "benches/scripts/qcow2-vs-qemu-img.sh",
        full: Mode {
            args: &["1024"],
            env: &[],
            measures: "convert of 1 GiB (best of 3), 200 000 4 KiB reads on a 1 GiB image, 16 000 first-allocation writes",
            timeout_s: 1800,
        },
        quick: Mode {
            args: &["512"],
            env: &[
                ("IMAGE_MIB", "512"),
                ("READS", "100000"),
                ("ALLOC_WRITES", "8000"),
            ],
            measures: "convert of 512 MiB (best of 3), 100 000 4 KiB reads on a 512 MiB image, 8 000 first-allocation writes",
            timeout_s: 300,
        },
        needs: &[
            Need::Program("qemu-img"),
            Need::Program("qemu-io"),
            Need::Program("python3"),
            Need::Program("bc"),
        ],
        builds: &[Build::Cargo {
            args: &["build", "--release", "-p", "virtkit-img"],
            env: &[],
        }],
    },
    Group {
        name: "blk",
        title: "virtio-blk in the guest: vm-runner vs QEMU microvm (lab)",
        script: "benches/scripts/blk-vs-qemu.sh",
        full: Mode {
            args: &["--rounds", "2"],
            env: &[],
            measures: "median of 2 rounds: 256 MiB O_DIRECT sequential write and read, 5000 random 4 KiB reads; raw and qcow2",
            timeout_s: 3000,
        },
        quick: Mode {
            args: &["--rounds", "1", "--mib", "32", "--count", "500"],
            env: &[],
            measures: "1 round: 32 MiB O_DIRECT sequential write and read, 500 random 4 KiB reads; raw and qcow2",
            timeout_s: 480,
        },
        needs: &[QEMU, Need::Program("qemu-img"), Need::GuestKernel],
        builds: &[
            LAB_BUILDS[0],
            LAB_BUILDS[1],
            LAB_BUILDS[2],
            Build::Static("virtkit-benches", "blk-guest-io"),
            BENCH_PROGRAMS,
        ],
    },
    Group {
        name: "net",
        title: "virtio-net in the guest: iperf3 TCP, vm-runner vs QEMU virtio-net (tap, no vhost; lab)",
        script: "benches/scripts/net-vs-qemu.sh",
        full: Mode {
            args: &["--rounds", "5", "--seconds", "4"],
            env: &[],
            measures: "median of 5 rounds of 4 s each way, 1 vCPU, 256 MiB",
            timeout_s: 2400,
        },
        quick: Mode {
            args: &["--rounds", "1", "--seconds", "2"],
            env: &[],
            measures: "1 round of 2 s each way, 1 vCPU, 256 MiB",
            timeout_s: 420,
        },
        needs: &[QEMU, Need::Program("/usr/bin/iperf3"), Need::GuestKernel],
        builds: &[LAB_BUILDS[0], LAB_BUILDS[1], LAB_BUILDS[2], BENCH_PROGRAMS],
    },
    Group {
        name: "containers",
        title: "containers: `run` of busybox true, container-runner vs crun and runc (host)",
        script: "benches/scripts/container-bench.sh",
        full: Mode {
            args: &[],
            env: &[("N", "100"), ("WARMUP", "5")],
            measures: "100 runs each, interleaved, after 5 warm-up runs (static non-PIE build)",
            timeout_s: 1800,
        },
        quick: Mode {
            args: &[],
            env: &[("N", "30"), ("WARMUP", "3")],
            measures: "30 runs each, interleaved, after 3 warm-up runs (static non-PIE build)",
            timeout_s: 420,
        },
        needs: &[
            Need::Root,
            Need::Program("runc"),
            Need::Program("crun"),
            Need::Program("python3"),
            Need::Program("unshare"),
            Need::Program("/usr/bin/time"),
            Need::Program("/bin/busybox"),
        ],
        builds: &[Build::Cargo {
            args: &[
                "build",
                "--release",
                "-p",
                "container-runner",
                "--target",
                "x86_64-unknown-linux-gnu",
            ],
            env: &[
                (
                    "RUSTFLAGS",
                    "-C target-feature=+crt-static -C relocation-model=static",
                ),
                ("CARGO_TARGET_DIR", "target/runtime-static"),
            ],
        }],
    },
    Group {
        name: "workflow",
        title: "the virtkit CLI vs podman with a Debian apache2 image: pull + unpack, run -d -p to HTTP 200, run --rm true (host)",
        script: "benches/scripts/container-workflow-vs-podman.sh",
        full: Mode {
            args: &["7", "30"],
            env: &[],
            measures: "median of 7 rounds (pull into a cold store, run -d -p to the first HTTP 200) and of 30 runs (run --rm true), alternating",
            timeout_s: 1200,
        },
        quick: Mode {
            args: &["3", "10"],
            env: &[],
            measures: "median of 3 rounds (pull into a cold store, run -d -p to the first HTTP 200) and of 10 runs (run --rm true), alternating",
            timeout_s: 420,
        },
        needs: &[
            Need::Root,
            Need::Program("podman"),
            Need::Program("crun"),
            Need::Program("skopeo"),
            Need::Program("docker-registry"),
            Need::Program("debootstrap"),
        ],
        builds: &[
            Build::Static("virtkit", "virtkit"),
            Build::Static("container-runner", "container-runner"),
            Build::Cargo {
                args: &[
                    "build",
                    "--release",
                    "-p",
                    "virtkit-benches",
                    "--bin",
                    "container-workflow-vs-podman",
                ],
                env: &[],
            },
        ],
    },
];

/// The groups named (all when none is); an unknown name is an error listing the known ones.
pub fn select(names: &[String]) -> Result<Vec<&'static Group>, String> {
    if names.is_empty() {
        return Ok(GROUPS.iter().collect());
    }
    let mut out: Vec<&'static Group> = Vec::new();
    for n in names {
        let g = GROUPS
            .iter()
            .find(|g| g.name == n.as_str())
            .ok_or_else(|| {
                format!(
                    "unknown group `{n}`; groups: {}",
                    GROUPS.iter().map(|g| g.name).collect::<Vec<_>>().join(", ")
                )
            })?;
        if !out.iter().any(|o| o.name == g.name) {
            out.push(g);
        }
    }
    Ok(out)
}

fn on_path(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

fn is_root() -> bool {
    // /proc/self/status: "Uid:	real effective saved fs".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The built guest kernel's vmlinux, if any (`target/guest/kernel-*/{vmlinux,bzImage}`).
pub fn built_guest_kernel(root: &Path) -> Option<PathBuf> {
    let dir = root.join("target/guest");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("kernel-"))
                && p.join("vmlinux").is_file()
                && p.join("bzImage").is_file()
        })
        .collect();
    found.sort();
    found.pop().map(|p| p.join("vmlinux"))
}

/// Checks one prerequisite; `Err` says what is missing and how to get it.
pub fn check(need: Need, root: &Path) -> Result<(), String> {
    match need {
        Need::Root => {
            if is_root() {
                Ok(())
            } else {
                Err("not root (run `cargo xtask bench` as root, e.g. with sudo)".into())
            }
        }
        Need::Program(p) => {
            if on_path(p) {
                Ok(())
            } else {
                Err(format!(
                    "{p} not found (`cargo xtask test` installs the packages the benchmarks use)"
                ))
            }
        }
        Need::Kvm => std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map(|_| ())
            .map_err(|e| format!("/dev/kvm is not usable: {e}")),
        Need::GuestKernel => built_guest_kernel(root).map(|_| ()).ok_or_else(|| {
            "no guest kernel built under target/guest (run `cargo xtask guest` first; it takes minutes)".into()
        }),
        // Built (and checked) when the group starts.
        Need::StaticVmRunner => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_by_name_keeps_order_of_arguments_and_drops_repeats() {
        let names = ["net".to_string(), "boot".to_string(), "net".to_string()];
        let g = select(&names).expect("known groups");
        assert_eq!(
            g.iter().map(|g| g.name).collect::<Vec<_>>(),
            ["net", "boot"]
        );
        assert_eq!(select(&[]).expect("all").len(), GROUPS.len());
        let e = select(&["nope".to_string()]).expect_err("unknown");
        assert!(
            e.contains("unknown group `nope`") && e.contains("containers"),
            "{e}"
        );
    }

    #[test]
    fn every_group_has_its_script_and_a_quick_mode_that_is_smaller() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for g in GROUPS {
            assert!(root.join(g.script).is_file(), "{}: {}", g.name, g.script);
            assert!(g.quick.timeout_s <= g.full.timeout_s, "{}", g.name);
            assert!(
                g.quick.timeout_s <= 480,
                "{}: quick must stay quick",
                g.name
            );
        }
        assert_eq!(
            GROUPS[0].command(true),
            "benches/scripts/boot-vs-qemu.sh --runs 3"
        );
        let containers = GROUPS
            .iter()
            .find(|g| g.name == "containers")
            .expect("group");
        assert_eq!(
            containers.command(true),
            "N=30 WARMUP=3 benches/scripts/container-bench.sh"
        );
    }

    #[test]
    fn missing_prerequisites_say_what_to_do() {
        let root = Path::new("/nonexistent");
        let e = check(Need::GuestKernel, root).expect_err("no kernel there");
        assert!(e.contains("cargo xtask guest"), "{e}");
        let e = check(Need::Program("surely-not-a-program-xyz"), root).expect_err("missing");
        assert!(e.contains("surely-not-a-program-xyz not found"), "{e}");
        assert!(check(Need::Program("sh"), root).is_ok());
    }
}
