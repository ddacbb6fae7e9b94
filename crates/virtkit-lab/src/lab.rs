//! Running a payload where Linux guests can boot: in the lab, or on the host.
//!
//! The lab is a QEMU TCG VM (`-cpu EPYC,+svm`) running Debian's cloud kernel, unpacked
//! from its package (never installed), with `kvm-amd` loaded: its `/dev/kvm` boots real
//! Linux guests. Payload files are carried in on a second initramfs archive; anything
//! run there must be static or be carried with its loader and libraries
//! ([`Payload::host_program`]).

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cpio::CpioWriter;
use crate::error::{LabError, Result};
use crate::heartbeat::{heartbeat_silence, wait_lab, LabWait};
use crate::payload::{qemu_disk_args, Payload};
use crate::util;
use crate::venue::{detect_venue, Venue};

use crate::lab_kernel::lab_base;
pub use crate::lab_kernel::lab_kernel;

/// Kernel modules every lab loads (with their dependencies).
pub const LAB_MODULES: &[&str] = &["kvm-amd", "tun", "bridge", "veth", "overlay", "loop"];
/// Names a Unix socket path for the lab QEMU's human monitor (for inspecting a
/// wedged lab: `info registers -a`); the lab kernel then boots with `nokaslr`.
pub const LAB_MONITOR_ENV: &str = "VIRTKIT_LAB_MONITOR";
/// Environment variable: how QEMU's TCG runs the lab's CPUs, `multi` (a host thread per
/// lab CPU, the default) or `single` (one host thread for all of them; with 2 lab CPUs,
/// 2-vCPU guests then often hang before their init, under QEMU as under vm-runner).
pub const LAB_TCG_THREAD_ENV: &str = "VIRTKIT_LAB_TCG_THREAD";

/// The TCG threading the lab QEMU gets (`LAB_TCG_THREAD_ENV`).
fn lab_tcg_thread() -> Result<String> {
    match std::env::var(LAB_TCG_THREAD_ENV) {
        Err(_) => Ok("multi".into()),
        Ok(v) if v == "single" || v == "multi" => Ok(v),
        Ok(v) => Err(LabError::BadInput(format!(
            "{LAB_TCG_THREAD_ENV}={v}: expected single or multi"
        ))),
    }
}

/// Environment variable: the lab VM's CPU count for every payload (it overrides
/// [`Payload::lab_cpus`](crate::Payload::lab_cpus)), to compare lab set-ups.
pub const LAB_CPUS_ENV: &str = "VIRTKIT_LAB_CPUS";

/// The lab's CPU count: [`LAB_CPUS_ENV`] when set, else the payload's.
fn lab_cpu_count(payload_cpus: u32) -> Result<u32> {
    match std::env::var(LAB_CPUS_ENV) {
        Err(_) => Ok(payload_cpus),
        Ok(v) => match v.parse::<u32>() {
            Ok(n) if (1..=16).contains(&n) => Ok(n),
            _ => Err(LabError::BadInput(format!(
                "{LAB_CPUS_ENV}={v}: expected a CPU count from 1 to 16"
            ))),
        },
    }
}

/// Default vCPUs of the lab VM: one. With two (QEMU's TCG running a host thread per
/// lab CPU), 2-vCPU guests sometimes crashed the lab kernel or stalled (issue #20;
/// docs/testing.md, "Lockups in the lab"); with one, the same soak ran clean and
/// each boot took half the time.
pub const LAB_CPUS: u32 = 1;
/// Default memory of the lab VM in MiB.
pub const LAB_MEMORY_MIB: u32 = 3072;

const UP_MARKER: &str = "VIRTKIT-LAB-UP";
const EXIT_MARKER: &str = "VIRTKIT-LAB-EXIT=";

/// The loader and libraries of a dynamically linked program, from `ldd`.
/// The ELF loader and shared libraries `ldd` lists for `program` (empty for a static
/// Starts `lab-kvm-hold` (one idle KVM VM held open) before the payload's script, so
/// the VMs its boots create and destroy never flip the host kernel's KVM static keys
/// (see `src/bin/lab-kvm-hold.rs`: in the lab such a flip can wedge every CPU).
/// For payloads that boot guests with a VMM.
pub fn with_kvm_hold(payload: Payload) -> Result<Payload> {
    let hold = crate::static_binary("virtkit-lab", "lab-kvm-hold")?;
    Ok(payload
        .file(hold, "lab-kvm-hold")
        .prepend_script(KVM_HOLD_SCRIPT))
}

/// Starts the holder and waits (at most 30 s) until its VM exists.
const KVM_HOLD_SCRIPT: &str = "if [ -e /dev/kvm ]; then\n  ./lab-kvm-hold >kvm-hold.out 2>&1 &\n  n=0\n  while [ $n -lt 300 ] && ! grep -q ready kvm-hold.out 2>/dev/null; do usleep 100000; n=$((n+1)); done\n  grep -q ready kvm-hold.out || { echo 'lab-kvm-hold failed:'; cat kvm-hold.out; }\nfi\n";

/// program); a library `ldd` cannot find is an error.
pub fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .stdin(Stdio::null())
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            return Err(LabError::BadInput(format!(
                "ldd {}: {e}",
                program.display()
            )))
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let candidate = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = candidate.filter(|p| p.starts_with('/')) {
            if line.contains("not found") {
                return Err(LabError::BadInput(format!(
                    "{}: {}",
                    program.display(),
                    line.trim()
                )));
            }
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// A dynamically linked host program and its libraries as (host path, path inside a
/// guest initramfs) pairs, for [`crate::initramfs`]'s `extra_files`: each file keeps its
/// host path, so the program finds its loader and libraries in the guest.
pub fn program_with_libraries(program: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut files = vec![program.to_path_buf()];
    files.extend(shared_libraries(program)?);
    Ok(files
        .into_iter()
        .map(|f| {
            let inner = f.to_string_lossy().trim_start_matches('/').to_string();
            (f, inner)
        })
        .collect())
}

/// What a payload did.
#[derive(Debug, Clone)]
pub struct LabOutput {
    /// Where it ran.
    pub venue: Venue,
    /// The exit status of the payload's script.
    pub status: i32,
    /// What the script printed (stdout and stderr together).
    pub output: String,
    /// In the lab: the lab's whole console (kernel messages included); on the host: `output`.
    pub console: String,
    /// Wall time of the whole run (lab boot included).
    pub elapsed: Duration,
}

impl LabOutput {
    /// True when the script exited with status 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// Runs the payload where Linux guests boot ([`detect_venue`]); says which on stderr.
pub fn run(payload: &Payload) -> Result<LabOutput> {
    run_in(detect_venue()?, payload)
}

/// Runs the payload in the given venue (the lab, for tests that need what only the lab
/// has, such as real cgroup v2).
pub fn run_in(venue: Venue, payload: &Payload) -> Result<LabOutput> {
    payload.check()?;
    eprintln!("virtkit-lab: running payload in venue `{venue}`");
    match venue {
        Venue::Host => run_on_host(payload),
        Venue::Lab => {
            // The lab's own KVM (nested SVM on QEMU's TCG) sometimes wedges a vCPU thread
            // in the kernel (issue #20, docs/testing.md "Lockups in the lab"): a failure
            // of the lab machinery, not of the test, is retried (LAB_RETRIES times), loudly.
            let mut attempt = 0;
            loop {
                match run_in_lab(payload) {
                    Err(e) if e.is_lab_failure() && attempt < lab_retries() => {
                        attempt += 1;
                        eprintln!(
                            "virtkit-lab: LAB FAILURE (not a guest failure), retrying the payload ({attempt} of {}): {e}",
                            lab_retries()
                        );
                    }
                    other => return other,
                }
            }
        }
    }
}

/// How many times a payload whose lab failed (a timeout, a wedged lab VM) is run again:
/// `VIRTKIT_LAB_RETRIES`, default 1.
fn lab_retries() -> u32 {
    std::env::var("VIRTKIT_LAB_RETRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// Output collected from a child's pipes by reader threads.
#[derive(Clone, Default)]
struct Collected(Arc<Mutex<String>>);

impl Collected {
    fn spawn_reader(
        &self,
        pipe: impl Read + Send + 'static,
        echo: bool,
        filter: fn(&str) -> bool,
    ) -> std::thread::JoinHandle<()> {
        let sink = self.0.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            while let Ok(n) = reader.read_until(b'\n', &mut buf) {
                if n == 0 {
                    break;
                }
                let line = String::from_utf8_lossy(&buf).replace('\r', "");
                buf.clear();
                if !filter(&line) {
                    continue;
                }
                if echo {
                    eprint!("{line}");
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                }
            }
        })
    }

    fn text(&self) -> String {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

fn run_on_host(payload: &Payload) -> Result<LabOutput> {
    let start = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("virtkit-payload")
        .tempdir()
        .map_err(LabError::io("creating", "temp dir"))?;
    for (host, name) in payload.files.iter().chain(&payload.disk_files) {
        let dest = dir.path().join(name);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(LabError::io("creating", parent))?;
        }
        fs::copy(host, &dest).map_err(LabError::io("copying", host))?;
    }
    let script = dir.path().join("run.sh");
    fs::write(&script, &payload.script).map_err(LabError::io("writing", &script))?;
    let mut cmd = Command::new("sh");
    cmd.arg("./run.sh")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(LabError::io("running", "sh"))?;
    let out = Collected::default();
    let readers = [
        child
            .stdout
            .take()
            .map(|p| out.spawn_reader(p, payload.echo, |_| true)),
        child
            .stderr
            .take()
            .map(|p| out.spawn_reader(p, payload.echo, |_| true)),
    ];
    let waited = wait_lab(&mut child, payload.timeout, None)?;
    for r in readers.into_iter().flatten() {
        let _ = r.join();
    }
    let text = out.text();
    let LabWait::Exited(status) = waited else {
        return Err(LabError::Timeout {
            after: payload.timeout,
            venue: Venue::Host,
            output: text,
        });
    };
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Ok(LabOutput {
        venue: Venue::Host,
        status: code,
        output: text.clone(),
        console: text,
        elapsed: start.elapsed(),
    })
}

/// The payload's archive: /payload/* and the host files at their own paths.
fn payload_archive(payload: &Payload) -> Result<Vec<u8>> {
    let mut w = CpioWriter::new(Vec::new());
    let bad = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| LabError::BadInput(format!("{what}: {e}"))
    };
    w.file("payload/run.sh", 0o755, payload.script.as_bytes())
        .map_err(bad("run.sh"))?;
    for (host, name) in &payload.files {
        let data = fs::read(host).map_err(LabError::io("reading", host))?;
        let mode = fs::metadata(host)
            .map_err(LabError::io("reading", host))?
            .permissions()
            .mode();
        w.file(&format!("payload/{name}"), mode & 0o7777, &data)
            .map_err(bad(name))?;
    }
    for path in &payload.host_files {
        let name = path.to_string_lossy();
        if path.is_dir() {
            w.dir(&name, 0o755).map_err(bad(&name))?;
            continue;
        }
        let data = fs::read(path).map_err(LabError::io("reading", path))?;
        let mode = fs::metadata(path)
            .map_err(LabError::io("reading", path))?
            .permissions()
            .mode();
        w.file(&name, mode & 0o7777, &data).map_err(bad(&name))?;
    }
    w.finish().map_err(LabError::io("packing", "payload"))
}

fn qemu() -> Result<PathBuf> {
    if let Some(q) = util::which("qemu-system-x86_64") {
        return Ok(q);
    }
    if util::is_root() {
        util::ensure_packages(&["qemu-system-x86"])
            .map_err(|e| LabError::QemuMissing(e.to_string()))?;
    }
    util::which("qemu-system-x86_64").ok_or_else(|| LabError::QemuMissing("not on PATH".into()))
}

fn run_in_lab(payload: &Payload) -> Result<LabOutput> {
    let start = Instant::now();
    let qemu = qemu()?;
    let (vmlinuz, modules_dir) = lab_kernel()?;
    let tmp = tempfile::Builder::new()
        .prefix("virtkit-lab")
        .tempdir()
        .map_err(LabError::io("creating", "temp dir"))?;
    // Big files go on a disk of their own (Payload::disk_file), mounted by a prelude.
    let (payload, disk) = payload.with_lab_disk(tmp.path())?;
    let payload = &payload;
    let mut modules: Vec<String> = LAB_MODULES.iter().map(|m| m.to_string()).collect();
    modules.extend(payload.modules.iter().cloned());
    let base = lab_base(&modules_dir, &modules)?;
    // One initrd: the cached base archive followed by the payload's archive.
    let mut initrd_bytes = fs::read(&base).map_err(LabError::io("reading", &base))?;
    initrd_bytes.extend(payload_archive(payload)?);
    let initrd = tmp.path().join("initrd.cpio");
    fs::write(&initrd, &initrd_bytes).map_err(LabError::io("writing", &initrd))?;
    drop(initrd_bytes);
    let nonce = format!("{:08x}{:08x}", std::process::id(), rand_seed());
    let mut append = format!("console=ttyS0 quiet panic=-1 virtkit.nonce={nonce}");
    let monitor = std::env::var_os(LAB_MONITOR_ENV);
    if monitor.is_some() {
        // Fixed kernel addresses, so RIPs read through the monitor can be looked up in
        // /proc/kallsyms of another lab run.
        // ... and a lockup's backtraces reach the console (quiet would hide them).
        append.push_str(" nokaslr loglevel=5 softlockup_all_cpu_backtrace=1");
    }
    let silence = heartbeat_silence()?;
    let heartbeat = tmp.path().join("heartbeat");
    let mut heartbeat_spec = std::ffi::OsString::from("file:");
    heartbeat_spec.push(&heartbeat);
    let mut cmd = Command::new(&qemu);
    let accel = format!("tcg,thread={}", lab_tcg_thread()?);
    cmd.args(["-M", "q35", "-accel", &accel, "-cpu", "EPYC,+svm"])
        .args([
            "-m",
            &payload.lab_memory_mib.to_string(),
            "-smp",
            &lab_cpu_count(payload.lab_cpus)?.to_string(),
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        // The lab's heartbeat (crate::heartbeat) arrives on its second serial port.
        .arg("-serial")
        .arg(heartbeat_spec)
        .arg("-kernel")
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", &append]);
    if let Some(image) = &disk {
        cmd.args(qemu_disk_args(image));
    }
    // A wedged lab can be inspected through QEMU's monitor (`info registers -a` gives
    // each lab CPU's RIP; map it with the lab kernel's System.map).
    if let Some(path) = monitor {
        let mut spec = std::ffi::OsString::from("unix:");
        spec.push(&path);
        spec.push(",server,nowait");
        cmd.arg("-monitor").arg(spec);
        eprintln!(
            "virtkit-lab: QEMU monitor on {}",
            Path::new(&path).display()
        );
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| LabError::QemuMissing(format!("{}: {e}", qemu.display())))?;
    let console = Collected::default();
    let readers = [
        child
            .stdout
            .take()
            .map(|p| console.spawn_reader(p, payload.echo, |_| true)),
        child
            .stderr
            .take()
            .map(|p| console.spawn_reader(p, payload.echo, |l| !l.contains("TCG doesn't support"))),
    ];
    let waited = wait_lab(&mut child, payload.timeout, Some((&heartbeat, silence)))?;
    for r in readers.into_iter().flatten() {
        let _ = r.join();
    }
    let text = console.text();
    let status = match waited {
        LabWait::Exited(status) => status,
        LabWait::TimedOut => {
            let output = payload_output(&text).unwrap_or(&text).to_string();
            return Err(LabError::Timeout {
                after: payload.timeout,
                venue: Venue::Lab,
                output,
            });
        }
        LabWait::Wedged { silence, last_beat } => {
            return Err(LabError::LabFailed {
                reason: format!(
                    "the lab kernel stopped answering: no heartbeat for {silence:.0?} (the \
                     last at lab uptime {last_beat} s); the lab VM was killed (issue #20)"
                ),
                console: text,
            });
        }
    };
    if !text.contains(UP_MARKER) {
        return Err(LabError::LabFailed {
            reason: format!("the lab kernel never reached its init (qemu {status})"),
            console: text,
        });
    }
    if text
        .lines()
        .any(|l| l.starts_with(UP_MARKER) && l.contains("kvm=no"))
    {
        return Err(LabError::LabKvmMissing { console: text });
    }
    let tag = format!("{EXIT_MARKER}{nonce}:");
    let code = text
        .lines()
        .rev()
        .find_map(|l| l.split_once(&tag).map(|(_, c)| c.trim()))
        .and_then(|c| c.parse::<i32>().ok());
    let Some(code) = code else {
        return Err(LabError::LabFailed {
            reason: format!("the lab ended before the payload finished (qemu {status})"),
            console: text,
        });
    };
    let output = payload_output(&text).unwrap_or_default().to_string();
    Ok(LabOutput {
        venue: Venue::Lab,
        status: code,
        output,
        console: text,
        elapsed: start.elapsed(),
    })
}

/// The part of the lab console between the up marker's line and the exit marker.
fn payload_output(console: &str) -> Option<&str> {
    let up = console.find(UP_MARKER)?;
    let body = &console[up..];
    let body = &body[body.find('\n').map(|i| i + 1).unwrap_or(body.len())..];
    Some(match body.rfind(EXIT_MARKER) {
        Some(end) => &body[..end],
        None => body,
    })
}

fn rand_seed() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.subsec_nanos() ^ (t.as_secs() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_output_is_cut_between_markers() {
        let console =
            "boot noise\nVIRTKIT-LAB-UP uptime=1 kvm=yes\nhello\nworld\nVIRTKIT-LAB-EXIT=abc:3\n";
        assert_eq!(payload_output(console), Some("hello\nworld\n"));
    }

    #[test]
    fn ldd_finds_loader_and_libc() {
        let libs = shared_libraries(Path::new("/bin/ls")).unwrap();
        assert!(
            libs.iter()
                .any(|l| l.to_string_lossy().contains("ld-linux")),
            "{libs:?}"
        );
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
    }

    #[test]
    fn host_venue_returns_status_output_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("data");
        fs::write(&f, "payload-data\n").unwrap();
        let out = run_in(
            Venue::Host,
            &Payload::new("cat ./sub/data; echo err >&2; exit 7").file(&f, "sub/data"),
        )
        .unwrap();
        assert_eq!(out.venue, Venue::Host);
        assert_eq!(out.status, 7);
        assert!(
            out.output.contains("payload-data") && out.output.contains("err"),
            "{}",
            out.output
        );
    }

    #[test]
    fn host_venue_enforces_the_timeout() {
        let err = run_in(
            Venue::Host,
            &Payload::new("sleep 30").timeout(Duration::from_millis(300)),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                LabError::Timeout {
                    venue: Venue::Host,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.is_lab_failure());
    }
}
