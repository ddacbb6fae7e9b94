//! The command line, and the [`VmConfig`] it describes.

use std::path::PathBuf;

use clap::Parser;
use virtkit_net::NetSpec;
use virtkit_vmm::seccomp::SeccompMode;
use virtkit_vmm::{
    ConsoleConfig, ConsoleMode, CpusConfig, DiskConfig, ImageType, MemoryConfig, NetConfig,
    PayloadConfig, VmConfig,
};

/// Boots a Linux kernel in a KVM virtual machine built from the virtkit crates.
///
/// Each `--disk` adds a virtio-blk device on virtio-mmio (`/dev/vda`, `/dev/vdb`, ... in the
/// guest); formats are never probed (raw unless `format=qcow2`), and a qcow2 image's backing
/// file is followed only with `backing=on`. Each `--net` creates the tap (attached to the
/// existing bridge `BR` when given) and adds a virtio-net device (`eth0`, `eth1`, ...).
///
/// With `--api-socket PATH` vm-runner also serves Cloud Hypervisor's REST API there
/// (`ch-remote --api-socket PATH info|pause|resume|reboot|power-button|shutdown|...`): with
/// `--kernel` the VM boots at once; without, it waits for `vm.create` and `vm.boot`, and
/// `vmm.shutdown` ends it.
///
/// `--restore source_url=file:///DIR` brings back a snapshot taken with `vm.snapshot`
/// (`ch-remote snapshot file:///DIR`) instead of booting: running at once without
/// `--api-socket`, paused until `vm.resume` with it (as Cloud Hypervisor), unless
/// `resume=on|off` says otherwise.
///
/// Exit status 0 when the guest powers off or reboots (or on `vmm.shutdown`); 1 with a
/// one-line reason on any VMM error; 2 on a usage error; 159 when a seccomp filter caught a
/// forbidden system call. `RUST_LOG` sets the log level;
/// `VM_RUNNER_STARTUP_STATS=1` prints the process CPU time right before the first KVM_RUN.
#[derive(Debug, Parser)]
#[command(name = "vm-runner")]
pub struct Args {
    /// Kernel image (vmlinux ELF or bzImage); required without --api-socket or --restore.
    #[arg(long, value_name = "PATH", conflicts_with = "restore")]
    pub kernel: Option<PathBuf>,
    /// Restore a snapshot: `source_url=file:///DIR[,resume=on|off]`.
    #[arg(long, value_name = "SPEC", value_parser = parse_restore)]
    pub restore: Option<RestoreSpec>,
    /// Serve the control API (Cloud Hypervisor's REST API) on this Unix socket.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// An initramfs.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// The kernel command line (virtio devices are added to it as needed).
    #[arg(long, value_name = "STR")]
    pub cmdline: Option<String>,
    /// vCPUs.
    #[arg(long, value_name = "N", default_value = "1", value_parser = at_least_one("--cpus"))]
    pub cpus: u32,
    /// Guest RAM in MiB.
    #[arg(long, value_name = "MiB", default_value = "128", value_parser = at_least_one("--memory"))]
    pub memory: u32,
    /// Where COM1 goes: stdio, file:PATH or none.
    #[arg(long, value_name = "MODE", default_value = "stdio", value_parser = parse_serial)]
    pub serial: ConsoleConfig,
    /// Guest RAM backing: none, thp or hugetlbfs.
    #[arg(long, value_name = "KIND", default_value = "thp",
          value_parser = ["none", "thp", "hugetlbfs"])]
    pub huge_pages: String,
    /// A disk: `path=PATH[,format=raw|qcow2][,readonly=on][,backing=on]`; repeatable.
    #[arg(long, value_name = "SPEC", value_parser = parse_disk)]
    pub disk: Vec<DiskConfig>,
    /// A network interface: `tap=NAME[,mac=MAC][,bridge=BR][,mtu=N]`; repeatable.
    #[arg(long, value_name = "SPEC", value_parser = parse_net)]
    pub net: Vec<NetConfig>,
    /// Seccomp filters per thread (event loop, vCPUs, API): `on` (a forbidden system call
    /// ends vm-runner with status 159 and a line naming the call and the thread), `log`
    /// (allowed, logged by the kernel), `trap` (SIGSYS's default: a core dump), `off`.
    #[arg(long, value_name = "MODE", default_value = "on")]
    pub seccomp: SeccompMode,
    /// The jail (`--jail DIR` and its options).
    #[command(flatten)]
    pub jail: JailArgs,
}

/// `--jail`: vm-runner runs in a jail of its own (see virtkit-jail).
#[derive(Debug, Clone, clap::Args)]
pub struct JailArgs {
    /// Run jailed, with DIR as the root (created, or an empty directory): new mount, PID,
    /// IPC and UTS namespaces, only the kernel, initrd, disks, serial file, /dev/kvm and
    /// /dev/net/tun inside, a cgroup `virtkit-jail/ID`, and the `--jail-user` identity with
    /// no capabilities once the devices are open. `--api-socket` must then lie in DIR.
    #[arg(long, value_name = "DIR")]
    pub jail: Option<PathBuf>,
    /// The jail's id (cgroup name and hostname); default `vm-runner-PID`.
    #[arg(long, value_name = "ID", requires = "jail")]
    pub jail_id: Option<String>,
    /// The uid and gid the VMM drops to.
    #[arg(long, value_name = "UID:GID", default_value = "65534:65534", value_parser = parse_ids)]
    pub jail_user: (u32, u32),
    /// A new network namespace (only `lo` and the VM's taps; no bridge from the host).
    #[arg(long, requires = "jail")]
    pub jail_netns: bool,
    /// The jail's memory limit, in MiB (the guest's memory must fit, with room for the VMM).
    #[arg(long, value_name = "MiB", requires = "jail")]
    pub jail_memory: Option<u64>,
    /// The jail's CPU limit, in CPUs (fractions allowed).
    #[arg(long, value_name = "N", requires = "jail")]
    pub jail_cpus: Option<f64>,
    /// The jail's task limit.
    #[arg(long, value_name = "N", requires = "jail")]
    pub jail_pids: Option<u64>,
}

fn parse_ids(v: &str) -> Result<(u32, u32), String> {
    let (u, g) = v.split_once(':').unwrap_or((v, v));
    match (u.parse(), g.parse()) {
        (Ok(u), Ok(g)) => Ok((u, g)),
        _ => Err(format!("expected UID:GID (numbers), not {v:?}")),
    }
}

fn at_least_one(flag: &'static str) -> impl Fn(&str) -> Result<u32, String> + Clone {
    move |v| match v.parse::<u32>() {
        Ok(0) => Err(format!("{flag} must be at least 1")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{v:?} is not a number")),
    }
}

fn parse_serial(v: &str) -> Result<ConsoleConfig, String> {
    let (mode, file) = match v {
        "stdio" => (ConsoleMode::Tty, None),
        "none" => (ConsoleMode::Null, None),
        s => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => (ConsoleMode::File, Some(PathBuf::from(p))),
            _ => return Err(format!("expected stdio, file:PATH or none, not {v:?}")),
        },
    };
    Ok(ConsoleConfig { mode, file })
}

/// What `--restore` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSpec {
    /// The snapshot directory.
    pub dir: PathBuf,
    /// `resume=`: run at once (`None`: the default for the mode).
    pub resume: Option<bool>,
}

fn parse_restore(value: &str) -> Result<RestoreSpec, String> {
    let mut dir = None;
    let mut resume = None;
    for part in value.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("expected key=value, not {part:?}"))?;
        match k {
            "source_url" => match v.strip_prefix("file://") {
                Some(p) if p.starts_with('/') => dir = Some(PathBuf::from(p)),
                _ => {
                    return Err(format!(
                        "source_url must be file:///ABSOLUTE/DIR, not {v:?}"
                    ))
                }
            },
            "resume" => resume = Some(on_off(k, v)?),
            _ => return Err(format!("unknown key {k:?} (source_url, resume)")),
        }
    }
    let dir = dir.ok_or("source_url=file:///DIR is required")?;
    Ok(RestoreSpec { dir, resume })
}

fn on_off(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{key}= takes on or off, not {v:?}")),
    }
}

/// Parses the value of one `--disk`.
pub fn parse_disk(value: &str) -> Result<DiskConfig, String> {
    let mut d = DiskConfig::default();
    for part in value.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("expected key=value, not {part:?}"))?;
        match k {
            "path" if !v.is_empty() => d.path = Some(PathBuf::from(v)),
            "format" => {
                d.image_type = match v {
                    "raw" => ImageType::Raw,
                    "qcow2" => ImageType::Qcow2,
                    _ => return Err(format!("format must be raw or qcow2, not {v:?}")),
                }
            }
            "readonly" => d.readonly = on_off(k, v)?,
            "backing" => d.backing_files = on_off(k, v)?,
            _ => {
                return Err(format!(
                    "unknown key {k:?} (path, format, readonly, backing)"
                ))
            }
        }
    }
    if d.path.is_none() {
        return Err("path=PATH is required".into());
    }
    if d.backing_files && d.image_type != ImageType::Qcow2 {
        return Err("backing=on needs format=qcow2".into());
    }
    Ok(d)
}

fn parse_net(value: &str) -> Result<NetConfig, String> {
    let spec: NetSpec = value.parse().map_err(|e| format!("{e}"))?;
    Ok(NetConfig {
        tap: Some(spec.tap),
        mac: spec.mac.map(|m| m.to_string()),
        mtu: spec.mtu,
        bridge: spec.bridge,
        id: None,
    })
}

impl Args {
    /// The VM these flags describe (`None` without `--kernel`).
    pub fn vm_config(&self) -> Option<VmConfig> {
        let kernel = self.kernel.clone()?;
        Some(VmConfig {
            cpus: CpusConfig {
                boot_vcpus: self.cpus,
                max_vcpus: self.cpus,
            },
            memory: MemoryConfig {
                size: u64::from(self.memory) << 20,
                hugepages: self.huge_pages == "hugetlbfs",
                thp: self.huge_pages == "thp",
            },
            payload: PayloadConfig {
                kernel: Some(kernel),
                cmdline: self.cmdline.clone(),
                initramfs: self.initrd.clone(),
            },
            disks: (!self.disk.is_empty()).then(|| self.disk.clone()),
            net: (!self.net.is_empty()).then(|| self.net.clone()),
            serial: self.serial.clone(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use virtkit_memory::HugePages;

    fn p(a: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("vm-runner").chain(a.iter().copied()))
    }

    #[test]
    fn parses_everything() {
        let a = p(&[
            "--kernel",
            "k",
            "--initrd=i",
            "--cmdline",
            "x y",
            "--cpus",
            "2",
            "--memory",
            "512",
            "--serial",
            "file:/tmp/s",
            "--huge-pages",
            "none",
            "--disk",
            "path=/x.qcow2,format=qcow2,readonly=on,backing=on",
            "--net",
            "tap=t0,mtu=1400",
        ])
        .unwrap();
        let c = a.vm_config().unwrap();
        assert_eq!(c.payload.kernel, Some("k".into()));
        assert_eq!(c.payload.initramfs, Some("i".into()));
        assert_eq!(c.cmdline(), "x y");
        assert_eq!((c.cpus.boot_vcpus, c.memory.size), (2, 512 << 20));
        assert_eq!(c.serial.mode, ConsoleMode::File);
        assert_eq!(c.memory.huge_pages(), HugePages::None);
        let d = &c.disks()[0];
        assert!(d.readonly && d.backing_files && d.image_type == ImageType::Qcow2);
        assert_eq!(c.nets()[0].mtu, Some(1400));
        let d = p(&["--kernel", "k"]).unwrap().vm_config().unwrap();
        assert_eq!(d.cmdline(), virtkit_vmm::DEFAULT_CMDLINE);
        assert_eq!((d.cpus.boot_vcpus, d.memory.size), (1, 128 << 20));
        assert_eq!(d.serial.mode, ConsoleMode::Tty);
        assert_eq!(d.memory.huge_pages(), HugePages::Transparent);
        assert!(p(&[]).unwrap().vm_config().is_none());
        let r = p(&["--restore", "source_url=file:///snap,resume=off"]).unwrap();
        assert_eq!(
            r.restore,
            Some(RestoreSpec {
                dir: "/snap".into(),
                resume: Some(false)
            })
        );
        assert!(r.vm_config().is_none());
        let a = p(&["--api-socket", "/tmp/s"]).unwrap();
        assert_eq!(a.api_socket, Some("/tmp/s".into()));
        assert!(a.vm_config().is_none());
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            &["--kernel"][..],
            &["--kernel", "k", "--cpus", "0"],
            &["--kernel", "k", "--cpus", "-1"],
            &["--kernel", "k", "--memory", "0"],
            &["--kernel", "k", "--memory", "99999999999999"],
            &["--kernel", "k", "--serial", "tty"],
            &["--kernel", "k", "--bogus"],
            &["--kernel", "k", "--huge-pages", "1G"],
            &["--kernel", "k", "--disk", "format=raw"],
            &["--kernel", "k", "--disk", "path=a,backing=on"],
            &["--kernel", "k", "--disk", "path=a,junk"],
            &["--kernel", "k", "--net", "mac=1"],
            &["--restore", "source_url=/snap"],
            &["--restore", "source_url=file://snap"],
            &["--restore", "resume=on"],
            &["--restore", "source_url=file:///s,resume=maybe"],
            &["--kernel", "k", "--restore", "source_url=file:///s"],
        ] {
            assert!(p(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
