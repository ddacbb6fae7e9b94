//! vm-runner: boots a Linux kernel in a KVM virtual machine built from the virtkit crates.
//!
//! ```text
//! vm-runner --kernel PATH [--initrd PATH] [--cmdline STR] [--cpus N] [--memory MiB]
//!           [--serial stdio|file:PATH|none]
//!           [--disk path=PATH[,format=raw|qcow2][,readonly=on][,backing=on]]...
//!           [--net tap=NAME[,mac=MAC][,bridge=BR][,mtu=N]]...
//! ```
//!
//! Each `--disk` adds a virtio-blk device on virtio-mmio (`/dev/vda`, `/dev/vdb`, ... in
//! the guest). Formats are never probed (raw unless `format=qcow2`), and a qcow2 image's
//! backing file is followed only with `backing=on`. Each `--net` creates the tap (attached to
//! the existing bridge `BR` when given) and adds a virtio-net device (`eth0`, `eth1`, ...).
//!
//! `--huge-pages` picks the guest RAM backing (default `thp`).
//!
//! Exit status 0 when the guest powers off or reboots; 1 with a one-line reason on any VMM
//! error; 2 on a usage error. `RUST_LOG` sets the log level; `VM_RUNNER_STARTUP_STATS=1`
//! prints the process CPU time right before the first KVM_RUN.

mod devices;
mod disk;
mod net;
mod virtio;
mod vmm;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

/// The default kernel command line: serial console, `quiet` (every console byte is a vCPU exit,
/// so boot messages cost real time), reboot and panic through the i8042 reset, no PCI probing,
/// no i8042 AUX/MUX probing (the ACPI tables list no i8042, so Linux skips it). ACPI stays on:
/// poweroff needs it.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 quiet reboot=k panic=-1 pci=off \
     8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.dumbkbd";

/// Where COM1's output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialMode {
    /// Standard output (and input from standard input).
    Stdio,
    /// A file (no input).
    File(PathBuf),
    /// Nowhere.
    None,
}

/// Parsed options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// Command line (before device additions).
    pub cmdline: String,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Serial mode.
    pub serial: SerialMode,
    /// Huge pages for guest RAM.
    pub huge_pages: virtkit_memory::HugePages,
    /// virtio-blk disks, in guest order.
    pub disks: Vec<disk::DiskSpec>,
    /// virtio-net interfaces, in guest order.
    pub nets: Vec<virtkit_net::NetSpec>,
}

const USAGE: &str = "usage: vm-runner --kernel PATH [--initrd PATH] [--cmdline STR] [--cpus N] \
                     [--memory MiB] [--serial stdio|file:PATH|none] \
                     [--huge-pages none|thp|hugetlbfs] \
                     [--disk path=PATH[,format=raw|qcow2][,readonly=on][,backing=on]]... \
                     [--net tap=NAME[,mac=MAC][,bridge=BR][,mtu=N]]...";

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Options> {
    let mut kernel = None;
    let mut initrd = None;
    let mut cmdline = None;
    let mut cpus = 1u32;
    let mut memory_mib = 128u64;
    let mut serial = SerialMode::Stdio;
    let mut disks = Vec::new();
    let mut nets = Vec::new();
    // THP by default: loading the kernel then faults in a few huge pages instead of thousands of
    // small ones (start-up CPU time), and the guest gets huge pages where the host has them.
    let mut huge_pages = virtkit_memory::HugePages::Transparent;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if name == "--help" || name == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let mut value = || -> Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it.next().with_context(|| format!("{name} needs a value")),
            }
        };
        match name.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(value()?)),
            "--initrd" => initrd = Some(PathBuf::from(value()?)),
            "--cmdline" => cmdline = Some(value()?),
            "--cpus" => {
                let v = value()?;
                cpus = v
                    .parse()
                    .with_context(|| format!("--cpus: {v:?} is not a number"))?;
            }
            "--memory" => {
                let v = value()?;
                memory_mib = v
                    .parse()
                    .with_context(|| format!("--memory: {v:?} is not a number of MiB"))?;
            }
            "--serial" => {
                let v = value()?;
                serial = match v.as_str() {
                    "stdio" => SerialMode::Stdio,
                    "none" => SerialMode::None,
                    s => match s.strip_prefix("file:") {
                        Some(p) if !p.is_empty() => SerialMode::File(p.into()),
                        _ => bail!("--serial: expected stdio, file:PATH or none, not {v:?}"),
                    },
                };
            }
            "--huge-pages" => {
                let v = value()?;
                huge_pages = match v.as_str() {
                    "none" => virtkit_memory::HugePages::None,
                    "thp" => virtkit_memory::HugePages::Transparent,
                    "hugetlbfs" => virtkit_memory::HugePages::Hugetlbfs,
                    _ => bail!("--huge-pages: expected none, thp or hugetlbfs, not {v:?}"),
                };
            }
            "--disk" => disks.push(disk::parse_disk(&value()?)?),
            "--net" => nets.push(value()?.parse().context("--net")?),
            other => bail!("unknown argument {other:?}"),
        }
    }
    let Some(kernel) = kernel else {
        bail!("--kernel is required")
    };
    if cpus == 0 {
        bail!("--cpus must be at least 1");
    }
    if memory_mib == 0 {
        bail!("--memory must be at least 1 MiB");
    }
    Ok(Options {
        kernel,
        initrd,
        cmdline: cmdline.unwrap_or_else(|| DEFAULT_CMDLINE.to_string()),
        cpus,
        memory_mib,
        serial,
        huge_pages,
        disks,
        nets,
    })
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_micros()
        .init();
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("vm-runner: {e:#}\n{USAGE}");
            std::process::exit(2);
        }
    };
    match vmm::run(&opts) {
        Ok(end) => {
            eprintln!("vm-runner: {end}");
            std::process::exit(0);
        }
        Err(e) => {
            // One line: the whole context chain joined.
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("vm-runner: error: {msg}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn p(a: &[&str]) -> Result<Options> {
        parse_args(a.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_everything() {
        let o = p(&[
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
            "thp",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.kernel, PathBuf::from("k"));
        assert_eq!(o.initrd, Some(PathBuf::from("i")));
        assert_eq!(o.cmdline, "x y");
        assert_eq!((o.cpus, o.memory_mib), (2, 512));
        assert_eq!(o.serial, SerialMode::File("/tmp/s".into()));
        assert_eq!(o.huge_pages, virtkit_memory::HugePages::Transparent);
        let d = p(&["--kernel", "k"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.cmdline, DEFAULT_CMDLINE);
        assert_eq!(
            (d.cpus, d.memory_mib, d.serial),
            (1, 128, SerialMode::Stdio)
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert!(p(&[]).is_err());
        assert!(p(&["--kernel"]).is_err());
        assert!(p(&["--kernel", "k", "--cpus", "0"]).is_err());
        assert!(p(&["--kernel", "k", "--cpus", "-1"]).is_err());
        assert!(p(&["--kernel", "k", "--memory", "0"]).is_err());
        assert!(p(&["--kernel", "k", "--serial", "tty"]).is_err());
        assert!(p(&["--kernel", "k", "--bogus"]).is_err());
        assert!(p(&["--kernel", "k", "--huge-pages", "1G"]).is_err());
    }
}
