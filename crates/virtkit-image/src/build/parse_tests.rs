//! Dockerfile parser tests, good and bad input.

use super::dockerfile::{parse, substitute, words, Command, Instruction};
use crate::ImageError;

fn one(text: &str) -> Instruction {
    let steps = parse(&format!("FROM scratch\n{text}\n")).unwrap();
    assert_eq!(steps.len(), 2, "{steps:?}");
    steps[1].instruction.clone()
}

fn line_of(text: &str) -> (usize, String) {
    match parse(text) {
        Err(ImageError::Dockerfile { line, why }) => (line, why),
        other => panic!("{text:?}: {other:?}"),
    }
}

#[test]
fn a_whole_dockerfile() {
    let text = "# a comment\nARG BASE=busybox\nFROM $BASE AS build\n\nRUN echo a \\\n  && echo b\n\
        # inside\nCOPY a.txt /app/\nENV A=1 B=\"two words\"\nWORKDIR /app\nCMD [\"sh\", \"-c\", \"echo\"]\n";
    let steps = parse(text).unwrap();
    let lines: Vec<usize> = steps.iter().map(|s| s.line).collect();
    assert_eq!(lines, [2, 3, 5, 8, 9, 10, 11]);
    assert_eq!(
        steps[2].instruction,
        Instruction::Run(Command::Shell("echo a && echo b".into()))
    );
    assert_eq!(
        steps[4].instruction,
        Instruction::Env(vec![
            ("A".into(), "1".into()),
            ("B".into(), "two words".into())
        ])
    );
    assert_eq!(
        steps[6].instruction,
        Instruction::Cmd(Command::Exec(vec!["sh".into(), "-c".into(), "echo".into()]))
    );
    assert_eq!(
        steps[1].instruction,
        Instruction::From {
            image: "$BASE".into(),
            alias: Some("build".into())
        }
    );
}

#[test]
fn run_forms() {
    assert_eq!(
        one("RUN [\"/bin/echo\", \"hi\"]"),
        Instruction::Run(Command::Exec(vec!["/bin/echo".into(), "hi".into()]))
    );
    // Not valid JSON: shell form, as Docker falls back.
    assert_eq!(
        one("RUN [not json"),
        Instruction::Run(Command::Shell("[not json".into()))
    );
    assert_eq!(
        one("run echo lower-case keyword"),
        Instruction::Run(Command::Shell("echo lower-case keyword".into()))
    );
    assert_eq!(Command::Shell("x".into()).argv(), ["/bin/sh", "-c", "x"]);
}

#[test]
fn env_label_arg_expose_user_workdir() {
    assert_eq!(
        one("ENV PATH /usr/bin:/bin and more"),
        Instruction::Env(vec![("PATH".into(), "/usr/bin:/bin and more".into())])
    );
    assert_eq!(
        one("LABEL a=b 'c d'=\"e\\\"f\""),
        Instruction::Label(vec![
            ("a".into(), "b".into()),
            ("c d".into(), "e\"f".into())
        ])
    );
    assert_eq!(
        one("ARG V"),
        Instruction::Arg {
            name: "V".into(),
            default: None
        }
    );
    assert_eq!(
        one("EXPOSE 80 53/udp 8000-8010"),
        Instruction::Expose(vec!["80".into(), "53/udp".into(), "8000-8010".into()])
    );
    assert_eq!(one("USER 1000:1000"), Instruction::User("1000:1000".into()));
    assert_eq!(
        one("WORKDIR \"/my dir\""),
        Instruction::Workdir("/my dir".into())
    );
}

#[test]
fn copy_and_add() {
    assert_eq!(
        one("COPY a b /dst/"),
        Instruction::Copy {
            sources: vec!["a".into(), "b".into()],
            dest: "/dst/".into()
        }
    );
    assert_eq!(
        one("ADD [\"x y.tar\", \"/opt\"]"),
        Instruction::Add {
            sources: vec!["x y.tar".into()],
            dest: "/opt".into()
        }
    );
}

#[test]
fn errors_name_their_line() {
    let cases: &[(&str, usize, &str)] = &[
        ("FROM scratch\nFROBNICATE x\n", 2, "unknown instruction"),
        ("FROM scratch\n\nRUN\n", 3, "needs arguments"),
        (
            "FROM scratch\nCOPY onlyone\n",
            2,
            "source and a destination",
        ),
        ("FROM scratch\nCOPY --chown=1 a b\n", 2, "not supported"),
        ("FROM scratch\nADD https://example.com/x /x\n", 2, "URLs"),
        ("FROM scratch\nADD git@github.com:a/b /x\n", 2, "URLs"),
        ("FROM scratch\nENV A\n", 2, "no value"),
        ("FROM scratch\nENV A=1 B\n", 2, "KEY=VALUE"),
        ("FROM scratch\nENV =1\n", 2, "bad name"),
        ("FROM scratch\nLABEL a=\"unterminated\n", 2, "unterminated"),
        ("FROM scratch\nEXPOSE http\n", 2, "EXPOSE"),
        ("FROM scratch\nEXPOSE 80/xyz\n", 2, "EXPOSE"),
        ("FROM scratch\nEXPOSE 70000\n", 2, "EXPOSE"),
        ("FROM scratch\nWORKDIR a b\n", 2, "one directory"),
        ("FROM scratch\nUSER\n", 2, "needs arguments"),
        ("FROM scratch\nCMD []\n", 2, "empty command"),
        ("FROM scratch\nHEALTHCHECK NONE\n", 2, "not supported"),
        (
            "FROM scratch\nRUN --mount=type=cache true\n",
            2,
            "not supported",
        ),
        ("RUN echo\nFROM scratch\n", 1, "first instruction"),
        ("# only a comment\n", 1, "no FROM"),
        ("FROM a\nFROM b\n", 2, "multi-stage"),
        ("FROM --platform=linux/arm64 a\n", 1, "not supported"),
        ("FROM a b c d\n", 1, "IMAGE [AS NAME]"),
        ("FROM scratch\nRUN a \\\n b\nBAD\n", 4, "needs arguments"),
    ];
    for (text, line, needle) in cases {
        let (l, why) = line_of(text);
        assert_eq!(l, *line, "{text:?}: {why}");
        assert!(why.contains(needle), "{text:?}: {why}");
    }
}

#[test]
fn continuations_and_comments() {
    // A trailing backslash on the last line, comment lines inside a continuation.
    let steps = parse("FROM scratch\nRUN a \\\n# skipped\n  b \\\n").unwrap();
    assert_eq!(
        steps[1].instruction,
        Instruction::Run(Command::Shell("a b".into()))
    );
    assert_eq!(steps[1].line, 2);
    // CRLF line endings.
    let steps = parse("FROM scratch\r\nCMD x\r\n").unwrap();
    assert_eq!(
        steps[1].instruction,
        Instruction::Cmd(Command::Shell("x".into()))
    );
}

#[test]
fn huge_input_is_refused() {
    let text = "#".repeat(super::dockerfile::MAX_DOCKERFILE + 1);
    assert!(matches!(parse(&text), Err(ImageError::TooLarge { .. })));
}

#[test]
fn words_and_substitution() {
    assert_eq!(
        words(1, r#"a "b c" 'd $e' f\ g"#).unwrap(),
        ["a", "b c", "d $e", "f g"]
    );
    let vars = |n: &str| (n == "A").then(|| "x".to_string());
    assert_eq!(
        substitute("$A ${A} ${B:-dflt} ${A:-no} \\$A $B.", &vars),
        "x x dflt x $A ."
    );
    assert_eq!(substitute("${unclosed", &vars), "${unclosed");
    assert_eq!(substitute("$", &vars), "$");
}
