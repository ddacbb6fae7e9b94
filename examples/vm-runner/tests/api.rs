//! vm-runner's `--api-socket`, driven with raw HTTP over the socket as `ch-remote` does:
//! without a VM (ping, info, vmm.shutdown), vm.create + vm.boot of a tiny hand-made kernel,
//! and a VM booted from the flags that is paused, resumed and stopped through the API. Tests
//! that start a VM are `kvm_` and need /dev/kvm; `kvm_api_round_trip_times` (ignored)
//! measures request round trips on a real VM.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The power-off sequence: mov dx, 0x3b0; mov al, (5 << 2) | (1 << 5); out dx, al; hlt.
const POWER_OFF: [u8; 8] = [0x66, 0xba, 0xb0, 0x03, 0xb0, 0x34, 0xee, 0xf4];

/// Prints '.' to COM1 forever, with a 64 Ki-iteration busy loop between dots.
#[rustfmt::skip]
const DOTS: [u8; 16] = [
    0x66, 0xba, 0xf8, 0x03,       // mov dx, 0x3f8
    0xb0, b'.', 0xee,             // mov al, '.'; out dx, al
    0xb9, 0x00, 0x00, 0x01, 0x00, // mov ecx, 1 << 16
    0xe2, 0xfe,                   // loop $
    0xeb, 0xf0,                   // jmp to the start
];

fn kernel(code: &[u8]) -> tempfile::NamedTempFile {
    let mut t = tempfile::NamedTempFile::new().unwrap();
    t.write_all(&virtkit_boot::testing::tiny_elf(code)).unwrap();
    t
}

struct Runner {
    child: Child,
    sock: PathBuf,
    dir: tempfile::TempDir,
}

impl Runner {
    fn start(extra: &[&str]) -> Runner {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_vm-runner"))
            .arg("--api-socket")
            .arg(&sock)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut r = Runner { child, sock, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&r.sock).is_err() {
            if Instant::now() > deadline || r.child.try_wait().unwrap().is_some() {
                let _ = r.child.kill();
                panic!("vm-runner did not serve: {}", r.stderr());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        r
    }

    fn call(&self, method: &str, endpoint: &str, body: Option<&str>) -> (u16, String) {
        call(&self.sock, method, endpoint, body)
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut s).unwrap();
        }
        s
    }

    /// Waits (bounded) for vm-runner to exit; its status and standard error.
    fn wait(&mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), self.stderr());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("vm-runner did not exit: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request on its own connection, as ch-remote sends it.
fn call(sock: &Path, method: &str, endpoint: &str, body: Option<&str>) -> (u16, String) {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!(
        "{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\nConnection: close\r\n"
    );
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n\r\n{b}", b.len()));
    } else {
        req.push_str("\r\n");
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp[9..12].parse().unwrap();
    let body = resp.split_once("\r\n\r\n").unwrap().1.to_string();
    (code, body)
}

fn state(sock: &Path) -> String {
    let (code, body) = call(sock, "GET", "vm.info", None);
    assert_eq!(code, 200, "{body}");
    let at = body.find("\"state\":\"").unwrap() + 9;
    body[at..].split('"').next().unwrap().to_string()
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn api_ping_and_vmm_shutdown_without_a_vm() {
    let mut r = Runner::start(&[]);
    let (code, body) = r.call("GET", "vmm.ping", None);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"version\""), "{body}");
    assert_eq!(r.call("GET", "vm.info", None).0, 404);
    assert_eq!(r.call("PUT", "vm.pause", None).0, 500);
    assert_eq!(r.call("GET", "vm.bogus", None).0, 404);
    assert_eq!(r.call("PUT", "vmm.shutdown", None).0, 200);
    let (code, err) = r.wait();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("vm-runner: VMM shut down through the API"),
        "{err}"
    );
    assert!(!r.sock.exists(), "the socket file is removed");
}

#[test]
fn a_socket_in_use_is_refused() {
    let r = Runner::start(&[]);
    let o = Command::new(env!("CARGO_BIN_EXE_vm-runner"))
        .arg("--api-socket")
        .arg(&r.sock)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("another server is listening there"), "{err}");
    assert_eq!(
        r.call("GET", "vmm.ping", None).0,
        200,
        "the first one still serves"
    );
}

#[test]
fn kvm_vm_create_and_boot_through_the_api() {
    // Write "hi\n" to COM1, then power off.
    #[rustfmt::skip]
    let mut code = vec![
        0x66, 0xba, 0xf8, 0x03,
        0xb0, b'h', 0xee, 0xb0, b'i', 0xee, 0xb0, b'\n', 0xee,
    ];
    code.extend_from_slice(&POWER_OFF);
    let k = kernel(&code);
    let mut r = Runner::start(&[]);
    let serial = r.dir.path().join("serial.txt");
    let config = format!(
        r#"{{"cpus": {{"boot_vcpus": 2, "max_vcpus": 2}}, "memory": {{"size": {}}},
            "payload": {{"kernel": "{}"}}, "serial": {{"mode": "File", "file": "{}"}},
            "console": {{"mode": "Off"}}}}"#,
        64 << 20,
        k.path().display(),
        serial.display()
    );
    assert_eq!(r.call("PUT", "vm.boot", None).0, 404, "not created yet");
    assert_eq!(r.call("PUT", "vm.create", Some(&config)).0, 204);
    assert_eq!(state(&r.sock), "Created");
    assert_eq!(r.call("PUT", "vm.boot", None).0, 204);
    let (code, err) = r.wait();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("vm-runner: guest powered off"), "{err}");
    assert_eq!(std::fs::read_to_string(&serial).unwrap(), "hi\n");
    assert!(!r.sock.exists());
}

/// A VM with a network device created and booted through the API: the API thread's
/// seccomp filter lets a tap's whole set-up through (it once lacked `TUNSETPERSIST`, and
/// such a boot, or a migration's destination with a network, killed vm-runner).
#[test]
fn root_kvm_vm_with_a_tap_created_and_booted_through_the_api() {
    let k = kernel(&POWER_OFF);
    let mut r = Runner::start(&[]);
    let config = format!(
        r#"{{"memory": {{"size": {}}}, "payload": {{"kernel": "{}"}},
            "serial": {{"mode": "Null"}}, "console": {{"mode": "Off"}},
            "net": [{{"tap": "vkapi{}", "mac": "52:54:00:00:0a:01"}}]}}"#,
        64 << 20,
        k.path().display(),
        std::process::id() % 10000
    );
    assert_eq!(r.call("PUT", "vm.create", Some(&config)).0, 204);
    // A vm-runner killed while it boots answers nothing: then say what it printed.
    let boot = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        r.call("PUT", "vm.boot", None)
    }));
    let (code, err) = r.wait();
    let (status, body) = boot.unwrap_or_else(|_| panic!("no answer to vm.boot: {err}"));
    assert_eq!(status, 204, "{body} {err}");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("vm-runner: guest powered off"), "{err}");
}

#[test]
fn kvm_vm_boot_errors_keep_the_server() {
    let mut r = Runner::start(&[]);
    let config = r#"{"payload": {"kernel": "/nonexistent/vmlinux"}, "serial": {"mode": "Null"}}"#;
    assert_eq!(r.call("PUT", "vm.create", Some(config)).0, 204);
    let (code, body) = r.call("PUT", "vm.boot", None);
    assert_eq!(code, 500);
    assert!(
        body.contains("cannot open kernel /nonexistent/vmlinux"),
        "{body}"
    );
    assert_eq!(r.call("GET", "vmm.ping", None).0, 200);
    assert_eq!(r.call("PUT", "vmm.shutdown", None).0, 200);
    assert_eq!(r.wait().0, Some(0));
}

#[test]
fn kvm_flags_boot_at_once_and_the_api_pauses_the_guest() {
    let k = kernel(&DOTS);
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.txt");
    let mut r = Runner::start(&[
        "--kernel",
        k.path().to_str().unwrap(),
        "--serial",
        &format!("file:{}", serial.display()),
    ]);
    wait_until("guest output", || file_len(&serial) >= 2);
    assert_eq!(state(&r.sock), "Running");
    assert_eq!(r.call("PUT", "vm.pause", None).0, 204);
    assert_eq!(state(&r.sock), "Paused");
    let at_pause = file_len(&serial);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(file_len(&serial), at_pause, "a paused guest runs no code");
    assert_eq!(r.call("PUT", "vm.resume", None).0, 204);
    wait_until("output after resume", || file_len(&serial) > at_pause);
    assert_eq!(r.call("PUT", "vm.power-button", None).0, 204);
    assert_eq!(r.call("PUT", "vm.reboot", None).0, 204);
    wait_until("output after reboot", || file_len(&serial) >= 2);
    assert_eq!(r.call("PUT", "vm.shutdown", None).0, 204);
    assert_eq!(state(&r.sock), "Created");
    assert_eq!(r.call("PUT", "vmm.shutdown", None).0, 200);
    let (code, err) = r.wait();
    assert_eq!(code, Some(0), "{err}");
}

/// Round trips on a real VM (a one-vCPU guest spinning in a loop), a connection per call as
/// ch-remote makes them:
/// `cargo test -p vm-runner --release --test api -- --ignored --nocapture`.
#[test]
#[ignore]
fn kvm_api_round_trip_times() {
    const N: usize = 200;
    let k = kernel(&[0xeb, 0xfe]); // jmp $
    let r = Runner::start(&["--kernel", k.path().to_str().unwrap(), "--serial", "none"]);
    // Sorted round-trip times of N calls of each request.
    let mut info = Vec::with_capacity(N);
    let mut pause_resume = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        assert_eq!(r.call("GET", "vm.info", None).0, 200);
        info.push(t.elapsed());
    }
    for _ in 0..N {
        let t = Instant::now();
        assert_eq!(r.call("PUT", "vm.pause", None).0, 204);
        assert_eq!(r.call("PUT", "vm.resume", None).0, 204);
        pause_resume.push(t.elapsed());
    }
    info.sort();
    pause_resume.sort();
    println!(
        "KVM, {N} calls each, a connection per call, median: vm.info {:?}; \
         vm.pause + vm.resume {:?}",
        info[N / 2],
        pause_resume[N / 2]
    );
    assert_eq!(r.call("PUT", "vmm.shutdown", None).0, 200);
}

/// `vm.snapshot` of a running guest, vm-runner killed with SIGKILL, then the snapshot brought
/// back by the command line: `--restore` with `--api-socket` comes back paused (Cloud
/// Hypervisor's default) and `vm.resume` runs it; without the API it runs at once.
#[test]
fn kvm_restore_from_the_command_line_after_sigkill() {
    let k = kernel(&DOTS);
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.txt");
    let snap = dir.path().join("snap");
    let r = Runner::start(&[
        "--kernel",
        k.path().to_str().unwrap(),
        "--serial",
        &format!("file:{}", serial.display()),
    ]);
    wait_until("guest output", || file_len(&serial) >= 2);
    assert_eq!(r.call("PUT", "vm.pause", None).0, 204);
    let body = format!(r#"{{"destination_url":"file://{}"}}"#, snap.display());
    let (code, err) = r.call("PUT", "vm.snapshot", Some(&body));
    assert_eq!(code, 204, "{err}");
    drop(r); // SIGKILL
    std::fs::remove_file(&serial).unwrap();

    let spec = format!("source_url=file://{}", snap.display());
    let mut r = Runner::start(&["--restore", &spec]);
    assert_eq!(state(&r.sock), "Paused");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(file_len(&serial), 0, "a restored VM stays paused");
    assert_eq!(r.call("PUT", "vm.resume", None).0, 204);
    wait_until("output after the restore", || file_len(&serial) >= 2);
    assert_eq!(r.call("PUT", "vmm.shutdown", None).0, 200);
    let (code, err) = r.wait();
    assert_eq!(code, Some(0), "{err}");

    std::fs::remove_file(&serial).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vm-runner"))
        .args(["--restore", &spec])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while file_len(&serial) < 2 {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let mut e = String::new();
            child.stderr.take().unwrap().read_to_string(&mut e).unwrap();
            panic!("no output from the restored VM: {e}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // A snapshot that is not there: a clear error, exit 1.
    let out = Command::new(env!("CARGO_BIN_EXE_vm-runner"))
        .args(["--restore", "source_url=file:///nonexistent/snap"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("/nonexistent/snap"), "{e}");
}

/// `vm.receive-migration` on one vm-runner, `vm.send-migration` on another that runs a
/// guest (as `ch-remote send-migration` / `receive-migration` drive Cloud Hypervisor): the
/// guest goes on at the destination, the source exits 0.
#[test]
fn kvm_live_migration_between_two_vm_runners() {
    let k = kernel(&DOTS);
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.txt");
    let mut src = Runner::start(&[
        "--kernel",
        k.path().to_str().unwrap(),
        "--serial",
        &format!("file:{}", serial.display()),
    ]);
    wait_until("guest output", || file_len(&serial) >= 2);
    let dst = Runner::start(&[]);
    let msock = dir.path().join("migration.sock");
    let body = format!(r#"{{"receiver_url":"unix:{}"}}"#, msock.display());
    let dsock = dst.sock.clone();
    let receiver =
        std::thread::spawn(move || call(&dsock, "PUT", "vm.receive-migration", Some(&body)));
    wait_until("the receiver to listen", || msock.exists());
    let body = format!(r#"{{"destination_url":"unix:{}"}}"#, msock.display());
    let (code, err) = src.call("PUT", "vm.send-migration", Some(&body));
    assert_eq!(code, 204, "{err}");
    let (code, err) = receiver.join().unwrap();
    assert_eq!(code, 204, "{err}");
    let (code, err) = src.wait();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("migrated"), "{err}");
    assert_eq!(state(&dst.sock), "Running");
    let at = file_len(&serial);
    wait_until("output at the destination", || file_len(&serial) > at + 2);
    assert_eq!(dst.call("PUT", "vmm.shutdown", None).0, 200);
}
