//! The control API over a real Unix socket, on the fake hypervisor (no /dev/kvm): every
//! endpoint's answer and its errors, Cloud Hypervisor's status codes and error bodies, a
//! paused guest that really stops, clients that stall or hammer while the guest runs, and how
//! the server ends. `api_round_trip_times` (ignored) measures request round trips.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use virtkit_boot::layout;
use virtkit_memory::Irq;
use virtkit_vcpu::fake::{FakeHypervisor, ScriptedExit};
use virtkit_vmm::api::{ApiError, ApiServer, Limits};
use virtkit_vmm::VmEnd;

/// A guest printing to COM1 forever, one byte per millisecond.
fn busy() -> Vec<ScriptedExit> {
    let dot = ScriptedExit::IoOut {
        port: 0x3f8,
        data: vec![b'.'],
    };
    (0..200_000)
        .flat_map(|_| [dot.clone(), ScriptedExit::Run(Duration::from_millis(1))])
        .collect()
}

struct Server {
    _dir: tempfile::TempDir,
    _kernel: tempfile::NamedTempFile,
    kernel: PathBuf,
    sock: PathBuf,
    /// COM1 of every VM, as the config says (each boot starts the file anew).
    serial: PathBuf,
    hv: Arc<FakeHypervisor>,
    /// How many VMs the server built, counted by its `configure_vmm` hook.
    builds: Arc<AtomicUsize>,
    thread: Option<JoinHandle<Result<Option<VmEnd>, ApiError>>>,
}

impl Server {
    fn start(script: Vec<ScriptedExit>, limits: Limits, boot: bool) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut k = tempfile::NamedTempFile::new().unwrap();
        k.write_all(&virtkit_boot::testing::tiny_elf(&[0xf4]))
            .unwrap();
        let kernel = k.path().to_path_buf();
        let sock = dir.path().join("api.sock");
        let serial = dir.path().join("serial.txt");
        let hv = Arc::new(FakeHypervisor::default());
        hv.script(0, script);
        let builds = Arc::new(AtomicUsize::new(0));
        let counter = builds.clone();
        let server = ApiServer::bind(&sock, hv.clone())
            .unwrap()
            .limits(limits)
            .configure_vmm(move |b| {
                counter.fetch_add(1, Ordering::SeqCst);
                b
            });
        assert_eq!(server.path(), sock);
        let boot = boot.then(|| serde_json::from_str(&config_json(&kernel, &serial)).unwrap());
        let thread = Some(std::thread::spawn(move || server.serve(boot)));
        Server {
            _dir: dir,
            _kernel: k,
            kernel,
            sock,
            serial,
            hv,
            builds,
            thread,
        }
    }

    fn config(&self) -> String {
        config_json(&self.kernel, &self.serial)
    }

    fn serial_len(&self) -> usize {
        std::fs::metadata(&self.serial).map_or(0, |m| m.len() as usize)
    }

    fn call(&self, method: &str, endpoint: &str, body: Option<&str>) -> (u16, String) {
        Conn::open(&self.sock).call(method, endpoint, body)
    }

    /// Waits (bounded) for the server to return.
    fn end(&mut self) -> Result<Option<VmEnd>, ApiError> {
        let t = self.thread.take().unwrap();
        wait_until("the server to end", || t.is_finished());
        t.join().unwrap()
    }

    fn state(&self) -> String {
        let (code, body) = self.call("GET", "vm.info", None);
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["state"].as_str().unwrap().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.thread.is_some() && !std::thread::panicking() {
            let _ = self.call("PUT", "vmm.shutdown", None);
        }
    }
}

/// A vm.create body as ch-remote sends it, with fields virtkit ignores.
fn config_json(kernel: &Path, serial: &Path) -> String {
    format!(
        r#"{{"cpus":{{"boot_vcpus":1,"max_vcpus":1,"kvm_hyperv":false}},
            "memory":{{"size":67108864,"shared":false}},
            "payload":{{"kernel":"{}","cmdline":"console=ttyS0"}},
            "serial":{{"mode":"File","file":"{}"}},"console":{{"mode":"Off"}},
            "rng":{{"src":"/dev/urandom"}}}}"#,
        kernel.display(),
        serial.display()
    )
}

/// One client connection, kept alive across calls.
struct Conn {
    s: UnixStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(sock: &Path) -> Conn {
        let s = UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Conn { s, buf: Vec::new() }
    }

    fn call(&mut self, method: &str, endpoint: &str, body: Option<&str>) -> (u16, String) {
        let mut req = format!("{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\n");
        if let Some(b) = body {
            req.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        req.push_str("\r\n");
        req.push_str(body.unwrap_or_default());
        self.raw(req.as_bytes())
    }

    /// Sends `bytes` and reads one response (skipping a 100 Continue).
    fn raw(&mut self, bytes: &[u8]) -> (u16, String) {
        self.s.write_all(bytes).unwrap();
        self.response()
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = self.s.read(&mut chunk).unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    fn response(&mut self) -> (u16, String) {
        loop {
            let end = loop {
                if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                assert!(self.fill(), "connection closed: {:?}", self.buf);
            };
            let head = String::from_utf8(self.buf.drain(..end).collect()).unwrap();
            let code: u16 = head[9..12].parse().unwrap();
            if code == 100 {
                continue;
            }
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            while self.buf.len() < len {
                assert!(self.fill(), "connection closed in a body");
            }
            let body = String::from_utf8(self.buf.drain(..len).collect()).unwrap();
            return (code, body);
        }
    }

    /// True when the server closed the connection (nothing more to read).
    fn closed(&mut self) -> bool {
        self.buf.clear();
        !self.fill()
    }
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn messages(body: &str) -> Vec<String> {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

fn test_limits() -> Limits {
    Limits {
        request_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(2),
        ..Limits::default()
    }
}

#[test]
fn create_boot_info_and_vmm_shutdown() {
    let mut srv = Server::start(busy(), test_limits(), false);
    let (code, body) = srv.call("GET", "vmm.ping", None);
    assert_eq!(code, 200, "{body}");
    let ping: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ping["pid"], i64::from(std::process::id()));
    assert!(
        ping["version"].is_string() && ping["features"].is_array(),
        "{ping}"
    );

    // Nothing created yet: Cloud Hypervisor's 404 (no VM) and 500 (not running).
    let (code, body) = srv.call("GET", "vm.info", None);
    assert_eq!((code, messages(&body)[0].as_str()), (404, "Error from API"));
    assert_eq!(messages(&body)[2], "the VM is not created");
    assert_eq!(srv.call("PUT", "vm.boot", None).0, 404);
    assert_eq!(srv.call("PUT", "vm.reboot", None).0, 404);
    for action in ["vm.pause", "vm.resume", "vm.shutdown", "vm.power-button"] {
        let (code, body) = srv.call("PUT", action, None);
        assert_eq!(code, 500, "{action}: {body}");
    }
    assert_eq!(
        srv.call("PUT", "vm.delete", None).0,
        204,
        "nothing to delete"
    );

    let json = srv.config();
    assert_eq!(srv.call("PUT", "vm.create", Some(&json)).0, 204);
    let (code, body) = srv.call("PUT", "vm.create", Some(&json));
    assert_eq!(code, 500);
    assert_eq!(
        messages(&body),
        [
            "Error from API",
            "The VM could not be created",
            "the VM is already created"
        ]
    );
    let (code, body) = srv.call("GET", "vm.info", None);
    assert_eq!(code, 200);
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["state"], "Created");
    assert_eq!(info["memory_actual_size"], 64 << 20);
    assert_eq!(info["config"]["payload"]["cmdline"], "console=ttyS0");
    assert!(srv.hv.vms().is_empty(), "vm.create builds nothing");

    assert_eq!(srv.call("PUT", "vm.boot", None).0, 204);
    wait_until("the guest to run", || srv.serial_len() > 10);
    assert_eq!(srv.state(), "Running");
    let (code, body) = srv.call("PUT", "vm.boot", None);
    assert_eq!(code, 500, "{body}");
    assert_eq!(srv.hv.vms().len(), 1);

    let (code, _) = srv.call("PUT", "vmm.shutdown", None);
    assert_eq!(code, 200);
    assert_eq!(srv.end().unwrap(), None);
    assert!(!srv.sock.exists(), "the socket file is removed");
}

#[test]
fn a_vm_paused_through_the_api_stops_running_guest_code() {
    let srv = Server::start(busy(), test_limits(), true);
    wait_until("the guest to run", || srv.serial_len() > 10);
    assert_eq!(srv.call("PUT", "vm.resume", None).0, 500, "not paused");
    assert_eq!(srv.call("PUT", "vm.pause", None).0, 204);
    let (code, body) = srv.call("PUT", "vm.pause", None);
    assert_eq!(code, 500);
    assert_eq!(messages(&body)[1], "The VM could not be paused");
    assert_eq!(srv.state(), "Paused");
    let at_pause = srv.serial_len();
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(srv.serial_len(), at_pause, "a paused guest runs no code");
    assert_eq!(srv.call("PUT", "vm.resume", None).0, 204);
    wait_until("output after resume", || srv.serial_len() > at_pause + 10);
    assert_eq!(srv.state(), "Running");
    // vm.boot on a paused VM resumes it, as in Cloud Hypervisor.
    assert_eq!(srv.call("PUT", "vm.pause", None).0, 204);
    assert_eq!(srv.call("PUT", "vm.boot", None).0, 204);
    assert_eq!(srv.state(), "Running");
}

#[test]
fn snapshot_and_restore_through_the_api() {
    let srv = Server::start(busy(), test_limits(), true);
    wait_until("the guest to run", || srv.serial_len() > 10);
    let snap = srv._dir.path().join("snap");
    let body = format!(r#"{{"destination_url":"file://{}"}}"#, snap.display());
    // Cloud Hypervisor snapshots only a paused VM.
    assert_eq!(srv.call("PUT", "vm.snapshot", Some(&body)).0, 500);
    assert_eq!(srv.call("PUT", "vm.pause", None).0, 204);
    for bad in [
        "{}",
        r#"{"destination_url":"http://x/y"}"#,
        r#"{"destination_url":"file://rel"}"#,
    ] {
        assert_eq!(srv.call("PUT", "vm.snapshot", Some(bad)).0, 400, "{bad}");
    }
    assert_eq!(srv.call("PUT", "vm.snapshot", None).0, 400);
    let (code, b) = srv.call("PUT", "vm.snapshot", Some(&body));
    assert_eq!(code, 204, "{b}");
    assert!(snap.join("state.json").exists() && snap.join("memory").exists());
    let restore = format!(r#"{{"source_url":"file://{}"}}"#, snap.display());
    // A VM exists: restore is refused until it is deleted.
    assert_eq!(srv.call("PUT", "vm.restore", Some(&restore)).0, 500);
    assert_eq!(srv.call("PUT", "vm.delete", None).0, 204);
    let missing = r#"{"source_url":"file:///nonexistent/snap"}"#;
    let (code, b) = srv.call("PUT", "vm.restore", Some(missing));
    assert_eq!(code, 500);
    assert!(b.contains("config.json"), "{b}");
    let (code, b) = srv.call("PUT", "vm.restore", Some(&restore));
    assert_eq!(code, 204, "{b}");
    assert_eq!(srv.state(), "Paused", "a restored VM comes back paused");
    assert_eq!(srv.call("PUT", "vm.resume", None).0, 204);
    assert_eq!(srv.state(), "Running");
}

#[test]
fn shutdown_reboot_power_button_and_delete() {
    let srv = Server::start(busy(), test_limits(), true);
    wait_until("the guest to run", || srv.serial_len() > 10);
    // The power button raises the GED's line (the first device line: no virtio devices).
    assert_eq!(srv.call("PUT", "vm.power-button", None).0, 204);
    assert_eq!(srv.hv.vms()[0].irq_count(Irq(5)), 1);

    assert_eq!(srv.call("PUT", "vm.reboot", None).0, 204);
    assert_eq!(srv.hv.vms().len(), 2, "a fresh VM");
    let before = srv.serial_len();
    wait_until("the rebooted guest to run", || {
        srv.serial_len() > before + 10
    });
    assert_eq!(srv.state(), "Running");

    // vm.shutdown stops the VM but keeps its config and the server.
    assert_eq!(srv.call("PUT", "vm.shutdown", None).0, 204);
    assert_eq!(srv.state(), "Created");
    let stopped = srv.serial_len();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(srv.serial_len(), stopped);
    assert_eq!(srv.call("PUT", "vm.shutdown", None).0, 500, "not booted");
    assert_eq!(srv.call("PUT", "vm.power-button", None).0, 500);
    assert_eq!(srv.call("PUT", "vm.boot", None).0, 204);
    assert_eq!(srv.hv.vms().len(), 3);
    assert_eq!(
        srv.builds.load(Ordering::SeqCst),
        3,
        "the hook saw every build"
    );

    // vm.delete stops it and forgets the config.
    assert_eq!(srv.call("PUT", "vm.delete", None).0, 204);
    assert_eq!(srv.call("GET", "vm.info", None).0, 404);
    assert_eq!(srv.call("PUT", "vm.boot", None).0, 404);
    let json = srv.config();
    assert_eq!(srv.call("PUT", "vm.create", Some(&json)).0, 204);
}

#[test]
fn bad_requests_get_cloud_hypervisors_errors() {
    let srv = Server::start(busy(), test_limits(), false);
    let (code, body) = srv.call("GET", "vm.nonsense", None);
    assert_eq!(
        (code, messages(&body)),
        (404, vec!["Not Found".to_string()])
    );
    let mut c = Conn::open(&srv.sock);
    assert_eq!(c.raw(b"GET /other HTTP/1.1\r\n\r\n").0, 404);
    // Wrong methods, and a body on a bodiless action: 400.
    for (method, endpoint) in [
        ("GET", "vm.pause"),
        ("PUT", "vm.info"),
        ("POST", "vmm.ping"),
        ("DELETE", "vm.create"),
        ("GET", "vmm.shutdown"),
    ] {
        let (code, body) = c.call(method, endpoint, None);
        assert_eq!((code, messages(&body)), (400, vec!["Bad Request".into()]));
    }
    assert_eq!(c.call("PUT", "vm.pause", Some("{}")).0, 400);
    // vm.create: no body, JSON that is not a VmConfig.
    assert_eq!(c.call("PUT", "vm.create", None).0, 400);
    let (code, body) = c.call("PUT", "vm.create", Some("{\"memory\": "));
    let m = messages(&body);
    assert_eq!(
        (code, m[0].as_str()),
        (400, "Failed to deserialize JSON"),
        "{m:?}"
    );
    assert!(m[1].contains("EOF"), "{m:?}");
    let (code, body) = c.call("PUT", "vm.create", Some(r#"{"memory":{"size":-1}}"#));
    assert_eq!(code, 400, "{body}");
    // A Cloud Hypervisor endpoint virtkit does not implement.
    let (code, body) = c.call("PUT", "vm.add-pmem", Some("{}"));
    assert_eq!(code, 501);
    assert_eq!(messages(&body), ["virtkit does not implement vm.add-pmem"]);
    // Migration: no URL is a bad request; no VM to send, an error.
    assert_eq!(c.call("PUT", "vm.send-migration", Some("{}")).0, 400);
    let (code, _) = c.call(
        "PUT",
        "vm.send-migration",
        Some(r#"{"destination_url":"unix:/nonexistent"}"#),
    );
    assert_eq!(code, 500);
    // Two pipelined requests, two answers in order; the connection stays usable.
    c.s.write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\nGET /api/v1/vm.info HTTP/1.1\r\n\r\n")
        .unwrap();
    assert_eq!(c.response().0, 200);
    assert_eq!(c.response().0, 404);
    // libcurl style: a chunked, empty body; Expect: 100-continue with a body.
    let chunked = b"PUT /api/v1/vm.delete HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(c.raw(chunked).0, 204);
    let json = srv.config();
    let expect = format!(
        "PUT /api/v1/vm.create HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        json.len()
    );
    c.s.write_all(expect.as_bytes()).unwrap();
    c.fill();
    assert!(c.buf.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"));
    assert_eq!(c.raw(json.as_bytes()).0, 204);

    // A body over the limit: 413 before it is read, and the connection is closed.
    let mut big = Conn::open(&srv.sock);
    let (code, body) =
        big.raw(b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 104857600\r\n\r\n{");
    assert_eq!(code, 413, "{body}");
    assert_eq!(messages(&body)[0], "Payload Too Large");
    assert!(big.closed());
    // Garbage and over-long headers: 400 and closed.
    let mut junk = Conn::open(&srv.sock);
    assert_eq!(junk.raw(b"\x16\x03\x01 hello\r\n\r\n").0, 400);
    assert!(junk.closed());
    let mut long = Conn::open(&srv.sock);
    let mut req = b"GET /api/v1/vmm.ping HTTP/1.1\r\nX-Long: ".to_vec();
    req.resize(20_000, b'a');
    assert_eq!(long.raw(&req).0, 400);
    // None of it disturbed the server.
    assert_eq!(srv.call("GET", "vmm.ping", None).0, 200);
    assert_eq!(srv.state(), "Created");
}

#[test]
fn build_errors_are_answers_not_the_end_of_the_server() {
    let srv = Server::start(busy(), test_limits(), false);
    let missing = config_json(Path::new("/nonexistent/vmlinux"), &srv.serial);
    assert_eq!(srv.call("PUT", "vm.create", Some(&missing)).0, 204);
    let (code, body) = srv.call("PUT", "vm.boot", None);
    assert_eq!(code, 500);
    let m = messages(&body);
    assert_eq!(m[..2], ["Error from API", "The VM could not boot"]);
    assert!(
        m[2].contains("cannot open kernel /nonexistent/vmlinux"),
        "{m:?}"
    );
    assert_eq!(srv.state(), "Created");
    assert_eq!(srv.call("PUT", "vm.delete", None).0, 204);
    let absurd = srv.config().replace("67108864", "18446744073709551615");
    assert_eq!(srv.call("PUT", "vm.create", Some(&absurd)).0, 204);
    let (code, body) = srv.call("PUT", "vm.boot", None);
    assert_eq!(code, 500);
    assert!(body.contains("memory size"), "{body}");
    assert_eq!(srv.call("GET", "vmm.ping", None).0, 200);
}

#[test]
fn stalled_and_surplus_clients_do_not_hold_the_vm_or_other_clients() {
    let limits = Limits {
        max_connections: 4,
        request_timeout: Duration::from_secs(3),
        ..test_limits()
    };
    let srv = Server::start(busy(), limits, true);
    wait_until("the guest to run", || srv.serial_len() > 10);
    // Half a request, then nothing.
    let mut stalled = Conn::open(&srv.sock);
    stalled
        .s
        .write_all(b"PUT /api/v1/vm.pause HTTP/1.1\r\nContent-Length: 10\r\n\r\n{")
        .unwrap();
    // Clients that connect and say nothing.
    let mut silent = Conn::open(&srv.sock);
    let _silent2 = Conn::open(&srv.sock);
    // Meanwhile another client pauses and resumes the VM at once.
    let t = Instant::now();
    let mut c = Conn::open(&srv.sock);
    assert_eq!(c.call("PUT", "vm.pause", None).0, 204);
    let at_pause = srv.serial_len();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(srv.serial_len(), at_pause);
    assert_eq!(c.call("PUT", "vm.resume", None).0, 204);
    // Far less than the stalled request's 3 s timeout: nothing waited on it.
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    wait_until("output after resume", || srv.serial_len() > at_pause + 10);
    // Four connections are open: a fifth is refused with 503.
    let (code, body) = Conn::open(&srv.sock).response();
    assert_eq!(
        (code, messages(&body)),
        (503, vec!["Too many open connections".into()])
    );
    // The stalled request times out (408) and is closed; the silent client is dropped.
    let (code, _) = stalled.response();
    assert_eq!(code, 408);
    assert!(stalled.closed());
    assert!(silent.closed());
    assert!(c.closed(), "idle past the idle timeout");
    assert_eq!(srv.call("GET", "vmm.ping", None).0, 200);
    assert_eq!(srv.state(), "Running");
}

#[test]
fn a_client_hammering_the_socket_does_not_disturb_the_guest() {
    let limits = Limits {
        max_connections: 64,
        ..test_limits()
    };
    let srv = Server::start(busy(), limits, true);
    wait_until("the guest to run", || srv.serial_len() > 10);
    let start = srv.serial_len();
    let t = Instant::now();
    let mut calls = 0;
    let mut c = Conn::open(&srv.sock);
    while t.elapsed() < Duration::from_millis(500) {
        assert_eq!(c.call("GET", "vm.info", None).0, 200);
        assert_eq!(Conn::open(&srv.sock).call("GET", "vmm.ping", None).0, 200);
        calls += 2;
    }
    let printed = srv.serial_len() - start;
    // About a byte a millisecond when undisturbed; the client competes for the CPUs but
    // never stops the guest.
    assert!(
        printed > 100,
        "{printed} bytes in 500 ms during {calls} calls"
    );
    assert_eq!(srv.state(), "Running");
}

#[test]
fn the_guest_powering_off_ends_the_server() {
    let com1 = |b: u8| ScriptedExit::IoOut {
        port: 0x3f8,
        data: vec![b],
    };
    let script = vec![
        com1(b'o'),
        com1(b'k'),
        ScriptedExit::Run(Duration::from_millis(500)),
        ScriptedExit::IoOut {
            port: layout::ACPI_SLEEP_CONTROL_PORT,
            data: vec![layout::ACPI_S5_SLEEP_VALUE],
        },
    ];
    let mut srv = Server::start(script, test_limits(), true);
    let mut c = Conn::open(&srv.sock);
    assert_eq!(c.call("GET", "vmm.ping", None).0, 200);
    assert_eq!(srv.end().unwrap(), Some(VmEnd::PowerOff));
    assert_eq!(std::fs::read(&srv.serial).unwrap(), b"ok");
    assert!(!srv.sock.exists());
    assert!(c.closed(), "clients are disconnected");
}

#[test]
fn sockets_in_use_are_refused_and_stale_ones_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let hv = Arc::new(FakeHypervisor::default());
    let path = dir.path().join("s");
    // A live server.
    let live = UnixListener::bind(&path).unwrap();
    let e = ApiServer::bind(&path, hv.clone()).unwrap_err();
    assert!(matches!(e, ApiError::InUse(_)), "{e}");
    // Its socket file left behind.
    drop(live);
    assert!(path.exists());
    let server = ApiServer::bind(&path, hv.clone()).unwrap();
    drop(server);
    assert!(!path.exists(), "an unserved server removes its socket too");
    // Not a socket: left alone.
    std::fs::write(&path, b"data").unwrap();
    let e = ApiServer::bind(&path, hv.clone()).unwrap_err();
    assert!(matches!(e, ApiError::NotASocket(_)), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), b"data");
    // A boot that fails at start is an error from serve.
    let server = ApiServer::bind(&dir.path().join("t"), hv).unwrap();
    let mut bad = virtkit_vmm::VmConfig::with_kernel("/nonexistent/vmlinux");
    bad.serial.mode = virtkit_vmm::ConsoleMode::Null;
    let e = server.serve(Some(bad)).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/vmlinux"), "{e}");
    assert!(!dir.path().join("t").exists());
}

/// The median time of `n` calls of `f`.
fn median_time(n: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<_> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[n / 2]
}

/// Round trips on the fake hypervisor:
/// `cargo test -p virtkit-vmm --release --test api -- --ignored --nocapture`.
#[test]
#[ignore]
fn api_round_trip_times() {
    const N: usize = 200;
    let srv = Server::start(busy(), Limits::default(), true);
    wait_until("the guest to run", || srv.serial_len() > 10);
    let mut keep = Conn::open(&srv.sock);
    let info_keep = median_time(N, || assert_eq!(keep.call("GET", "vm.info", None).0, 200));
    let info_new = median_time(N, || assert_eq!(srv.call("GET", "vm.info", None).0, 200));
    let pause_resume = median_time(N, || {
        assert_eq!(keep.call("PUT", "vm.pause", None).0, 204);
        assert_eq!(keep.call("PUT", "vm.resume", None).0, 204);
    });
    println!(
        "fake hypervisor, {N} calls each, median: vm.info {:?} (kept-alive connection), \
         {:?} (a connection per call, as ch-remote); vm.pause + vm.resume {:?}",
        info_keep, info_new, pause_resume
    );
}
