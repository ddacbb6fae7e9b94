//! Booting the test guest inside a payload, several boots per lab run.
//!
//! A [`GuestBoot`] becomes a shell snippet ([`GuestBoot::shell`]) that a [`Payload`]
//! script runs; [`BootResult::parse`] then finds that boot's part of the output and
//! says whether the guest reached `/init`, what its check printed and how the VMM
//! ended. Batching boots into one lab run saves the lab's own boot each time.
//!
//! [`Payload`]: crate::Payload

use std::fmt::Write as _;

use crate::error::Result;
use crate::guest::{CHECK_EXIT_MARKER, GUEST_CMDLINE, INIT_MARKER};
use crate::Payload;

/// Which VMM boots the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    /// The project's `vm-runner`, carried as `./vm-runner` (see [`crate::static_binary`]).
    VmRunner,
    /// The peer: `qemu-system-x86_64 -M microvm -enable-kvm` (see [`crate::with_qemu_peer`]).
    QemuMicrovm,
}

/// One boot of the test guest.
#[derive(Debug, Clone)]
pub struct GuestBoot {
    /// A unique name for this boot (letters, digits, `-`, `_`).
    pub name: String,
    /// The VMM.
    pub vmm: Vmm,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// The kernel's path inside the payload (e.g. `./vmlinux`).
    pub kernel: String,
    /// The initramfs' path inside the payload, if any.
    pub initrd: Option<String>,
    /// The kernel command line.
    pub cmdline: String,
    /// More VMM arguments (disks, network devices...).
    pub extra_args: Vec<String>,
    /// Seconds before the VMM is killed (`timeout -s KILL`).
    pub timeout_s: u32,
}

impl GuestBoot {
    /// A boot of `kernel` and `initrd` with [`GUEST_CMDLINE`] and a 60 s limit.
    pub fn new(
        name: &str,
        vmm: Vmm,
        cpus: u32,
        memory_mib: u32,
        kernel: &str,
        initrd: &str,
    ) -> Self {
        GuestBoot {
            name: name.to_string(),
            vmm,
            cpus,
            memory_mib,
            kernel: kernel.to_string(),
            initrd: Some(initrd.to_string()),
            cmdline: GUEST_CMDLINE.to_string(),
            extra_args: Vec::new(),
            timeout_s: 60,
        }
    }

    /// The VMM's command line (without the time limit).
    pub fn command(&self) -> Vec<String> {
        let mut c: Vec<String> = Vec::new();
        let s = |x: &str| x.to_string();
        match self.vmm {
            Vmm::VmRunner => {
                c.extend([s("./vm-runner"), s("--kernel"), self.kernel.clone()]);
                if let Some(i) = &self.initrd {
                    c.extend([s("--initrd"), i.clone()]);
                }
                c.extend([s("--cmdline"), self.cmdline.clone()]);
                c.extend([
                    s("--cpus"),
                    self.cpus.to_string(),
                    s("--memory"),
                    self.memory_mib.to_string(),
                ]);
                c.extend([s("--serial"), s("stdio")]);
            }
            Vmm::QemuMicrovm => {
                c.extend(
                    [
                        "qemu-system-x86_64",
                        "-M",
                        "microvm",
                        "-enable-kvm",
                        "-cpu",
                        "host",
                    ]
                    .map(s),
                );
                c.extend([
                    s("-smp"),
                    self.cpus.to_string(),
                    s("-m"),
                    self.memory_mib.to_string(),
                ]);
                c.extend(
                    [
                        "-nodefaults",
                        "-no-user-config",
                        "-display",
                        "none",
                        "-serial",
                        "stdio",
                    ]
                    .map(s),
                );
                c.extend([s("-no-reboot"), s("-kernel"), self.kernel.clone()]);
                if let Some(i) = &self.initrd {
                    c.extend([s("-initrd"), i.clone()]);
                }
                c.extend([s("-append"), self.cmdline.clone()]);
            }
        }
        c.extend(self.extra_args.iter().cloned());
        c
    }

    /// A shell snippet that runs this boot between markers [`BootResult::parse`] finds,
    /// under `./lab-stamp` (see [`boot_payload`]), which times it from the exec to the
    /// guest's [`INIT_MARKER`] and to the VMM's exit, and enforces `timeout_s`.
    pub fn shell(&self) -> String {
        let mut cmd = String::new();
        for a in self.command() {
            let _ = write!(cmd, " {}", quote(&a));
        }
        format!(
            "echo 'BOOT-BEGIN {name}'\n\
             ./lab-stamp --timeout {t} --marker {INIT_MARKER} --{cmd}\n\
             echo 'BOOT-END {name}'\n",
            name = self.name,
            t = self.timeout_s,
        )
    }
}

/// A payload that runs `boots` one after the other: it carries the static `lab-stamp`
/// timer, and QEMU with its firmware when a boot uses it. Add the kernel, initramfs and
/// (for [`Vmm::VmRunner`]) `vm-runner` files the boots name, then [`crate::run`] it.
pub fn boot_payload(boots: &[GuestBoot]) -> Result<Payload> {
    let mut script = String::new();
    for b in boots {
        script.push_str(&b.shell());
    }
    let stamp = crate::static_binary("virtkit-lab", "lab-stamp")?;
    let mut payload = crate::with_kvm_hold(Payload::new(script).file(stamp, "lab-stamp"))?;
    if boots.iter().any(|b| b.vmm == Vmm::QemuMicrovm) {
        payload = crate::with_qemu_peer(payload)?;
    }
    Ok(payload)
}

/// Single-quotes a shell word when it needs it.
pub fn quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

/// What one boot did, parsed from the payload's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootResult {
    /// The VMM's exit status (137 when the time limit killed it; -1 when unknown).
    pub status: i32,
    /// Microseconds from the VMM's exec to the guest's [`INIT_MARKER`], if it came.
    pub marker_us: Option<u64>,
    /// Microseconds from the VMM's exec to its exit.
    pub total_us: u64,
    /// Everything printed between the markers (guest console and VMM messages).
    pub console: String,
    /// Whether the guest's `/init` printed [`INIT_MARKER`].
    pub reached_init: bool,
    /// The exit status of the guest's check script, when it got that far.
    pub check_status: Option<i32>,
    /// Whether the guest kernel printed `reboot: Power down`.
    pub powered_off: bool,
    /// Whether the VMM was stuck in the kernel: SIGKILL could not end it (a soft
    /// lockup; see [`crate::soak`]).
    pub stuck: bool,
}

impl BootResult {
    /// Finds boot `name` in a payload's output; `None` when it never started.
    pub fn parse(output: &str, name: &str) -> Option<BootResult> {
        let begin = format!("BOOT-BEGIN {name}\n");
        let start = output.find(&begin)? + begin.len();
        let rest = &output[start..];
        let console = match rest.find(&format!("BOOT-END {name}\n")) {
            Some(end) => &rest[..end],
            None => rest,
        };
        let stamp = console
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("BOOT-STAMP "));
        let field = |key: &str| -> Option<i64> {
            stamp?
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
        };
        let status = field("status").map(|v| v as i32).unwrap_or(-1);
        let marker_us = field("marker_us").and_then(|v| u64::try_from(v).ok());
        let total_us = field("total_us")
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0);
        let check_tag = format!("{CHECK_EXIT_MARKER}=");
        let check_status = console
            .lines()
            .rev()
            .find_map(|l| l.split_once(&check_tag).map(|(_, c)| c.trim()))
            .and_then(|c| c.parse().ok());
        Some(BootResult {
            status,
            marker_us,
            total_us,
            console: console.to_string(),
            reached_init: console.lines().any(|l| l.contains(INIT_MARKER)),
            check_status,
            powered_off: console.contains("reboot: Power down"),
            stuck: console.lines().any(|l| l == "BOOT-STUCK"),
        })
    }

    /// The value printed by the guest as `KEY=value` on a line of its own.
    pub fn value(&self, key: &str) -> Option<&str> {
        let tag = format!("{key}=");
        self.console
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix(tag.as_str()))
            .map(str::trim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_boot() {
        let out = "noise\nBOOT-BEGIN a\n[ 0.1] x\nVIRTKIT-INIT uptime=0.2\nCPUS=2\nVIRTKIT-CHECK-EXIT=0\n\
                   [ 0.3] reboot: Power down\nBOOT-STAMP status=0 marker_us=500 total_us=812\n\
                   BOOT-END a\nBOOT-BEGIN b\nhang\n";
        let a = BootResult::parse(out, "a").unwrap();
        assert!(a.reached_init && a.powered_off);
        assert_eq!(
            (a.status, a.marker_us, a.total_us, a.check_status),
            (0, Some(500), 812, Some(0))
        );
        assert_eq!(a.value("CPUS"), Some("2"));
        let b = BootResult::parse(out, "b").unwrap();
        assert!(!b.reached_init && !b.powered_off);
        assert_eq!((b.status, b.marker_us, b.check_status), (-1, None, None));
        assert!(BootResult::parse(out, "c").is_none());
        assert!(!a.stuck && !b.stuck);
        let out =
            "BOOT-BEGIN s\nBOOT-STUCK\nBOOT-STAMP status=-2 marker_us=-1 total_us=9\nBOOT-END s\n";
        let s = BootResult::parse(out, "s").unwrap();
        assert!(s.stuck && s.status == -2);
    }

    #[test]
    fn commands_carry_the_shape() {
        let b = GuestBoot::new("x", Vmm::VmRunner, 2, 512, "./vmlinux", "./initrd");
        let c = b.command().join(" ");
        assert!(c.starts_with("./vm-runner --kernel ./vmlinux --initrd ./initrd --cmdline"));
        assert!(c.contains("--cpus 2 --memory 512"));
        let q = GuestBoot::new("y", Vmm::QemuMicrovm, 1, 128, "./vmlinux", "./initrd")
            .command()
            .join(" ");
        assert!(q.contains("-M microvm -enable-kvm") && q.contains("-smp 1 -m 128"));
        assert!(b.shell().contains("'console=ttyS0 panic=-1 quiet'"));
    }
}
