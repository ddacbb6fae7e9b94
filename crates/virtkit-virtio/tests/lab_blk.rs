//! Lab tier: virtio-blk end to end. vm-runner boots the real test guest with
//! disks made on the host (ext4 from mkfs.ext4, qcow2 from qemu-img); the guest
//! mounts them, reads a known file, writes a new one and powers off; then,
//! inside the same lab run, qemu-img check, e2fsck and debugfs inspect what the
//! guest left behind. All boots share one lab run. Opt out with
//! `VIRTKIT_SKIP_LAB=1` (CI does not set it); see docs/testing.md.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use virtkit_lab::{
    boot_payload, guest_kernel, initramfs, run, static_binary, BootResult, GuestBoot, LabError,
    LabOutput, Vmm, GUEST_CMDLINE,
};

/// The guest's check, chosen per boot by `virtkit_mode=` on the kernel command line.
const CHECK: &str = r#"
mode=$(sed -n 's/.*virtkit_mode=\([a-z]*\).*/\1/p' /proc/cmdline)
echo "MODE=$mode"
case "$mode" in
rw)
  mount -t ext4 /dev/vda /mnt || exit 10
  echo "HELLO=$(cat /mnt/hello.txt)"
  echo "written-by-guest-$mode" > /mnt/guest.txt || exit 11
  sync
  umount /mnt || exit 12
  ;;
ro)
  echo "RO-SYSFS=$(cat /sys/block/vda/ro)"
  if dd if=/dev/zero of=/dev/vda bs=4096 count=1 conv=fsync 2>/dev/null; then
    echo "RO-WRITE=succeeded"
  else
    echo "RO-WRITE=failed"
  fi
  mount -t ext4 -o ro /dev/vda /mnt || exit 13
  echo "HELLO=$(cat /mnt/hello.txt)"
  umount /mnt
  ;;
*) exit 20 ;;
esac
"#;

const HELLO: &str = "hello-from-the-host";

fn sh(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 64 MiB ext4 filesystem holding hello.txt, as raw and as qcow2.
fn make_images(dir: &Path) {
    let staging = dir.join("staging");
    std::fs::create_dir(&staging).unwrap();
    std::fs::write(staging.join("hello.txt"), format!("{HELLO}\n")).unwrap();
    let raw = dir.join("fs.raw");
    sh(Command::new("truncate").arg("-s").arg("64M").arg(&raw));
    sh(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&staging)
        .arg(&raw));
    for name in ["rw.qcow2", "ro.qcow2", "base.qcow2"] {
        sh(Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(dir.join(name)));
    }
    sh(Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
        ])
        .arg(dir.join("overlay.qcow2"))
        .current_dir(dir));
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

struct Batch {
    run: Result<LabOutput, String>,
    lab_failure: bool,
    base_sha: String,
}

fn boot(name: &str, mode: &str, disk: &str) -> GuestBoot {
    let mut b = GuestBoot::new(name, Vmm::VmRunner, 1, 128, "./vmlinux", "./initrd");
    b.cmdline = format!("{GUEST_CMDLINE} virtkit_mode={mode}");
    b.extra_args = vec!["--disk".into(), disk.into()];
    b.timeout_s = 120;
    b
}

fn batch() -> &'static Batch {
    static BATCH: OnceLock<Batch> = OnceLock::new();
    BATCH.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        make_images(dir.path());
        let base_sha = sha256(&dir.path().join("base.qcow2"));
        let kernel = guest_kernel().expect("building the guest kernel (cargo xtask guest)");
        let initrd = initramfs(CHECK, &[]).expect("packing the guest initramfs");
        let vm_runner = static_binary("vm-runner", "vm-runner").expect("static vm-runner");
        let boots = [
            boot("blk-rw", "rw", "path=rw.qcow2,format=qcow2"),
            boot("blk-ro", "ro", "path=ro.qcow2,format=qcow2,readonly=on"),
            boot(
                "blk-overlay",
                "rw",
                "path=overlay.qcow2,format=qcow2,backing=on",
            ),
        ];
        // After the boots: inspect the images inside the lab, where they are.
        let inspect = r#"
echo "BLK-INSPECT-BEGIN"
/usr/bin/qemu-img check -q rw.qcow2; echo "CHECK-RW=$?"
/usr/bin/qemu-img check -q ro.qcow2; echo "CHECK-RO=$?"
/usr/bin/qemu-img check -q overlay.qcow2; echo "CHECK-OVERLAY=$?"
echo "BASE-SHA=$(sha256sum base.qcow2 | cut -d' ' -f1)"
/usr/bin/qemu-img convert -O raw rw.qcow2 rw.raw
/sbin/e2fsck -fn rw.raw >/dev/null 2>&1; echo "FSCK-RW=$?"
echo "GUEST-FILE-RW=$(/sbin/debugfs -R 'cat /guest.txt' rw.raw 2>/dev/null)"
/usr/bin/qemu-img convert -O raw overlay.qcow2 overlay.raw
echo "GUEST-FILE-OVERLAY=$(/sbin/debugfs -R 'cat /guest.txt' overlay.raw 2>/dev/null)"
/usr/bin/qemu-img convert -O raw base.qcow2 base.raw
echo "GUEST-FILE-BASE=$(/sbin/debugfs -R 'cat /guest.txt' base.raw 2>/dev/null)"
echo "BLK-INSPECT-END"
"#;
        let mut payload = boot_payload(&boots)
            .expect("building the boot payload")
            .append_script(inspect)
            .file(&kernel.vmlinux, "vmlinux")
            .file(&initrd, "initrd")
            .file(&vm_runner, "vm-runner")
            .timeout(Duration::from_secs(900))
            .lab_memory_mib(2048);
        for img in ["rw.qcow2", "ro.qcow2", "base.qcow2", "overlay.qcow2"] {
            payload = payload.file(dir.path().join(img), img);
        }
        for prog in ["/usr/bin/qemu-img", "/sbin/e2fsck", "/sbin/debugfs"] {
            payload = payload.host_program(prog).expect("carrying a host program");
        }
        let result = run(&payload);
        let lab_failure = result.as_ref().err().is_some_and(LabError::is_lab_failure);
        Batch {
            run: result.map_err(|e| e.to_string()),
            lab_failure,
            base_sha,
        }
    })
}

fn output() -> &'static str {
    let b = batch();
    match &b.run {
        Ok(out) => {
            eprintln!("venue: {} (lab run took {:.1?})", out.venue, out.elapsed);
            &out.output
        }
        Err(e) if b.lab_failure => panic!("LAB FAILURE (not a guest failure): {e}"),
        Err(e) => panic!("could not run the boots: {e}"),
    }
}

/// `KEY=value` printed by the inspection step.
fn inspected(key: &str) -> String {
    let out = output();
    let start = out
        .find("BLK-INSPECT-BEGIN")
        .expect("the inspection never ran");
    let tag = format!("{key}=");
    out[start..]
        .lines()
        .find_map(|l| l.trim().strip_prefix(tag.as_str()))
        .unwrap_or_else(|| panic!("{key} not printed:\n{}", &out[start..]))
        .trim()
        .to_string()
}

fn boot_result(name: &str) -> BootResult {
    let r =
        BootResult::parse(output(), name).unwrap_or_else(|| panic!("boot {name} never started"));
    assert!(
        r.reached_init,
        "{name}: guest did not reach /init:\n{}",
        r.console
    );
    r
}

#[test]
#[cfg_attr(virtkit_skip_lab, ignore = "VIRTKIT_SKIP_LAB=1")]
fn lab_blk_guest_reads_and_writes_a_qcow2_ext4_disk() {
    let r = boot_result("blk-rw");
    assert_eq!(
        r.check_status,
        Some(0),
        "guest check failed:\n{}",
        r.console
    );
    assert_eq!(r.value("HELLO"), Some(HELLO), "{}", r.console);
    assert_eq!(r.status, 0, "vm-runner exit status:\n{}", r.console);
    assert_eq!(inspected("CHECK-RW"), "0", "qemu-img check must be clean");
    assert_eq!(inspected("FSCK-RW"), "0", "e2fsck must be clean");
    assert_eq!(inspected("GUEST-FILE-RW"), "written-by-guest-rw");
}

#[test]
#[cfg_attr(virtkit_skip_lab, ignore = "VIRTKIT_SKIP_LAB=1")]
fn lab_blk_readonly_disk_refuses_guest_writes() {
    let r = boot_result("blk-ro");
    assert_eq!(
        r.check_status,
        Some(0),
        "guest check failed:\n{}",
        r.console
    );
    assert_eq!(r.value("RO-SYSFS"), Some("1"), "{}", r.console);
    assert_eq!(r.value("RO-WRITE"), Some("failed"), "{}", r.console);
    assert_eq!(r.value("HELLO"), Some(HELLO), "{}", r.console);
    assert_eq!(inspected("CHECK-RO"), "0");
}

#[test]
#[cfg_attr(virtkit_skip_lab, ignore = "VIRTKIT_SKIP_LAB=1")]
fn lab_blk_overlay_writes_leave_the_base_untouched() {
    let r = boot_result("blk-overlay");
    assert_eq!(
        r.check_status,
        Some(0),
        "guest check failed:\n{}",
        r.console
    );
    assert_eq!(r.value("HELLO"), Some(HELLO), "{}", r.console);
    assert_eq!(inspected("CHECK-OVERLAY"), "0");
    assert_eq!(
        inspected("BASE-SHA"),
        batch().base_sha,
        "the base image changed"
    );
    assert_eq!(inspected("GUEST-FILE-OVERLAY"), "written-by-guest-rw");
    assert_eq!(
        inspected("GUEST-FILE-BASE"),
        "",
        "the guest's file reached the base"
    );
}
