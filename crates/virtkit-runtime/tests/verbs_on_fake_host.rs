//! The verbs on existing containers (state, kill, delete, pause, resume, update, ps),
//! run on the recording host: the exact calls each makes, and what each error path
//! leaves behind. No root, no kernel: the container's processes and cgroup are the
//! fake's.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use virtkit_runtime::state::{Container, Saved, Status};
use virtkit_runtime::testing::{Call, CgroupOp, RecordingHost};
use virtkit_runtime::{Host, Runtime};

const PID: i32 = 4242;
const START: u64 = 777;
const CG: &str = "virtkit/c1";

/// A state root holding container `c1` (created, init `PID`) with a bundle whose
/// config has one poststop and one poststart hook; `created` leaves the exec fifo.
fn setup(created: bool) -> (tempfile::TempDir, Runtime, RecordingHost) {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
    std::fs::write(
        bundle.join("config.json"),
        r#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"},
            "hooks": {"poststart": [{"path": "/bin/true"}],
                      "poststop": [{"path": "/bin/true"}, {"path": "/bin/true"}]}}"#,
    )
    .unwrap();
    let root = tmp.path().join("state");
    let dir = root.join("c1");
    std::fs::create_dir_all(&dir).unwrap();
    let c = Container {
        dir: dir.clone(),
        saved: Saved {
            id: "c1".into(),
            pid: PID,
            start_time: START,
            bundle: bundle.clone(),
            rootfs: bundle.join("rootfs"),
            cgroup_path: CG.into(),
            create_done: true,
            ..Saved::default()
        },
    };
    c.save().unwrap();
    if created {
        std::fs::write(c.fifo(), b"").unwrap();
    }
    let host = RecordingHost::new();
    host.add_process(PID, START, CG);
    let rt = Runtime::with_host(root, Arc::new(host.clone()));
    (tmp, rt, host)
}

fn cg(op: CgroupOp) -> Call {
    Call::Cgroup {
        path: CG.into(),
        op,
    }
}

fn status(rt: &Runtime) -> Status {
    rt.status(&rt.load("c1").unwrap())
}

#[test]
fn status_follows_the_fifo_the_process_and_the_freezer() {
    let (_t, rt, host) = setup(true);
    assert_eq!(status(&rt), Status::Created);
    assert_eq!(rt.state("c1").unwrap()["status"], "created");
    std::fs::remove_file(rt.load("c1").unwrap().fifo()).unwrap();
    assert_eq!(status(&rt), Status::Running);
    rt.pause("c1").unwrap();
    assert_eq!(status(&rt), Status::Paused);
    host.kill(PID, libc::SIGKILL).unwrap();
    assert_eq!(status(&rt), Status::Stopped);
    assert_eq!(
        rt.state("c1").unwrap()["pid"],
        0,
        "a stopped container shows pid 0"
    );
}

#[test]
fn a_reused_pid_is_not_the_container() {
    let (_t, rt, host) = setup(false);
    // The same pid, started at another time: another process.
    let host2 = RecordingHost::new();
    host2.add_process(PID, START + 1, CG);
    let rt2 = Runtime::with_host(rt.root(), Arc::new(host2.clone()));
    assert_eq!(status(&rt2), Status::Stopped);
    assert!(rt2.kill("c1", libc::SIGTERM, false).is_err());
    assert!(host2.process_alive(PID), "kill must not reach a reused pid");
    assert_eq!(status(&rt), Status::Running);
    drop(host);
}

#[test]
fn kill_signals_init_and_kill_all_the_cgroup() {
    let (_t, rt, host) = setup(false);
    rt.kill("c1", libc::SIGUSR1, false).unwrap();
    rt.kill("c1", libc::SIGHUP, true).unwrap();
    assert_eq!(
        host.calls(),
        vec![
            Call::Kill {
                pid: PID,
                sig: libc::SIGUSR1
            },
            cg(CgroupOp::SignalAll(libc::SIGHUP)),
        ]
    );
}

#[test]
fn kill_of_a_stopped_or_unknown_container_fails_and_sends_nothing() {
    let (_t, rt, host) = setup(false);
    host.kill(PID, libc::SIGKILL).unwrap();
    let before = host.calls().len();
    let e = rt.kill("c1", libc::SIGTERM, false).unwrap_err();
    assert_eq!(e.to_string(), "container not running");
    let e = rt.kill("nope", libc::SIGTERM, false).unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert_eq!(host.calls().len(), before);
    let e = rt.kill("../c1", libc::SIGTERM, false).unwrap_err();
    assert!(e.to_string().contains("invalid container id"), "{e}");
}

#[test]
fn delete_of_a_running_container_needs_force_and_touches_nothing() {
    let (_t, rt, host) = setup(false);
    let e = rt.delete("c1", false).unwrap_err();
    assert!(e.to_string().contains("not stopped: running"), "{e}");
    assert!(host.calls().is_empty(), "{:?}", host.calls());
    assert!(rt.load("c1").is_ok(), "the state must stay");
    assert!(host.process_alive(PID));
}

#[test]
fn delete_force_kills_removes_the_cgroup_runs_poststop_then_the_state() {
    let (_t, rt, host) = setup(false);
    rt.delete("c1", true).unwrap();
    assert_eq!(
        host.calls(),
        vec![
            Call::Kill {
                pid: PID,
                sig: libc::SIGKILL
            },
            cg(CgroupOp::KillAll),
            cg(CgroupOp::Delete),
            Call::Hooks {
                kind: "poststop".into(),
                count: 1
            },
            Call::Hooks {
                kind: "poststop".into(),
                count: 1
            },
        ]
    );
    assert!(rt.load("c1").unwrap_err().is_not_found());
    assert!(!host.process_alive(PID));
    assert!(host.cgroup_deleted(CG));
}

#[test]
fn delete_of_a_paused_container_thaws_it_first() {
    let (_t, rt, host) = setup(false);
    rt.pause("c1").unwrap();
    rt.delete("c1", true).unwrap();
    let calls = host.calls();
    let thaw = calls.iter().position(|c| *c == cg(CgroupOp::Thaw)).unwrap();
    let kill_all = calls
        .iter()
        .position(|c| *c == cg(CgroupOp::KillAll))
        .unwrap();
    assert!(thaw < kill_all, "{calls:?}");
}

#[test]
fn a_failed_cgroup_removal_keeps_the_state_for_a_retry() {
    let (_t, rt, host) = setup(false);
    host.fail_cgroup(CG, "delete", libc::EBUSY);
    let e = rt.delete("c1", true).unwrap_err();
    assert!(
        virtkit_runtime::error::chain(&e).contains("remove cgroup virtkit/c1"),
        "{e}"
    );
    // No poststop hook ran and the state is still there, so `delete` can be retried.
    assert!(!host.calls().iter().any(|c| matches!(c, Call::Hooks { .. })));
    assert_eq!(status(&rt), Status::Stopped);
    let host_ok = RecordingHost::new();
    let rt2 = Runtime::with_host(rt.root(), Arc::new(host_ok.clone()));
    rt2.delete("c1", false).unwrap();
    assert!(rt2.load("c1").unwrap_err().is_not_found());
}

#[test]
fn a_failing_poststop_hook_is_only_a_warning_and_the_next_still_runs() {
    let (_t, rt, host) = setup(false);
    host.fail_hooks("poststop");
    rt.delete("c1", true).unwrap();
    assert!(rt.load("c1").unwrap_err().is_not_found());
    let poststops = host
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::Hooks { kind, .. } if kind == "poststop"))
        .count();
    assert_eq!(poststops, 2, "both hooks ran: {:?}", host.calls());
}

#[test]
fn delete_force_of_an_unknown_id_succeeds_and_of_a_broken_state_removes_it() {
    let (_t, rt, host) = setup(false);
    rt.delete("ghost", true).unwrap();
    assert!(rt.delete("ghost", false).unwrap_err().is_not_found());
    let broken = rt.root().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("state.json"), b"{not json").unwrap();
    assert!(rt.delete("broken", false).is_err());
    assert!(broken.exists());
    rt.delete("broken", true).unwrap();
    assert!(!broken.exists());
    assert!(host.calls().is_empty(), "{:?}", host.calls());
}

#[test]
fn pause_and_resume_check_the_state_first() {
    let (_t, rt, host) = setup(false);
    assert_eq!(
        rt.resume("c1").unwrap_err().to_string(),
        "container not paused"
    );
    rt.pause("c1").unwrap();
    assert!(host.cgroup_frozen(CG));
    assert_eq!(
        rt.pause("c1").unwrap_err().to_string(),
        "container not running"
    );
    rt.resume("c1").unwrap();
    assert!(!host.cgroup_frozen(CG));
    assert_eq!(host.calls(), vec![cg(CgroupOp::Freeze), cg(CgroupOp::Thaw)]);
}

#[test]
fn a_failed_freeze_leaves_the_container_running() {
    let (_t, rt, host) = setup(false);
    host.fail_cgroup(CG, "freeze", libc::EIO);
    assert!(rt.pause("c1").is_err());
    assert_eq!(status(&rt), Status::Running);
}

#[test]
fn update_applies_parsed_resources_and_rejects_bad_json() {
    let (_t, rt, host) = setup(false);
    rt.update(
        "c1",
        br#"{"memory": {"limit": 67108864}, "pids": {"limit": 10}}"#,
    )
    .unwrap();
    assert_eq!(host.calls(), vec![cg(CgroupOp::Apply)]);
    let e = rt.update("c1", b"{\"memory\": ").unwrap_err();
    assert!(e.to_string().contains("parse resources JSON"), "{e}");
    assert_eq!(host.calls().len(), 1, "bad input applies nothing");
}

#[test]
fn ps_lists_the_live_processes_of_the_cgroup() {
    let (_t, rt, host) = setup(false);
    host.add_process(PID + 1, 5, CG);
    host.add_process(9999, 5, "elsewhere");
    assert_eq!(rt.pids("c1").unwrap(), vec![PID, PID + 1]);
    host.kill(PID + 1, libc::SIGKILL).unwrap();
    assert_eq!(rt.pids("c1").unwrap(), vec![PID]);
}

#[test]
fn list_skips_unreadable_states() {
    let (_t, rt, _host) = setup(false);
    std::fs::create_dir_all(rt.root().join("half-made")).unwrap();
    let ids: Vec<String> = rt.list().into_iter().map(|c| c.saved.id).collect();
    assert_eq!(ids, vec!["c1".to_string()]);
    assert!(Path::new(rt.root()).join("half-made").exists());
}
