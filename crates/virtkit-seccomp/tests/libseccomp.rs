//! Our compiler against libseccomp (the reference runc and crun use): each profile is
//! compiled by both, both programs run through the same interpreter on many calls
//! (every rule's syscalls with arguments at the edges of each condition, other
//! syscalls, x32 numbers, other architectures), and the verdicts must be equal.
#![allow(clippy::unwrap_used)]

use virtkit_seccomp::testing::{differences, docker_like, inputs_for, reference, DiffError};
use virtkit_seccomp::{interp, Action, ArgCmp, CmpOp, Profile, Rule, SeccompData};

fn assert_same(p: &Profile) {
    let inputs = inputs_for(p);
    assert!(inputs.len() > 20);
    let d = differences(p, &inputs).unwrap();
    assert!(
        d.is_empty(),
        "{} of {} calls differ: {:x?}",
        d.len(),
        inputs.len(),
        &d[..d.len().min(5)]
    );
}

fn rule(nr: u32, action: Action, args: Vec<ArgCmp>) -> Rule {
    Rule {
        syscalls: vec![nr],
        action,
        args,
    }
}

fn cmp(index: u8, op: CmpOp, value: u64, value_two: u64) -> ArgCmp {
    ArgCmp {
        index,
        op,
        value,
        value_two,
    }
}

fn oci(json: &str) -> Profile {
    Profile::from_oci(&serde_json::from_str(json).unwrap()).unwrap()
}

#[test]
fn docker_default_profile_shape_matches() {
    assert_same(&docker_like());
}

#[test]
fn default_allow_with_kill_trap_errno_log_trace_rules_matches() {
    let p = Profile {
        default: Action::Allow,
        rules: vec![
            rule(165, Action::KillProcess, vec![]), // mount
            rule(246, Action::KillThread, vec![]),  // kexec_load
            rule(169, Action::Trap, vec![]),        // reboot
            rule(250, Action::Errno(38), vec![]),   // keyctl
            rule(101, Action::Trace(7), vec![]),    // ptrace
            rule(321, Action::Log, vec![]),         // bpf
            Rule {
                syscalls: vec![0, 1, 2],
                action: Action::Errno(13),
                args: vec![cmp(0, CmpOp::Eq, 99, 0)],
            },
        ],
        flags: 0,
    };
    assert_same(&p);
    // Every kind of default, with the same rules.
    for default in [
        Action::KillThread,
        Action::KillProcess,
        Action::Trap,
        Action::Errno(1),
        Action::Trace(3),
        Action::Log,
    ] {
        assert_same(&Profile {
            default,
            ..p.clone()
        });
    }
}

#[test]
fn every_operator_on_32_and_64_bit_values_matches() {
    let values = [
        0,
        1,
        5,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_ffff,
        1 << 32,
        0x1_0000_0005,
        0xdead_beef_0000_0000,
        u64::MAX,
    ];
    for op in [
        CmpOp::Ne,
        CmpOp::Lt,
        CmpOp::Le,
        CmpOp::Eq,
        CmpOp::Ge,
        CmpOp::Gt,
        CmpOp::MaskedEq,
    ] {
        for (i, &value) in values.iter().enumerate() {
            let index = (i % 6) as u8;
            for value_two in [value, value & 0xffff_0000_ffff, 0] {
                let p = Profile {
                    default: Action::Errno(1),
                    rules: vec![rule(
                        62,
                        Action::Allow,
                        vec![cmp(index, op, value, value_two)],
                    )],
                    flags: 0,
                };
                assert_same(&p);
            }
        }
    }
}

#[test]
fn several_rules_and_conditions_for_one_syscall_match() {
    // personality allowed for some values, the rest EPERM by an unconditional rule that
    // comes after: libseccomp lets the unconditional rule decide, and so do we.
    let p = oci(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
      {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"}]},
      {"names":["personality"],"action":"SCMP_ACT_ERRNO","errnoRet":1},
      {"names":["kill"],"action":"SCMP_ACT_ERRNO","errnoRet":13,"args":[{"index":1,"value":9,"op":"SCMP_CMP_GT"},{"index":0,"value":4294967296,"op":"SCMP_CMP_LE"}]},
      {"names":["kill"],"action":"SCMP_ACT_ERRNO","errnoRet":13,"args":[{"index":2,"value":3,"op":"SCMP_CMP_MASKED_EQ","valueTwo":1}]},
      {"names":["kill","tkill"],"action":"SCMP_ACT_ALLOW"},
      {"names":["dup"],"action":"SCMP_ACT_ERRNO","errnoRet":2,"args":[{"index":0,"value":4294967296,"op":"SCMP_CMP_LE"}]},
      {"names":["dup"],"action":"SCMP_ACT_ERRNO","errnoRet":2,"args":[{"index":1,"value":7,"op":"SCMP_CMP_NE"},{"index":5,"value":7,"op":"SCMP_CMP_LT"}]}
    ]}"#);
    assert_same(&p);
    assert_eq!(p.decide(135, &[0; 6]), Action::Errno(1));
}

#[test]
fn unknown_syscall_names_are_skipped_like_runc() {
    let p = oci(r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
      {"names":["read","no_such_call","arm_fadvise64_64","write"],"action":"SCMP_ACT_ALLOW"},
      {"names":["only_unknown"],"action":"SCMP_ACT_KILL"}
    ]}"#);
    assert_eq!(p.rules[0].syscalls, vec![0, 1]);
    assert!(p.rules[1].syscalls.is_empty());
    assert_same(&p);
}

#[test]
fn architectures_and_x32_numbers_are_handled_alike() {
    // A default-allow profile: x32 numbers and foreign architectures must not be let
    // through to the default (ours once gave x32 calls the default action).
    let p = Profile {
        default: Action::Allow,
        rules: vec![rule(250, Action::Errno(1), vec![])],
        flags: 0,
    };
    let ours = virtkit_seccomp::compile(&p).unwrap();
    let refp = reference(&p).unwrap();
    let enosys = Action::Errno(38).ret();
    for arch in [0x4000_0003, 0xc000_00b7, 0x4000_003e, 0] {
        let d = SeccompData {
            arch,
            ..SeccompData::x86_64(250, [0; 6])
        };
        assert_eq!(interp::run(&ours.insns, &d).unwrap(), enosys);
        assert_eq!(interp::run(&refp, &d).unwrap(), enosys);
    }
    let x32 = SeccompData::x86_64(250 | 0x4000_0000, [0; 6]);
    assert_eq!(interp::run(&ours.insns, &x32).unwrap(), enosys);
    assert_eq!(interp::run(&refp, &x32).unwrap(), enosys);
    // -1 (a call a tracer skipped) is not x32: the default.
    let skipped = SeccompData::x86_64(u32::MAX, [0; 6]);
    assert_eq!(
        interp::run(&ours.insns, &skipped).unwrap(),
        Action::Allow.ret()
    );
    assert_same(&p);
}

/// What stays different, by design: overlapping conditional rules for one syscall with
/// different actions. We take the first in profile order; libseccomp its own tree order.
/// The fuzz target keeps such profiles out (`normalize`).
#[test]
fn overlapping_conditional_rules_with_different_actions_are_the_known_difference() {
    let p = Profile {
        default: Action::Allow,
        rules: vec![
            rule(62, Action::Errno(1), vec![cmp(0, CmpOp::Eq, 1, 0)]),
            rule(62, Action::Errno(2), vec![cmp(1, CmpOp::Eq, 2, 0)]),
        ],
        flags: 0,
    };
    let d = differences(&p, &[SeccompData::x86_64(62, [1, 2, 0, 0, 0, 0])]).unwrap();
    assert_eq!(d.len(), 1, "libseccomp changed its precedence: {d:?}");
    // The same conditions with two actions: libseccomp refuses the second rule.
    let p = Profile {
        default: Action::Allow,
        rules: vec![
            rule(62, Action::Errno(1), vec![cmp(0, CmpOp::Eq, 1, 0)]),
            rule(62, Action::Errno(2), vec![cmp(0, CmpOp::Eq, 1, 0)]),
        ],
        flags: 0,
    };
    assert!(matches!(differences(&p, &[]), Err(DiffError::Reference(_))));
}

/// Found by the `seccomp_diff` fuzz target: `SCMP_CMP_MASKED_EQ` whose expected value
/// has bits outside the mask. libseccomp masks it too (`arg & mask == value & mask`);
/// ours compared with the value as given, so the rule could never match.
#[test]
fn masked_eq_with_value_bits_outside_the_mask_matches() {
    let p = Profile {
        default: Action::Errno(1),
        rules: vec![rule(
            56,
            Action::Allow,
            vec![cmp(0, CmpOp::MaskedEq, 0x7e02_0000, 8)],
        )],
        flags: 0,
    };
    assert_eq!(p.decide(56, &[0; 6]), Action::Allow);
    assert_eq!(p.decide(56, &[0x2_0000, 0, 0, 0, 0, 0]), Action::Errno(1));
    assert_same(&p);
}

/// Found by the `seccomp_diff` fuzz target, a libseccomp (2.5.4) defect, not ours: two
/// KILL rules for one syscall, `arg0 <= 0 && arg2 != 0x7fffffff` and
/// `arg3 == X && arg0 < 0`. The call `(0, 0, 0x7fffffff, X)` matches neither, yet
/// libseccomp's merged tree kills it. Ours gives the default, as the model does.
#[test]
fn libseccomp_merged_chains_defect_is_told_apart() {
    let x = 0xff06_0003_0100_0601;
    let p = Profile {
        default: Action::Log,
        rules: vec![
            rule(
                146,
                Action::KillThread,
                vec![cmp(0, CmpOp::Le, 0, 0), cmp(2, CmpOp::Ne, 0x7fff_ffff, 0)],
            ),
            rule(
                146,
                Action::KillThread,
                vec![cmp(3, CmpOp::Eq, x, 0), cmp(0, CmpOp::Lt, 0, 0)],
            ),
        ],
        flags: 0,
    };
    let call = SeccompData::x86_64(146, [0, 0, 0x7fff_ffff, x, 0, 0]);
    assert_eq!(p.decide(146, &call.args), Action::Log);
    let d = differences(&p, &[call]).unwrap();
    if !d.is_empty() {
        // Still libseccomp's defect: ours is the model's verdict.
        assert_eq!(d[0].ours, Action::Log.ret());
        assert_eq!(virtkit_seccomp::testing::reference_errors(&p, &d), d.len());
    }
}
