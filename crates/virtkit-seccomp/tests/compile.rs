//! The compiler on its own (moved from container-runner's seccomp module): OCI
//! profiles compiled and run through the interpreter, checked against
//! `Profile::decide`, the model's own answer.
#![allow(clippy::unwrap_used)]

use oci_spec::runtime::LinuxSeccomp;
use virtkit_seccomp::testing::inputs_for;
use virtkit_seccomp::{compile, interp, table, Action, Profile, SeccompData, X32_SYSCALL_BIT};

fn profile(json: &str) -> Profile {
    let s: LinuxSeccomp = serde_json::from_str(json).unwrap();
    Profile::from_oci(&s).unwrap()
}

fn run(p: &Profile, nr: u32, args: [u64; 6]) -> u32 {
    let prog = compile(p).unwrap();
    interp::run(&prog.insns, &SeccompData::x86_64(nr, args)).unwrap()
}

/// Our program decides what the model decides, on every native call of `inputs_for`.
fn agrees_with_model(p: &Profile) {
    let prog = compile(p).unwrap();
    for d in inputs_for(p) {
        if d.arch == virtkit_seccomp::AUDIT_ARCH_X86_64
            && (d.nr < X32_SYSCALL_BIT || d.nr == u32::MAX)
        {
            assert_eq!(
                interp::run(&prog.insns, &d).unwrap(),
                p.decide(d.nr, &d.args).ret(),
                "{d:x?}"
            );
        }
    }
}

const EPERM: u32 = 0x0005_0001;

#[test]
fn allowlist_with_errno_default() {
    let p = profile(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,
            "syscalls":[{"names":["read","write","no_such_call"],"action":"SCMP_ACT_ALLOW"}]}"#,
    );
    assert_eq!(run(&p, 0, [0; 6]), Action::Allow.ret()); // read
    assert_eq!(run(&p, 1, [0; 6]), Action::Allow.ret()); // write
    assert_eq!(run(&p, 2, [0; 6]), EPERM); // open
    assert_eq!(run(&p, 0x4000_0000, [0; 6]), Action::Errno(38).ret()); // x32: ENOSYS
    agrees_with_model(&p);
}

#[test]
fn argument_conditions() {
    // personality(0) and personality(8) allowed, others EPERM; kill with sig > 9 denied.
    let p = profile(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,"syscalls":[
          {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"}]},
          {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
          {"names":["kill"],"action":"SCMP_ACT_ALLOW","args":[{"index":1,"value":9,"op":"SCMP_CMP_LE"}]},
          {"names":["clone"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]},
          {"names":["dup"],"action":"SCMP_ACT_ERRNO","errnoRet":2,"args":[{"index":0,"value":4294967296,"op":"SCMP_CMP_LE"}]},
          {"names":["dup"],"action":"SCMP_ACT_ALLOW"}
        ]}"#,
    );
    let personality = 135;
    assert_eq!(run(&p, personality, [0; 6]), Action::Allow.ret());
    assert_eq!(
        run(&p, personality, [8, 0, 0, 0, 0, 0]),
        Action::Allow.ret()
    );
    assert_eq!(run(&p, personality, [9, 0, 0, 0, 0, 0]), EPERM);
    assert_eq!(run(&p, personality, [1 << 32, 0, 0, 0, 0, 0]), EPERM);
    let kill = 62;
    assert_eq!(run(&p, kill, [1, 9, 0, 0, 0, 0]), Action::Allow.ret());
    assert_eq!(run(&p, kill, [1, 10, 0, 0, 0, 0]), EPERM);
    assert_eq!(run(&p, kill, [1, 1 << 33, 0, 0, 0, 0]), EPERM);
    let clone = 56;
    assert_eq!(run(&p, clone, [0x11, 0, 0, 0, 0, 0]), Action::Allow.ret());
    assert_eq!(run(&p, clone, [0x1000_0000, 0, 0, 0, 0, 0]), EPERM);
    // dup: the unconditional ALLOW overrides the conditional ERRNO, as in libseccomp.
    assert_eq!(run(&p, 32, [5, 0, 0, 0, 0, 0]), Action::Allow.ret());
    agrees_with_model(&p);
}

#[test]
fn rules_with_the_default_action_are_dropped_like_runc() {
    // The first rule has the default's action: runc skips it, so kill(_, 10) is allowed.
    let p = profile(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
          {"names":["kill"],"action":"SCMP_ACT_ERRNO","args":[{"index":1,"value":9,"op":"SCMP_CMP_GT"}]},
          {"names":["kill"],"action":"SCMP_ACT_ALLOW"}
        ]}"#,
    );
    assert_eq!(run(&p, 62, [1, 10, 0, 0, 0, 0]), Action::Allow.ret());
    agrees_with_model(&p);
}

#[test]
fn large_profiles_compile() {
    // 300 single-syscall rules, like podman's and docker's default profiles.
    let rules: Vec<String> = table::SYSCALLS
        .iter()
        .take(300)
        .map(|(n, _)| format!(r#"{{"names":["{n}"],"action":"SCMP_ACT_ALLOW"}}"#))
        .collect();
    let p = profile(&format!(
        r#"{{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{}]}}"#,
        rules.join(",")
    ));
    assert_eq!(run(&p, 0x4000_0000, [0; 6]), Action::Errno(38).ret());
    let (_, last) = table::SYSCALLS[299];
    assert_eq!(run(&p, last, [0; 6]), Action::Allow.ret());
    agrees_with_model(&p);
}

#[test]
fn invalid_profiles_are_refused() {
    let bad = |json: &str| Profile::from_oci(&serde_json::from_str(json).unwrap()).is_err();
    assert!(bad(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#));
    assert!(bad(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":65536}"#
    ));
    assert!(bad(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_KILL","args":[{"index":6,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#
    ));
    // Too many instructions: 300 syscalls with three conditions each.
    let names: Vec<String> = table::SYSCALLS
        .iter()
        .take(300)
        .map(|(n, _)| format!("{n:?}"))
        .collect();
    let args = (0..3)
        .map(|i| format!(r#"{{"index":{i},"value":1,"op":"SCMP_CMP_EQ"}}"#))
        .collect::<Vec<_>>()
        .join(",");
    let json = format!(
        r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{{"names":[{}],"action":"SCMP_ACT_KILL","args":[{args}]}}]}}"#,
        names.join(",")
    );
    assert!(compile(&profile(&json)).is_err());
}

#[test]
fn notify_rules_return_user_notif_as_libseccomp_does() {
    let p = profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_NOTIFY"}]}"#,
    );
    assert!(p.needs_listener());
    assert_eq!(run(&p, 83, [0; 6]), virtkit_seccomp::ret::USER_NOTIF); // mkdir
    assert_eq!(run(&p, 0, [0; 6]), Action::Allow.ret()); // read
    agrees_with_model(&p);
    let diffs =
        virtkit_seccomp::testing::differences(&p, &virtkit_seccomp::testing::inputs_for(&p))
            .unwrap();
    assert!(diffs.is_empty(), "libseccomp decides otherwise: {diffs:?}");
    assert!(!profile(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#).needs_listener());
}
