//! Running a payload where Linux guests can boot: in the lab, or on the host.
//!
//! The lab is a QEMU TCG VM (`-cpu EPYC,+svm`) running Debian's cloud kernel, unpacked
//! from its package (never installed), with `kvm-amd` loaded: its `/dev/kvm` boots real
//! Linux guests. Payload files are carried in on a second initramfs archive; anything
//! run there must be static or be carried with its loader and libraries
//! ([`Payload::host_program`]).

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cpio::CpioWriter;
use crate::error::{LabError, Result};
use crate::guest;
use crate::payload::{qemu_disk_args, Payload};
use crate::util::{self, FileLock, InputHash};
use crate::venue::{detect_venue, Venue};

/// Kernel modules every lab loads (with their dependencies).
pub const LAB_MODULES: &[&str] = &["kvm-amd", "tun", "bridge", "veth", "overlay", "loop"];
/// Names a Unix socket path for the lab QEMU's human monitor (for inspecting a
/// wedged lab: `info registers -a`); the lab kernel then boots with `nokaslr`.
pub const LAB_MONITOR_ENV: &str = "VIRTKIT_LAB_MONITOR";
/// Default vCPUs of the lab VM.
pub const LAB_CPUS: u32 = 2;
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
        Venue::Lab => run_in_lab(payload),
    }
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

/// Waits for `child` until `deadline`; kills its process group on timeout.
fn wait_until(child: &mut Child, timeout: Duration) -> Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(LabError::io("waiting for", "child"))?
        {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let pid = child.id() as i32;
            // SAFETY: kill on the process group we created for the child (setpgid below).
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
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
    let status = wait_until(&mut child, payload.timeout)?;
    for r in readers.into_iter().flatten() {
        let _ = r.join();
    }
    let text = out.text();
    let Some(status) = status else {
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

/// Debian's cloud kernel, unpacked: `(vmlinuz, modules dir)`.
pub fn lab_kernel() -> Result<(PathBuf, PathBuf)> {
    let cache = util::cache_dir("lab-kernel")?;
    let _lock = FileLock::acquire(&cache.join(".lock"))?;
    let pkg = match util::run_captured(
        Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]),
    ) {
        Ok(text) => text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|d| d.starts_with("linux-image-6") || d.starts_with("linux-image-7"))
            .map(str::to_string),
        Err(_) => None,
    };
    let pkg = match pkg {
        Some(p) => p,
        None => {
            // apt knows nothing (no lists yet, or offline): use what is unpacked, else
            // refresh the lists when root and ask again.
            if let Some(found) = unpacked_kernels(&cache).into_iter().next() {
                found
            } else if util::is_root() {
                let _ = util::run_captured(Command::new("apt-get").args(["update", "-q"]));
                let text = util::run_captured(
                    Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]),
                )
                .map_err(|e| {
                    LabError::LabKernelNotFound(format!(
                        "apt-cache depends linux-image-cloud-amd64: {e}"
                    ))
                })?;
                text.lines()
                    .filter_map(|l| l.trim().strip_prefix("Depends: "))
                    .find(|d| d.starts_with("linux-image-"))
                    .map(str::to_string)
                    .ok_or_else(|| {
                        LabError::LabKernelNotFound(
                            "linux-image-cloud-amd64 has no kernel dependency".into(),
                        )
                    })?
            } else {
                return Err(LabError::LabKernelNotFound(
                    "apt-cache does not know linux-image-cloud-amd64 (run apt-get update as root)"
                        .into(),
                ));
            }
        }
    };
    let dir = cache.join(&pkg);
    if !dir.join(".done").is_file() {
        eprintln!("virtkit-lab: fetching the lab kernel {pkg}");
        let dl = cache.join("download");
        let _ = fs::remove_dir_all(&dl);
        fs::create_dir_all(&dl).map_err(LabError::io("creating", &dl))?;
        let download = || {
            util::run_captured(
                Command::new("apt-get")
                    .arg("download")
                    .arg(&pkg)
                    .current_dir(&dl),
            )
        };
        if let Err(first) = download() {
            // Stale package lists name a version the mirror no longer has: refresh, retry.
            if !util::is_root() {
                return Err(LabError::LabKernelNotFound(format!(
                    "apt-get download {pkg}: {first}"
                )));
            }
            let _ = util::run_captured(Command::new("apt-get").args(["update", "-q"]));
            download()
                .map_err(|e| LabError::LabKernelNotFound(format!("apt-get download {pkg}: {e}")))?;
        }
        let deb = fs::read_dir(&dl)
            .map_err(LabError::io("reading", &dl))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| {
                LabError::LabKernelNotFound(format!("apt-get download {pkg} gave no .deb"))
            })?;
        let tmp = cache.join(format!("{pkg}.tmp"));
        let _ = fs::remove_dir_all(&tmp);
        util::run_captured(Command::new("dpkg").arg("-x").arg(&deb).arg(&tmp))
            .map_err(|e| LabError::LabKernelNotFound(format!("dpkg -x {}: {e}", deb.display())))?;
        fs::write(tmp.join(".done"), b"").map_err(LabError::io("writing", &tmp))?;
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&tmp, &dir).map_err(LabError::io("renaming into", &dir))?;
        let _ = fs::remove_dir_all(&dl);
    }
    let version = pkg.trim_start_matches("linux-image-");
    let vmlinuz = dir.join(format!("boot/vmlinuz-{version}"));
    let modules = dir.join(format!("lib/modules/{version}/kernel"));
    if !vmlinuz.is_file() || !modules.is_dir() {
        return Err(LabError::LabKernelNotFound(format!(
            "{} or {} missing",
            vmlinuz.display(),
            modules.display()
        )));
    }
    Ok((vmlinuz, modules))
}

fn unpacked_kernels(cache: &Path) -> Vec<String> {
    let mut found: Vec<String> = fs::read_dir(cache)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(".done").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    found.reverse();
    found
}

/// Maps module names (with `_`) to their files under the modules dir.
fn module_index(dir: &Path) -> HashMap<String, PathBuf> {
    let mut index = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
        {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(name) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ko"))
            {
                index.insert(name.replace('-', "_"), p);
            }
        }
    }
    index
}

/// The `depends=` list of a module's `.modinfo`.
fn module_depends(ko: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    ko.windows(key.len())
        .position(|w| w == key)
        .map(|pos| {
            let rest = &ko[pos + key.len()..];
            let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end])
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default()
}

/// Resolves modules and their dependencies into load order: `(name, file)`.
fn resolve_modules(dir: &Path, wanted: &[String]) -> Result<Vec<(String, PathBuf)>> {
    let index = module_index(dir);
    let mut order: Vec<(String, PathBuf)> = Vec::new();
    fn visit(
        name: &str,
        index: &HashMap<String, PathBuf>,
        order: &mut Vec<(String, PathBuf)>,
        depth: usize,
    ) -> Result<()> {
        if order.iter().any(|(n, _)| n == name) {
            return Ok(());
        }
        let path = index.get(name).ok_or_else(|| {
            LabError::BadInput(format!(
                "lab kernel module {name} not found (built in, or a typo?)"
            ))
        })?;
        if depth > 32 {
            return Err(LabError::BadInput(format!(
                "module dependency loop at {name}"
            )));
        }
        let bytes = fs::read(path).map_err(LabError::io("reading", path))?;
        for dep in module_depends(&bytes) {
            visit(&dep, index, order, depth + 1)?;
        }
        order.push((name.to_string(), path.clone()));
        Ok(())
    }
    for w in wanted {
        visit(&w.replace('-', "_"), &index, &mut order, 0)?;
    }
    Ok(order)
}

/// The lab's base initramfs (busybox, modules, /init), cached by its inputs.
fn lab_base(modules_dir: &Path, modules: &[String]) -> Result<PathBuf> {
    let root = util::workspace_root()?;
    let init_path = root.join("guest/lab-init.sh");
    let init = fs::read(&init_path).map_err(LabError::io("reading", &init_path))?;
    let busybox = guest::busybox()?;
    let resolved = resolve_modules(modules_dir, modules)?;
    let mut hash = InputHash::new("virtkit-lab-base-v1");
    hash.add(&init).add_file(&busybox)?;
    for (name, path) in &resolved {
        hash.add(name.as_bytes())
            .add(path.to_string_lossy().as_bytes());
    }
    let cache = util::cache_dir("lab-kernel")?;
    let out = cache.join(format!("base-{}.cpio", hash.hex()));
    if out.is_file() {
        return Ok(out);
    }
    let io = |e| LabError::io("packing", &out)(e);
    let mut w = CpioWriter::new(Vec::new());
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "lib", "lib64", "etc", "proc", "sys", "dev", "tmp",
        "run", "root", "payload",
    ] {
        w.dir(d, 0o755).map_err(io)?;
    }
    w.char_dev("dev/console", 0o600, 5, 1).map_err(io)?;
    let bb = fs::read(&busybox).map_err(LabError::io("reading", &busybox))?;
    w.file("bin/busybox", 0o755, &bb).map_err(io)?;
    w.symlink("bin/sh", "busybox").map_err(io)?;
    w.file("init", 0o755, &init).map_err(io)?;
    w.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .map_err(io)?;
    w.file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")
        .map_err(io)?;
    w.file("etc/hosts", 0o644, b"127.0.0.1 localhost lab\n")
        .map_err(io)?;
    let mut list = String::new();
    for (name, path) in &resolved {
        let data = fs::read(path).map_err(LabError::io("reading", path))?;
        w.file(&format!("lab/mods/{name}.ko"), 0o644, &data)
            .map_err(io)?;
        list.push_str(name);
        list.push('\n');
    }
    w.file("lab/modules", 0o644, list.as_bytes()).map_err(io)?;
    let bytes = w.finish().map_err(io)?;
    util::write_atomic(&out, &bytes)?;
    Ok(out)
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
    let mut cmd = Command::new(&qemu);
    cmd.args(["-M", "q35", "-accel", "tcg", "-cpu", "EPYC,+svm"])
        .args([
            "-m",
            &payload.lab_memory_mib.to_string(),
            "-smp",
            &payload.lab_cpus.to_string(),
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
    let status = wait_until(&mut child, payload.timeout)?;
    for r in readers.into_iter().flatten() {
        let _ = r.join();
    }
    let text = console.text();
    let Some(status) = status else {
        let output = payload_output(&text).unwrap_or(&text).to_string();
        return Err(LabError::Timeout {
            after: payload.timeout,
            venue: Venue::Lab,
            output,
        });
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
    fn modinfo_depends_are_parsed() {
        let ko = b"junk\0license=GPL\0depends=kvm,irq-bypass\0vermagic=6.1\0";
        assert_eq!(module_depends(ko), ["kvm", "irq_bypass"]);
        assert!(module_depends(b"\0depends=\0").is_empty());
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
