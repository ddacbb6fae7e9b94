//! Tests of the result-line parsing, the report's rendering, the docs update and the
//! plot (no benchmark runs).

use super::report::{
    figures_table, parse_output, parse_result_line, render_markdown, Cmp, GroupRun, Machine,
    Report, Target, TargetOf,
};
use super::*;

/// What the scripts print (copied from their output), one group each.
const BOOT: &str = "boot to /init marker: 1 vCPU(s), 128 MiB, vmlinux, 7 runs each (venue lab)\n\
  vm-runner  median   1609.0 ms   min   1500.0 ms   max   1700.0 ms\n\
RESULT name=boot-1vcpu-128mib-vmlinux value=1609.0 unit=ms peer=qemu-microvm peer_value=2018.0 target_ratio=<=0.80 label=\"exec to /init marker (median): 1 vCPU(s), 128 MiB, vmlinux, 7 runs each\"\n";
const MEMORY: &str = "vmm-memory: rss_kib=6976 guest_touched_kib=4096 overhead_mib=2.81 (target <= 5)\n\
RESULT name=memory-overhead value=2.81 unit=MiB peer=qemu-microvm peer_value=33.43 target_value=<=5 label=\"RSS minus touched guest RAM, 1 vCPU, 128 MiB, idle guest\"\n";
const STARTUP_NO_PEER: &str =
    "RESULT name=startup-cpu-k value=2.0 unit=ms target_value=<=8 label=\"tiny ELF\"\n";
const QCOW2: &str = "RESULT name=read-4k-l2-cached value=113250.000 unit=IOPS peer=qemu-img peer_value=70398.000 target_ratio=>=1.0 label=\"4 KiB reads\"\n\
RESULT name=convert-raw-to-qcow2 value=0.489 unit=s peer=qemu-img peer_value=0.503 target_ratio=<=1.0 label=\"convert\"\n";
const CONTAINERS: &str = "RESULT name=run-median-vs-runc value=6.100 unit=ms peer=runc peer_value=32.900 label=\"run of busybox true, median wall time, 200 runs\"\n\
RESULT-MISSING run-cpu-vs-crun: no successful runs of container-runner or crun\n";

fn sample_report() -> Report {
    let mut figures = Vec::new();
    for (group, out) in [
        ("boot", BOOT),
        ("vmm-memory", MEMORY),
        ("vmm-startup", STARTUP_NO_PEER),
        ("qcow2", QCOW2),
    ] {
        let (f, e) = parse_output(group, out);
        assert!(e.is_empty(), "{e:?}");
        figures.extend(f);
    }
    let group = |name: &str, ok: bool, error: Option<&str>| GroupRun {
        name: name.into(),
        title: format!("{name} title"),
        command: format!("benches/scripts/{name}.sh"),
        measures: "things | stuff".into(),
        ok,
        error: error.map(str::to_string),
        seconds: 75.4,
        log: Some(format!("target/bench/logs/{name}.log")),
    };
    Report {
        quick: true,
        date: "2026-12-07T06:40:12Z".into(),
        commit: "abc1234".into(),
        command: "cargo xtask bench --quick".into(),
        machine: Machine {
            cores: 2,
            cpu_model: "AMD EPYC 7B13".into(),
            kernel: "6.18.0".into(),
            memory_gib: 23.5,
        },
        load_start: [3.01, 4.06, 2.99],
        load_end: [5.5, 4.0, 3.0],
        seconds: 512.0,
        builds_seconds: 100.0,
        groups: vec![
            group("boot", true, None),
            group("containers", false, Some("prerequisite missing: not root")),
        ],
        figures,
    }
}

#[test]
fn a_result_line_with_a_peer_and_a_ratio_target() {
    let f = parse_result_line("boot", BOOT.lines().nth(2).expect("line")).expect("parses");
    assert_eq!(f.group, "boot");
    assert_eq!(f.name, "boot-1vcpu-128mib-vmlinux");
    assert_eq!(f.value, 1609.0);
    assert_eq!(f.unit, "ms");
    assert_eq!(f.peer.as_deref(), Some("qemu-microvm"));
    assert_eq!(f.peer_value, Some(2018.0));
    let r = f.ratio.expect("ratio");
    assert!((r - 1609.0 / 2018.0).abs() < 1e-12);
    assert_eq!(
        f.target,
        Some(Target {
            of: TargetOf::Ratio,
            cmp: Cmp::AtMost,
            limit: 0.8
        })
    );
    assert_eq!(f.met, Some(true));
    assert_eq!(
        f.label,
        "exec to /init marker (median): 1 vCPU(s), 128 MiB, vmlinux, 7 runs each"
    );
}

#[test]
fn absolute_targets_judge_the_value_and_higher_is_better_targets_the_ratio() {
    let (f, e) = parse_output("x", MEMORY);
    assert!(e.is_empty());
    assert_eq!(f[0].met, Some(true), "2.81 MiB <= 5 MiB");
    assert_eq!(f[0].plotted(), Some((2.81 / 5.0, Some(1.0))));
    let (f, _) = parse_output("x", STARTUP_NO_PEER);
    assert_eq!((f[0].peer.clone(), f[0].ratio), (None, None));
    assert_eq!(f[0].met, Some(true));
    let (f, _) = parse_output("qcow2", QCOW2);
    assert_eq!(f.len(), 2);
    assert_eq!(f[0].met, Some(true), "1.61x IOPS >= 1.0");
    assert_eq!(f[1].met, Some(true), "0.97x time <= 1.0");
    let slow = parse_result_line(
        "qcow2",
        "RESULT name=r value=50 unit=IOPS peer=qemu-img peer_value=100 target_ratio=>=1.0",
    )
    .expect("parses");
    assert_eq!((slow.met, slow.label.as_str()), (Some(false), "r"));
}

#[test]
fn no_target_and_missing_figures() {
    let (f, e) = parse_output("containers", CONTAINERS);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].met, None);
    assert_eq!(e.len(), 1);
    assert!(e[0].contains("run-cpu-vs-crun"), "{e:?}");
}

#[test]
fn malformed_result_lines_are_errors() {
    for (line, why) in [
        ("RESULT value=1 unit=ms", "no name="),
        ("RESULT name=a unit=ms", "no value="),
        ("RESULT name=a value=1", "no unit="),
        ("RESULT name=a value=nan unit=ms", "no figure"),
        ("RESULT name=a value=x unit=ms", "not a number"),
        ("RESULT name=a value=1 unit=ms peer=q", "go together"),
        (
            "RESULT name=a value=1 unit=ms target_ratio=<=1",
            "without a peer",
        ),
        (
            "RESULT name=a value=1 unit=ms target_value=1",
            "expected <=X",
        ),
        ("RESULT name=a value=1 unit=ms label=\"open", "unterminated"),
        ("RESULT name=a value=1 unit=ms stray", "expected key=value"),
    ] {
        let e = format!("{:#}", parse_result_line("g", line).expect_err(line));
        assert!(e.contains(why), "{line}: {e}");
    }
    // Other lines are not result lines; unknown keys are ignored.
    let (f, e) = parse_output("g", "RESULTS are in\nRESULT name=a value=1 unit=ms x=y\n");
    assert_eq!((f.len(), e.len()), (1, 0));
}

#[test]
fn the_scripts_print_result_lines_this_parser_reads() {
    // Every script's RESULT printf/echo must use the keys parsed here.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for g in groups::GROUPS {
        let text = std::fs::read_to_string(root.join(g.script)).expect("script");
        assert!(
            text.contains("RESULT name="),
            "{}: no RESULT line",
            g.script
        );
        assert!(text.contains("target_"), "{}: no target", g.script);
    }
}

#[test]
fn the_markdown_report_has_context_figures_and_failures() {
    let r = sample_report();
    let md = render_markdown(&r, Some("ratios.svg"));
    for want in [
        "- Date: 2026-12-07 06:40:12 (UTC), commit abc1234",
        "**quick** (`--quick`",
        "- Command: `cargo xtask bench --quick`",
        "2 cores (AMD EPYC 7B13), 24 GiB memory, kernel 6.18.0",
        "3.01 4.06 2.99 at the start, 5.50 4.00 3.00 at the end",
        "Took 8 min 32 s (1 min 40 s of it building the programs first, measurements 6 min 52 s); targets met: 5 of 5; groups failed: containers",
        "[ratios.svg](ratios.svg)",
        "| boot | exec to /init marker (median): 1 vCPU(s), 128 MiB, vmlinux, 7 runs each (`boot-1vcpu-128mib-vmlinux`) | 1609 ms | qemu-microvm | 2018 ms | 0.80× | ratio ≤ 0.80 | yes |",
        "| vmm-memory | RSS minus touched guest RAM, 1 vCPU, 128 MiB, idle guest (`memory-overhead`) | 2.81 MiB | qemu-microvm | 33.4 MiB | 0.08× | ≤ 5.00 MiB | yes |",
        "| vmm-startup | tiny ELF (`startup-cpu-k`) | 2.00 ms | — | — | — | ≤ 8.00 ms | yes |",
        "| containers | **FAILED**: prerequisite missing: not root |",
        "| containers | **FAILED** | 1 min 15 s | `benches/scripts/containers.sh` | things / stuff |",
        "- **containers** (containers title): prerequisite missing: not root (output: `target/bench/logs/containers.log`)",
    ] {
        assert!(md.contains(want), "missing {want:?} in\n{md}");
    }
    let full = Report {
        quick: false,
        ..r.clone()
    };
    assert!(render_markdown(&full, None).contains("- Mode: full\n"));
    // One row per figure plus one per failed group, after the header.
    assert_eq!(figures_table(&r).lines().count(), 2 + r.figures.len() + 1);
}

#[test]
fn the_json_report_round_trips() {
    let r = sample_report();
    let text = serde_json::to_string_pretty(&r).expect("json");
    assert!(text.contains("\"target\": {\n") && text.contains("\"cmp\": \"<=\""));
    assert!(text.contains("\"of\": \"ratio\""));
    let back: Report = serde_json::from_str(&text).expect("parses");
    assert_eq!(back, r);
}

#[test]
fn docs_update_adds_dated_sections_newest_first_and_keeps_the_rest() {
    let doc = "# Benchmarks\n\nHand-written.\n\n<!-- bench:begin -->\n<!-- bench:end -->\n\n## Old tables\n\n| a |\n";
    let r1 = sample_report();
    let once = docs::update(doc, &r1).expect("update");
    assert!(once.starts_with("# Benchmarks\n\nHand-written.\n\n<!-- bench:begin -->\n<!-- bench:run 2026-12-07T06:40:12Z -->\n### 2026-12-07 06:40 UTC (quick)\n"));
    assert!(
        once.ends_with("<!-- bench:end -->\n\n## Old tables\n\n| a |\n"),
        "{once}"
    );
    assert!(once.contains("| boot | exec to /init marker"));
    // The same report again replaces its section.
    assert_eq!(docs::update(&once, &r1).expect("again"), once);
    // A newer one goes first; the older stays.
    let r2 = Report {
        date: "2026-12-08T01:02:03Z".into(),
        quick: false,
        ..r1.clone()
    };
    let twice = docs::update(&once, &r2).expect("newer");
    let new_at = twice.find("bench:run 2026-12-08").expect("new section");
    let old_at = twice.find("bench:run 2026-12-07").expect("old section");
    assert!(new_at < old_at);
    assert!(twice.contains("### 2026-12-08 01:02 UTC\n"));
    assert!(twice.ends_with("<!-- bench:end -->\n\n## Old tables\n\n| a |\n"));
    assert_eq!(twice.matches("<!-- bench:begin -->").count(), 1);
    // No markers: they are added at the end, under a heading.
    let added = docs::update("# B\n\nText.\n", &r1).expect("no markers");
    assert!(added.starts_with("# B\n\nText.\n\n## Runs of `cargo xtask bench`"));
    assert!(added.trim_end().ends_with("<!-- bench:end -->"));
    // Markers in the wrong order are an error, not a guess.
    assert!(docs::update("<!-- bench:end -->\n<!-- bench:begin -->\n", &r1).is_err());
}

#[test]
fn the_plot_has_a_bar_and_a_target_mark_per_figure() {
    let r = sample_report();
    let bars = plot::bars(&r);
    // The startup figure has neither a peer nor a ratio target but an absolute one: a bar.
    assert_eq!(bars.len(), r.figures.len());
    assert_eq!(bars[0].label, "boot: boot-1vcpu-128mib-vmlinux");
    assert_eq!(bars[0].target, Some(0.8));
    assert_eq!(
        bars[1].target,
        Some(1.0),
        "absolute target at 1 on the value/limit scale"
    );
    let svg = plot::render_svg(&r).expect("svg");
    assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
    // The background plus one filled rectangle per bar, in the met colour.
    let met = svg.matches("fill=\"#2E8B57\"").count();
    assert_eq!(met, bars.len(), "{svg}");
    for b in &bars {
        assert!(svg.contains(&b.label), "no label {}", b.label);
    }
    assert!(svg.contains("0.80× (target ≤ 0.80)"), "{svg}");
    assert!(
        svg.contains("2.81 MiB (limit ≤ 5.00 MiB; 0.08× qemu-microvm)"),
        "{svg}"
    );
    if let Some(out) = std::env::var_os("BENCH_PLOT_PREVIEW") {
        // To look at the sample plot: BENCH_PLOT_PREVIEW=/tmp/p.svg cargo test -p xtask plot
        std::fs::write(out, &svg).expect("writing the preview");
    }
    // A report without figures still gives a (empty) plot.
    let empty = Report {
        figures: Vec::new(),
        ..r
    };
    assert!(plot::render_svg(&empty)
        .expect("svg")
        .contains("no figures with a ratio"));
}

#[test]
fn options() {
    let a = |v: &[&str]| parse_args(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(
        a(&["--quick", "boot", "net"]).expect("ok"),
        Options {
            quick: true,
            update_docs: false,
            groups: vec!["boot".into(), "net".into()]
        }
    );
    assert!(a(&["--update-docs"]).expect("ok").update_docs);
    assert!(a(&["--fast"]).is_err());
}

#[test]
fn utc_dates() {
    assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
    assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(format_utc(1_796_625_612), "2026-12-07T06:40:12Z");
}

#[test]
fn failure_excerpts_show_the_error_not_the_backtrace() {
    let anyhow_out = "venue: lab\nError: boot vm-runner-raw-0 failed:\nconsole line\n\nStack backtrace:\n   0: foo\n   1: bar\n";
    assert_eq!(
        failure_excerpt(anyhow_out),
        "Error: boot vm-runner-raw-0 failed:\nconsole line\n"
    );
    let cargo_out = "   Compiling a\nerror[E0063]: missing field `x`\n  --> src/a.rs:1:1\nerror: could not compile `a`\n";
    assert!(
        failure_excerpt(cargo_out).starts_with("error[E0063]: missing field `x`\n  --> src/a.rs")
    );
    let plain = (1..=20).map(|i| format!("line {i}\n")).collect::<String>();
    assert_eq!(failure_excerpt(&plain).lines().count(), 8);
    assert!(failure_excerpt(&plain).ends_with("line 20"));
}

#[test]
fn a_failing_script_fails_its_group_with_its_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("s.sh"),
        "echo hello; echo 'RESULT name=a value=1 unit=ms'; echo oops >&2; exit 3\n",
    )
    .expect("write");
    let (status, out) =
        run_script(dir.path(), "s.sh", &[], &[], Duration::from_secs(30), false).expect("runs");
    assert_eq!(status, Some(3));
    assert!(out.contains("hello\n") && out.contains("oops\n"), "{out}");
    std::fs::write(dir.path().join("t.sh"), "sleep 30\n").expect("write");
    let (status, _) = run_script(
        dir.path(),
        "t.sh",
        &[],
        &[],
        Duration::from_millis(300),
        false,
    )
    .expect("runs");
    assert_eq!(status, None, "timed out");
}

#[test]
fn the_workflow_benchmark_result_lines_parse() {
    // Printed by benches/bin/container_workflow_vs_podman.rs (2026-12-07).
    let out = "RESULT name=pull-unpack-vs-podman value=1145.5 unit=ms peer=podman peer_value=2271.6 target_ratio=<=0.70 label=\"pull + unpack of apache2 (82 MiB gzip), cold store: virtkit pull + create vs podman pull, median of 7\"\n\
RESULT name=run-rm-true-vs-podman-crun value=81.0 unit=ms peer=podman+crun peer_value=257.1 label=\"run --rm apache2 true, warm store, virtkit + container-runner vs podman + crun, median of 30\"\n\
RESULT-MISSING run-to-http-vs-podman-crun: virtkit's container never answered HTTP 200\n";
    let (f, e) = parse_output("workflow", out);
    assert_eq!(f.len(), 2, "{e:?}");
    assert_eq!(f[0].met, Some(true));
    assert_eq!(f[1].peer.as_deref(), Some("podman+crun"));
    assert_eq!(f[1].met, None);
    assert_eq!(e.len(), 1);
    assert!(e[0].contains("run-to-http-vs-podman-crun"), "{e:?}");
}
