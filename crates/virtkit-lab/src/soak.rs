//! Boot soak: boot the test guest with `vm-runner` many times in a row, in one lab
//! run, and catch a VMM that wedges a CPU of its host.
//!
//! Each boot runs under `lab-stamp`, the lab's boot timer, which never blocks on a
//! child stuck in the kernel: after the time limit it sends SIGKILL, and a process
//! that has still not ended 10 s later is **stuck in the kernel** (SIGKILL only acts
//! on the way back to user space); `lab-stamp` then reports `BOOT-STUCK` and leaves
//! it. The payload prints each vm-runner thread's state, kernel stack and wait
//! channel and the kernel log's tail, and stops: that CPU is lost to the lab. After every boot the kernel log is searched for `soft lockup` and RCU
//! stall reports, which a boot that eventually ended can leave too.
//! [`SoakReport::parse`] reads the result back.

use std::fmt::Write as _;
use std::time::Duration;

use crate::boot::{quote, GuestBoot};
use crate::error::Result;
use crate::guest::{CHECK_EXIT_MARKER, INIT_MARKER};
use crate::Payload;

/// What the kernel prints when a CPU did not schedule for too long.
pub const LOCKUP_PATTERNS: &[&str] = &[
    "soft lockup",
    "rcu_sched self-detected stall",
    "rcu: INFO: rcu_sched detected stalls",
    "hung_task",
];

/// The message a stuck boot fails with.
pub const STUCK_MESSAGE: &str = "vm-runner stuck in KVM_RUN: soft lockup reported by the host";

/// A soak of `boots` boots like `boot`; with `hold`, one idle VM is held open for the
/// whole run ([`crate::with_kvm_hold`]), as in every other lab payload that boots
/// guests (without it, the soak reproduces the lab's lockups).
pub fn soak_payload(boot: &GuestBoot, boots: u32, hold: bool) -> Result<Payload> {
    let mut cmd = String::new();
    for a in boot.command() {
        let _ = write!(cmd, " {}", quote(&a));
    }
    let pattern = LOCKUP_PATTERNS.join("\\|");
    // Per boot: lab-stamp runs vm-runner (polling in-process: no forks per poll, which
    // cost a second each under TCG) and reports BOOT-STUCK when SIGKILL cannot end it;
    // the shell reads its output with builtins; one `dmesg | grep` per boot.
    let script = format!(
        r#"lockups() {{ dmesg | grep -c '{pattern}'; }}
base=$(lockups)
i=1; ok=0; failed=0
while [ $i -le {boots} ]; do
  ./lab-stamp --timeout {timeout} --marker {INIT_MARKER} --{cmd} </dev/null >soak.out 2>&1
  rc=$?
  stuck=0; init=no; check=no; stamp=
  while IFS= read -r l; do
    case "$l" in
      BOOT-STUCK) stuck=1;;
      BOOT-STAMP*) stamp=$l;;
      {CHECK_EXIT_MARKER}=0*) check=yes;;
    esac
  done <soak.out
  case "$stamp" in *marker_us=-1*|"") ;; *) init=yes;; esac
  [ $stuck = 1 ] && rc=stuck
  now=$(lockups)
  echo "SOAK-BOOT i=$i rc=$rc init=$init check=$check lockups=$((now-base)) $stamp"
  if [ $stuck = 1 ] || [ $now != $base ] || [ $init = no ] || [ $check = no ] || [ $rc != 0 ]; then
    failed=$((failed+1))
    echo "SOAK-DETAIL-BEGIN $i"
    tail -n 60 soak.out
    for pid in $(pidof vm-runner qemu-system-x86_64); do
      for task in /proc/$pid/task/*; do
        [ -d "$task" ] || continue
        echo "thread $(basename $task) $(cat $task/comm) state=$(cut -d' ' -f3 $task/stat) wchan=$(cat $task/wchan)"
        cat $task/stack
      done
    done
    dmesg | tail -n 100
    echo "SOAK-DETAIL-END $i"
    base=$now
    [ $stuck = 1 ] && {{ echo "SOAK-STUCK $i"; break; }}
  else
    ok=$((ok+1))
  fi
  i=$((i+1))
done
echo "SOAK-SUMMARY boots={boots} ok=$ok failed=$failed"
[ $failed = 0 ]
"#,
        timeout = boot.timeout_s,
    );
    // The script prints one line per boot (the guests' consoles go to a file), so
    // echoing it shows the soak's progress.
    let stamp = crate::static_binary("virtkit-lab", "lab-stamp")?;
    let mut payload = Payload::new(script).file(stamp, "lab-stamp");
    if hold {
        payload = crate::with_kvm_hold(payload)?;
    }
    if boot.vmm == crate::Vmm::QemuMicrovm {
        payload = crate::with_qemu_peer(payload)?;
    }
    Ok(payload
        .echo(true)
        .timeout(Duration::from_secs(300 + u64::from(boots) * 30)))
}

/// One boot of a soak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoakBoot {
    /// 1-based boot number.
    pub index: u32,
    /// vm-runner's exit status, or `None` when it was stuck in the kernel.
    pub status: Option<i32>,
    /// Whether the guest reached `/init`.
    pub reached_init: bool,
    /// Whether the guest's check ran to its end and passed (its exit marker said 0):
    /// a guest that crashed after /init (a triple fault resets it, and vm-runner ends
    /// with status 0) fails here.
    pub checked: bool,
    /// New lockup or stall reports in the kernel log during this boot.
    pub lockups: u32,
}

impl SoakBoot {
    /// Whether this boot went as it should (exit 0, /init reached, the check passed,
    /// no reports).
    pub fn ok(&self) -> bool {
        self.status == Some(0) && self.reached_init && self.checked && self.lockups == 0
    }
}

/// What a soak found.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    /// Every boot that ran, in order.
    pub boots: Vec<SoakBoot>,
    /// The details printed for each failed boot (console tail, stacks, kernel log).
    pub details: Vec<String>,
}

impl SoakReport {
    /// Reads a soak payload's output.
    pub fn parse(output: &str) -> SoakReport {
        let mut r = SoakReport::default();
        let mut detail: Option<String> = None;
        for line in output.lines() {
            if let Some(d) = detail.as_mut() {
                if line.starts_with("SOAK-DETAIL-END") {
                    r.details.extend(detail.take());
                } else {
                    d.push_str(line);
                    d.push('\n');
                }
                continue;
            }
            if line.starts_with("SOAK-DETAIL-BEGIN") {
                detail = Some(format!("{line}\n"));
            } else if let Some(rest) = line.strip_prefix("SOAK-BOOT ") {
                if let Some(b) = parse_boot(rest) {
                    r.boots.push(b);
                }
            }
        }
        r.details.extend(detail);
        r
    }

    /// Boots that were stuck in the kernel or left a lockup report.
    pub fn lockups(&self) -> usize {
        self.boots
            .iter()
            .filter(|b| b.status.is_none() || b.lockups > 0)
            .count()
    }

    /// Boots that failed in any way.
    pub fn failures(&self) -> usize {
        self.boots.iter().filter(|b| !b.ok()).count()
    }
}

fn parse_boot(rest: &str) -> Option<SoakBoot> {
    let field = |k: &str| {
        rest.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
    };
    Some(SoakBoot {
        index: field("i")?.parse().ok()?,
        status: match field("rc")? {
            "stuck" => None,
            s => Some(s.parse().ok()?),
        },
        reached_init: field("init")? == "yes",
        checked: field("check") == Some("yes"),
        lockups: field("lockups")?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_boots_and_details() {
        let out = "noise\nSOAK-BOOT i=1 rc=0 init=yes check=yes lockups=0 BOOT-STAMP status=0\n\
                   SOAK-BOOT i=2 rc=stuck init=no check=no lockups=1\n\
                   SOAK-BOOT i=3 rc=0 init=yes check=no lockups=0 BOOT-STAMP status=0\n\
                   SOAK-DETAIL-BEGIN 2\nthread 356 vm-runner state=R\nwatchdog: BUG: soft lockup\n\
                   SOAK-DETAIL-END 2\nSOAK-STUCK 2\nSOAK-SUMMARY boots=3 ok=1 failed=1\n";
        let r = SoakReport::parse(out);
        assert_eq!(r.boots.len(), 3);
        assert!(r.boots[0].ok());
        assert_eq!(r.boots[1].status, None);
        assert!(
            !r.boots[2].ok(),
            "a guest that never finished its check failed"
        );
        assert_eq!(r.lockups(), 1);
        assert_eq!(r.failures(), 2);
        assert_eq!(r.details.len(), 1);
        assert!(r.details[0].contains("soft lockup"));
    }
}
