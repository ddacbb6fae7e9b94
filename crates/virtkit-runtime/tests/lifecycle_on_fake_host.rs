//! create, start and exec on the recording host, whose children are scripted: the exact
//! sequence of what the runtime does (child spawned, cgroup made, state written,
//! handshake, hooks, wait), and that each failure after the clone leaves nothing: no
//! state directory, no cgroup, no live child (killed and reaped). No root: the children
//! never run, the fake answers for them.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtkit_runtime::state::{Container, Saved, Status};
use virtkit_runtime::testing::{Call, RecordingHost, Step, FIRST_CHILD_PID};
use virtkit_runtime::{CreateOpts, ExecOpts, Runtime};

mod common;

const CG: &str = "virtkit/c1";
const CHILD: i32 = FIRST_CHILD_PID;

/// A bundle (see `common::bundle`) changed by `edit`; a runtime on a fresh recording
/// host with its state under the same temporary directory.
fn setup(edit: impl FnOnce(&mut serde_json::Value)) -> (tempfile::TempDir, Runtime, RecordingHost) {
    let tmp = tempfile::tempdir().unwrap();
    common::bundle(tmp.path(), edit);
    let host = RecordingHost::new();
    let rt = Runtime::with_host(tmp.path().join("state"), Arc::new(host.clone()));
    (tmp, rt, host)
}

fn bundle(rt: &Runtime) -> PathBuf {
    rt.root().parent().unwrap().join("bundle")
}

fn state_file(rt: &Runtime) -> PathBuf {
    rt.root().join("c1/state.json")
}

/// The calls in short: "spawn 0x...", "cgroup Create", "sent go", "recv ready",
/// "hooks prestart", "kill 9", "wait", "snapshot pid=N done=B" (of state.json).
fn view(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .map(|c| match c {
            Call::Spawn { flags, .. } => format!("spawn {flags:#x}"),
            Call::Cgroup { op, .. } => format!("cgroup {op:?}"),
            // "go" with the hook state after it: the state is checked elsewhere.
            Call::Sent { msg, .. } if msg.len() > 2 && msg.starts_with("go") => {
                "sent go+state".into()
            }
            Call::Sent { msg, .. } => format!("sent {msg}"),
            Call::Received { msg, .. } => format!("recv {msg}"),
            Call::Hooks { kind, .. } => format!("hooks {kind}"),
            Call::Kill { sig, .. } => format!("kill {sig}"),
            Call::Wait(_) => "wait".into(),
            Call::Reap(_) => "reap".into(),
            Call::Snapshot { content, .. } => match content {
                None => "snapshot none".into(),
                Some(s) => {
                    let v: serde_json::Value = serde_json::from_str(s).unwrap();
                    format!("snapshot pid={} done={}", v["pid"], v["create_done"])
                }
            },
        })
        .collect()
}

fn assert_calls(host: &RecordingHost, want: &[&str]) {
    assert_eq!(view(&host.calls()), want, "{:#?}", host.calls());
}

const NEWNS_NEWPID: i32 = libc::CLONE_NEWNS | libc::CLONE_NEWPID;

/// A child that reads "go", then fails with `error` and dies.
fn fails_after_go(error: &str) -> Vec<Step> {
    vec![
        Step::expect("go"),
        Step::send(&format!("E{error}")),
        Step::Die,
    ]
}

#[test]
fn create_spawns_then_makes_the_cgroup_saves_and_says_go() {
    let (_t, rt, host) = setup(|_| {});
    // state.json as init sees it when it reads "go": saved, with its pid.
    host.script_child(vec![
        Step::Snapshot(state_file(&rt)),
        Step::expect("go"),
        Step::send("ready"),
        Step::Exec(0),
    ]);
    let mut o = CreateOpts::new("c1", bundle(&rt));
    o.pid_file = Some(rt.root().parent().unwrap().join("pid"));
    rt.create(&o).unwrap();
    assert_calls(
        &host,
        &[
            &format!("spawn {NEWNS_NEWPID:#x}"),
            "cgroup Create",
            "cgroup Apply",
            "sent go",
            &format!("snapshot pid={CHILD} done=false"),
            "recv ready",
        ],
    );
    let c = rt.load("c1").unwrap();
    assert_eq!((c.saved.pid, c.saved.create_done), (CHILD, true));
    assert_eq!(c.saved.cgroup_path, CG);
    assert_eq!(rt.status(&c), Status::Created);
    assert!(c.fifo().exists());
    let pid = std::fs::read_to_string(o.pid_file.unwrap()).unwrap();
    assert_eq!(pid, CHILD.to_string());
}

#[test]
fn create_runs_prestart_and_create_runtime_hooks_at_the_childs_call() {
    let (_t, rt, host) = setup(|c| {
        c["hooks"] = serde_json::json!({"prestart": [{"path": "/bin/true"}],
            "createRuntime": [{"path": "/bin/true"}]});
    });
    host.script_child(vec![
        Step::expect("go"),
        Step::send("hooks"),
        Step::expect("go"),
        Step::send("ready"),
        Step::Exec(0),
    ]);
    rt.create(&CreateOpts::new("c1", bundle(&rt))).unwrap();
    assert_calls(
        &host,
        &[
            &format!("spawn {NEWNS_NEWPID:#x}"),
            "cgroup Create",
            "cgroup Apply",
            "sent go",
            "recv hooks",
            "hooks prestart",
            "hooks createRuntime",
            "sent go+state",
            "recv ready",
        ],
    );
    // The state after "go" is the hooks' state: creating, with init's pid.
    let sent = host.calls().into_iter().find_map(|c| match c {
        Call::Sent { msg, .. } if msg.len() > 2 => Some(msg),
        _ => None,
    });
    let st: serde_json::Value = serde_json::from_str(&sent.unwrap()[2..]).unwrap();
    assert_eq!(
        (st["status"].as_str(), st["pid"].as_i64()),
        (Some("creating"), Some(CHILD as i64))
    );
}

/// Checks that a failed create left nothing and that the error names `want`: no state
/// directory; the child killed and reaped, then, if the cgroup was `made`, the cgroup
/// emptied and removed.
fn nothing_left(
    rt: &Runtime,
    host: &RecordingHost,
    err: virtkit_runtime::Error,
    want: &str,
    made: bool,
) {
    let msg = virtkit_runtime::error::chain(&err);
    assert!(msg.contains(want), "wanted {want:?} in {msg:?}");
    assert!(
        !rt.root().join("c1").exists(),
        "{want}: state directory left"
    );
    assert_eq!(
        host.cgroup_deleted(CG),
        made,
        "{want}: cgroup left or removed when not made"
    );
    assert_eq!(host.process_state(CHILD), Some('X'), "{want}: child left");
    let v = view(&host.calls());
    let tail: &[&str] = if made {
        &["kill 9", "wait", "cgroup KillAll", "cgroup Delete"]
    } else {
        &["kill 9", "wait"]
    };
    assert_eq!(v[v.len() - tail.len()..], *tail, "{want}: {v:?}");
}

#[test]
fn each_create_failure_after_the_clone_leaves_nothing() {
    let cases: Vec<(&str, Vec<Step>)> = vec![
        // Fails before reading "go" (its last words arrive all the same).
        (
            "placement failed",
            vec![Step::send("Eplacement failed"), Step::Die],
        ),
        // Dies without a word before "go".
        ("send \"go\" to container init", vec![Step::Die]),
        (
            "container init exited during setup",
            vec![Step::expect("go"), Step::Die],
        ),
        ("mount /proc: EPERM", fails_after_go("mount /proc: EPERM")),
        (
            "unexpected message from init",
            vec![Step::expect("go"), Step::send("what")],
        ),
        (
            "createContainer hook failed",
            vec![
                Step::expect("go"),
                Step::send("hooks"),
                Step::expect("go"),
                Step::send("EcreateContainer hook failed"),
                Step::Die,
            ],
        ),
    ];
    for (want, script) in cases {
        let (_t, rt, host) =
            setup(|c| c["hooks"] = serde_json::json!({"prestart": [{"path": "/bin/true"}]}));
        host.script_child(script);
        let e = rt.create(&CreateOpts::new("c1", bundle(&rt))).unwrap_err();
        nothing_left(&rt, &host, e, want, true);
    }
}

#[test]
fn host_side_failures_after_the_clone_leave_nothing() {
    // The cgroup cannot be made: nothing to remove but the child and the state.
    let (_t, rt, host) = setup(|_| {});
    host.fail_cgroup(CG, "create", libc::EACCES);
    let e = rt.create(&CreateOpts::new("c1", bundle(&rt))).unwrap_err();
    nothing_left(&rt, &host, e, "create cgroup virtkit/c1", false);
    assert!(!view(&host.calls()).contains(&"sent go".to_string()));
    // Its limits cannot be applied: the cgroup is killed and removed too.
    let (_t, rt, host) = setup(|_| {});
    host.fail_cgroup(CG, "apply", libc::EINVAL);
    let e = rt.create(&CreateOpts::new("c1", bundle(&rt))).unwrap_err();
    assert_calls(
        &host,
        &[
            &format!("spawn {NEWNS_NEWPID:#x}"),
            "cgroup Create",
            "cgroup Apply",
            "kill 9",
            "wait",
            "cgroup KillAll",
            "cgroup Delete",
        ],
    );
    nothing_left(&rt, &host, e, "apply resources", true);
    // A prestart hook fails.
    let (_t, rt, host) =
        setup(|c| c["hooks"] = serde_json::json!({"prestart": [{"path": "/bin/false"}]}));
    host.fail_hooks("prestart");
    host.script_child(vec![Step::expect("go"), Step::send("hooks")]);
    let e = rt.create(&CreateOpts::new("c1", bundle(&rt))).unwrap_err();
    nothing_left(&rt, &host, e, "prestart hook failed", true);
}

#[test]
fn create_without_a_mount_namespace_spawns_with_no_newns() {
    let (_t, rt, host) = setup(|c| c["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}]));
    rt.create(&CreateOpts::new("c1", bundle(&rt))).unwrap();
    assert_calls(
        &host,
        &[
            &format!("spawn {:#x}", libc::CLONE_NEWPID),
            "cgroup Create",
            "cgroup Apply",
            "sent go",
            "recv ready",
        ],
    );
}

/// Plays init blocked on the exec fifo: writes one byte once `start` opens it.
fn init_on_fifo(fifo: PathBuf) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
        f.write_all(b"0").unwrap();
    })
}

#[test]
fn start_releases_init_through_the_fifo_then_runs_poststart() {
    let (_t, rt, host) =
        setup(|c| c["hooks"] = serde_json::json!({"poststart": [{"path": "/bin/true"}]}));
    rt.create(&CreateOpts::new("c1", bundle(&rt))).unwrap();
    let fifo = rt.load("c1").unwrap().fifo();
    let before = host.calls().len();
    let t = init_on_fifo(fifo.clone());
    rt.start("c1").unwrap();
    t.join().unwrap();
    assert_eq!(view(&host.calls()[before..]), ["hooks poststart"]);
    assert!(!fifo.exists());
    assert_eq!(rt.status(&rt.load("c1").unwrap()), Status::Running);
    // Once more: refused, nothing done.
    let before = host.calls().len();
    assert!(rt.start("c1").unwrap_err().to_string().contains("running"));
    assert_eq!(host.calls().len(), before);
}

#[test]
fn start_of_a_container_whose_init_died_fails_and_runs_no_hook() {
    let (_t, rt, host) =
        setup(|c| c["hooks"] = serde_json::json!({"poststart": [{"path": "/bin/true"}]}));
    rt.create(&CreateOpts::new("c1", bundle(&rt))).unwrap();
    use virtkit_runtime::Host;
    host.kill(CHILD, libc::SIGKILL).unwrap();
    let e = rt.start("c1").unwrap_err();
    assert!(e.to_string().contains("stopped"), "{e}");
    assert!(!view(&host.calls()).iter().any(|c| c.starts_with("hooks")));
}

/// A running container `c1` whose init is this test process (so its namespaces are
/// ours: exec joins none and enters its root, `/`).
fn running(status_paused: bool) -> (tempfile::TempDir, Runtime, RecordingHost) {
    let (t, rt, host) = setup(|_| {});
    let me = std::process::id() as i32;
    let dir = rt.root().join("c1");
    std::fs::create_dir_all(&dir).unwrap();
    let c = Container {
        dir,
        saved: Saved {
            id: "c1".into(),
            pid: me,
            start_time: 5,
            bundle: bundle(&rt),
            rootfs: bundle(&rt).join("rootfs"),
            cgroup_path: CG.into(),
            create_done: true,
            ..Saved::default()
        },
    };
    c.save().unwrap();
    host.add_process(me, 5, CG);
    if status_paused {
        rt.pause("c1").unwrap();
    }
    (t, rt, host)
}

fn exec_opts(detach: bool, pid_file: Option<&Path>) -> ExecOpts {
    ExecOpts {
        id: "c1".into(),
        args: vec!["sh".into()],
        detach,
        pid_file: pid_file.map(Path::to_path_buf),
        ..ExecOpts::default()
    }
}

#[test]
fn exec_spawns_says_go_reads_ready_and_eof_then_waits() {
    let (t, rt, host) = running(false);
    host.script_child(vec![Step::expect("go"), Step::send("ready"), Step::Exec(7)]);
    let pf = t.path().join("exec.pid");
    assert_eq!(rt.exec(&exec_opts(false, Some(&pf))).unwrap(), 7);
    assert_calls(
        &host,
        &["spawn 0x0", "sent go", "recv ready", "recv ", "wait"],
    );
    assert_eq!(std::fs::read_to_string(pf).unwrap(), CHILD.to_string());
    // Detached: no wait, the process lives on.
    let (_t, rt, host) = running(false);
    assert_eq!(rt.exec(&exec_opts(true, None)).unwrap(), 0);
    assert_calls(&host, &["spawn 0x0", "sent go", "recv ready", "recv "]);
    assert_eq!(host.process_state(CHILD), Some('S'));
}

#[test]
fn each_exec_failure_after_the_clone_kills_and_reaps_the_child() {
    let cases: Vec<(&str, Vec<Step>, &[&str])> = vec![
        (
            "chdir to cwd",
            fails_after_go("chdir to cwd: ENOENT"),
            &[
                "spawn 0x0",
                "sent go",
                "recv Echdir to cwd: ENOENT",
                "kill 9",
                "wait",
            ],
        ),
        (
            "exec process exited during setup",
            vec![Step::expect("go"), Step::Die],
            &["spawn 0x0", "sent go", "recv ", "kill 9", "wait"],
        ),
        (
            "Broken pipe",
            vec![Step::Die],
            &["spawn 0x0", "sent go", "kill 9", "wait"],
        ),
        // execve itself failed, after "ready": the child exits by itself.
        (
            "exec \"sh\": not found",
            vec![
                Step::expect("go"),
                Step::send("ready"),
                Step::send("Eexec \"sh\": not found"),
                Step::Die,
            ],
            &[
                "spawn 0x0",
                "sent go",
                "recv ready",
                "recv Eexec \"sh\": not found",
                "wait",
            ],
        ),
    ];
    for (want, script, calls) in cases {
        let (t, rt, host) = running(false);
        host.script_child(script);
        let pf = t.path().join("exec.pid");
        let e = rt.exec(&exec_opts(true, Some(&pf))).unwrap_err();
        let msg = virtkit_runtime::error::chain(&e);
        assert!(msg.contains(want), "wanted {want:?} in {msg:?}");
        assert_calls(&host, calls);
        assert_eq!(host.process_state(CHILD), Some('X'), "{want}: child left");
        assert!(!pf.exists(), "{want}: pid file written");
        assert!(
            host.process_alive(std::process::id() as i32),
            "the container's init"
        );
    }
}

#[test]
fn exec_into_a_paused_container_needs_ignore_paused() {
    let (_t, rt, host) = running(true);
    let before = host.calls().len();
    let e = rt.exec(&exec_opts(true, None)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot exec in a paused container (use --ignore-paused to override)"
    );
    assert_eq!(host.calls().len(), before, "{:?}", host.calls());
    let o = ExecOpts {
        ignore_paused: true,
        ..exec_opts(true, None)
    };
    assert_eq!(rt.exec(&o).unwrap(), 0);
    assert_eq!(view(&host.calls()[before..])[0], "spawn 0x0");
}
