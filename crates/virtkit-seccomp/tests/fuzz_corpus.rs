//! Replays the committed inputs of the `seccomp_diff` fuzz target
//! (`fuzz/corpus/seccomp_diff/`, and `fuzz/regressions/seccomp_diff/` when present)
//! through `virtkit_seccomp::testing::seccomp_diff` on stable Rust: every input is
//! compiled by us and by libseccomp and the verdicts compared.
#![allow(clippy::unwrap_used)]

use virtkit_lab::fuzz_corpus::{replay, seed};
use virtkit_seccomp::testing;
use virtkit_seccomp::{Action, CmpOp};

#[test]
fn seccomp_diff_corpus_replays() {
    replay("seccomp_diff", testing::seccomp_diff);
}

/// The seeds decode to the profiles they are named after, and both compilers agree.
#[test]
fn seccomp_diff_seeds_decode_as_named() {
    let (p, calls) = testing::decode(&seed("seccomp_diff", "errno-allowlist"));
    assert_eq!(p.default, Action::Errno(1));
    assert_eq!(p.rules[0].syscalls, vec![0, 1, 2]);
    assert_eq!(p.rules[1].args[0].op, CmpOp::Eq);
    assert_eq!(p.rules[2].args[0].op, CmpOp::MaskedEq);
    assert!(!calls.is_empty());
    let (p, calls) = testing::decode(&seed("seccomp_diff", "allow-denylist"));
    assert_eq!(p.default, Action::Allow);
    assert_eq!(p.rules.len(), 5);
    assert!(calls
        .iter()
        .any(|c| c.nr & virtkit_seccomp::X32_SYSCALL_BIT != 0));
    let (p, _) = testing::decode(&seed("seccomp_diff", "edges-64bit"));
    assert_eq!(p.default, Action::Trap);
    assert!(p
        .rules
        .iter()
        .flat_map(|r| &r.args)
        .any(|a| a.value > u64::from(u32::MAX)));
    let (p, _) = testing::decode(&seed("seccomp_diff", "catch-all-after-conditional"));
    assert_eq!(p.decide(135, &[1, 0, 0, 0, 0, 0]), Action::Errno(2));
    for name in [
        "errno-allowlist",
        "allow-denylist",
        "edges-64bit",
        "catch-all-after-conditional",
    ] {
        let n = testing::seccomp_diff(&seed("seccomp_diff", name)).unwrap();
        assert!(n > 20, "{name}: {n} calls");
    }
}
