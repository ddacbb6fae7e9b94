//! Unit tests of both backends against the fake cgroupfs.

use std::time::Duration;

use crate::fake::FakeCgroupFs;
use crate::*;

fn res_all() -> Resources {
    let mut r = Resources::default();
    r.memory.limit = Some(100 << 20);
    r.memory.reservation = Some(50 << 20);
    r.memory.swap = Some(300 << 20);
    r.cpu.shares = Some(512);
    r.cpu.quota = Some(20_000);
    r.cpu.period = Some(50_000);
    r.cpu.burst = Some(1_000);
    r.cpu.cpus = Some("0".into());
    r.cpu.mems = Some("0".into());
    r.pids.limit = Some(10);
    r.block_io.weight = Some(500);
    r.block_io.weight_device = vec![WeightDevice {
        device: DeviceNumber::new(254, 0),
        weight: 100,
    }];
    r.block_io.throttle_read_bps_device = vec![ThrottleDevice {
        device: DeviceNumber::new(254, 0),
        rate: 1 << 20,
    }];
    r.block_io.throttle_write_iops_device = vec![ThrottleDevice {
        device: DeviceNumber::new(254, 0),
        rate: 100,
    }];
    r
}

#[test]
fn v1_create_in_every_hierarchy_and_seed_cpuset() {
    let fake = FakeCgroupFs::v1().unwrap();
    let cg = open(&fake.hierarchies(), "virtkit/c1").unwrap();
    assert_eq!(cg.version(), CgroupVersion::V1);
    assert!(!cg.exists());
    cg.create().unwrap();
    assert!(cg.exists());
    assert_eq!(cg.dirs().len(), V1_CONTROLLERS.len());
    for c in V1_CONTROLLERS {
        assert!(fake.path(&format!("{c}/virtkit/c1")).is_dir(), "{c}");
    }
    // A fresh v1 cpuset dir has empty cpus/mems: create copies the parent's.
    let fake = FakeCgroupFs::v1().unwrap();
    fake.populate("virtkit/c2").unwrap();
    let cg = open(&fake.hierarchies(), "virtkit/c2").unwrap();
    cg.create().unwrap();
    assert_eq!(fake.read("cpuset/virtkit/cpuset.cpus").unwrap(), "0-1");
    assert_eq!(fake.read("cpuset/virtkit/c2/cpuset.mems").unwrap(), "0");
}

#[test]
fn v1_apply_writes_the_v1_files() {
    let fake = FakeCgroupFs::v1().unwrap();
    fake.populate("virtkit/a").unwrap();
    let cg = open(&fake.hierarchies(), "virtkit/a").unwrap();
    cg.apply(&res_all()).unwrap();
    let r = |f: &str| fake.read(f).unwrap();
    assert_eq!(r("memory/virtkit/a/memory.limit_in_bytes"), "104857600");
    assert_eq!(
        r("memory/virtkit/a/memory.memsw.limit_in_bytes"),
        "314572800"
    );
    assert_eq!(r("memory/virtkit/a/memory.soft_limit_in_bytes"), "52428800");
    assert_eq!(r("cpu/virtkit/a/cpu.shares"), "512");
    assert_eq!(r("cpu/virtkit/a/cpu.cfs_quota_us"), "20000");
    assert_eq!(r("cpu/virtkit/a/cpu.cfs_period_us"), "50000");
    assert_eq!(r("cpu/virtkit/a/cpu.cfs_burst_us"), "1000");
    assert_eq!(r("cpuset/virtkit/a/cpuset.cpus"), "0");
    assert_eq!(r("cpuset/virtkit/a/cpuset.mems"), "0");
    assert_eq!(r("pids/virtkit/a/pids.max"), "10");
    assert_eq!(r("blkio/virtkit/a/blkio.weight"), "500");
    assert_eq!(r("blkio/virtkit/a/blkio.weight_device"), "254:0 100");
    assert_eq!(
        r("blkio/virtkit/a/blkio.throttle.read_bps_device"),
        "254:0 1048576"
    );
    assert_eq!(
        r("blkio/virtkit/a/blkio.throttle.write_iops_device"),
        "254:0 100"
    );

    // Unlimited: -1 everywhere, swap follows memory.
    let mut u = Resources::default();
    u.memory.limit = Some(-1);
    u.cpu.quota = Some(-1);
    u.pids.limit = Some(-1);
    cg.apply(&u).unwrap();
    assert_eq!(r("memory/virtkit/a/memory.limit_in_bytes"), "-1");
    assert_eq!(r("memory/virtkit/a/memory.memsw.limit_in_bytes"), "-1");
    assert_eq!(r("cpu/virtkit/a/cpu.cfs_quota_us"), "-1");
    assert_eq!(r("pids/virtkit/a/pids.max"), "max");
}

#[test]
fn v1_rejects_bad_values_before_writing() {
    let fake = FakeCgroupFs::v1().unwrap();
    fake.populate("x").unwrap();
    let cg = open(&fake.hierarchies(), "x").unwrap();
    let mut r = Resources::default();
    r.memory.limit = Some(200 << 20);
    r.memory.swap = Some(100 << 20);
    let e = cg.apply(&r).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidResource {
                field: "memory.swap",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        fake.read("memory/x/memory.limit_in_bytes").unwrap(),
        "9223372036854771712"
    );
    let mut r = Resources::default();
    r.cpu.shares = Some(1);
    assert!(cg.apply(&r).is_err());
    let mut r = Resources::default();
    r.unified.insert("memory.high".into(), "1M".into());
    assert!(matches!(
        cg.apply(&r),
        Err(Error::InvalidResource {
            field: "unified",
            ..
        })
    ));
}

#[test]
fn v1_missing_file_error_names_file_and_value() {
    let fake = FakeCgroupFs::v1().unwrap();
    fake.populate("x").unwrap();
    std::fs::remove_file(fake.path("cpu/x/cpu.cfs_burst_us")).unwrap();
    let cg = open(&fake.hierarchies(), "x").unwrap();
    let mut r = Resources::default();
    r.cpu.burst = Some(5000);
    let msg = cg.apply(&r).unwrap_err().to_string();
    assert!(msg.starts_with("writing \"5000\" to "), "{msg}");
    assert!(
        msg.contains("cpu/x/cpu.cfs_burst_us: No such file"),
        "{msg}"
    );
}

#[test]
fn v1_missing_controller() {
    let fake = FakeCgroupFs::v1().unwrap();
    let text = format!(
        "1 0 0:1 / {} rw - cgroup cgroup rw,memory\n",
        fake.path("memory").display()
    );
    let hier = Hierarchies::from_mountinfo(&text).unwrap();
    fake.populate("x").unwrap();
    let cg = open(&hier, "x").unwrap();
    let mut r = Resources::default();
    r.pids.limit = Some(5);
    let e = cg.apply(&r).unwrap_err();
    assert!(matches!(e, Error::MissingController { .. }), "{e}");
    assert!(matches!(cg.freeze(), Err(Error::MissingController { .. })));
}

#[test]
fn v1_stats_freeze_procs_delete() {
    let fake = FakeCgroupFs::v1().unwrap();
    fake.populate("virtkit/s/child").unwrap();
    let cg = V1Manager::new(&fake.hierarchies(), "virtkit/s")
        .unwrap()
        .with_timeout(Duration::from_millis(100));
    fake.write("memory/virtkit/s/memory.usage_in_bytes", "4096\n")
        .unwrap();
    fake.write("memory/virtkit/s/memory.max_usage_in_bytes", "8192\n")
        .unwrap();
    fake.write(
        "memory/virtkit/s/memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
    )
    .unwrap();
    fake.write("pids/virtkit/s/pids.current", "2\n").unwrap();
    fake.write("cpuacct/virtkit/s/cpuacct.usage", "123456789\n")
        .unwrap();
    fake.write(
        "cpu/virtkit/s/cpu.stat",
        "nr_periods 10\nnr_throttled 4\nthrottled_time 5000\n",
    )
    .unwrap();
    fake.write(
        "memory/virtkit/s/memory.stat",
        "cache 8192\nrss 4096\nweird line here\n",
    )
    .unwrap();
    fake.write("memory/virtkit/s/memory.memsw.usage_in_bytes", "6144\n")
        .unwrap();
    let s = cg.stats().unwrap();
    assert_eq!(s.memory.stat.get("cache"), Some(&8192));
    assert_eq!(s.memory.stat.get("rss"), Some(&4096));
    assert_eq!(s.memory.stat.len(), 2);
    assert_eq!(s.memory.swap_usage, Some(2048));
    assert_eq!(s.memory.usage, Some(4096));
    assert_eq!(s.memory.peak, Some(8192));
    assert_eq!(s.memory.oom_kills, Some(3));
    assert_eq!(s.memory.limit, Some(9_223_372_036_854_771_712));
    assert_eq!(s.pids.current, Some(2));
    assert_eq!(s.pids.limit, Some(u64::MAX));
    assert_eq!(s.cpu.usage_ns, Some(123_456_789));
    assert_eq!(s.cpu.nr_throttled, Some(4));
    assert_eq!(s.cpu.throttled_ns, Some(5000));

    cg.freeze().unwrap();
    assert_eq!(
        fake.read("freezer/virtkit/s/freezer.state").unwrap(),
        "FROZEN"
    );
    assert_eq!(cg.freezer_state().unwrap(), FreezerState::Frozen);
    cg.thaw().unwrap();
    assert_eq!(cg.freezer_state().unwrap(), FreezerState::Thawed);
    // A state the kernel never reaches times out with the file named.
    fake.write("freezer/virtkit/s/freezer.state", "bogus")
        .unwrap();
    assert!(cg.freezer_state().is_err());

    // pids are gathered from children and every hierarchy, deduplicated.
    fake.write("memory/virtkit/s/cgroup.procs", "10\n11\n")
        .unwrap();
    fake.write("pids/virtkit/s/child/cgroup.procs", "12\n10\n")
        .unwrap();
    assert_eq!(cg.pids().unwrap(), vec![10, 11, 12]);
    fake.write("memory/virtkit/s/cgroup.procs", "").unwrap();
    fake.write("pids/virtkit/s/child/cgroup.procs", "").unwrap();
    cg.kill_all().unwrap();

    cg.add_process(4242).unwrap();
    assert_eq!(fake.read("freezer/virtkit/s/cgroup.procs").unwrap(), "4242");
    assert!(cg.add_process(0).is_err());
    fake.write("freezer/virtkit/s/cgroup.procs", "").unwrap();

    // join_self: "0" to `tasks` (the calling thread alone) in every hierarchy.
    cg.join_self().unwrap();
    for c in ["cpu", "memory", "pids", "freezer", "devices"] {
        assert_eq!(
            fake.read(&format!("{c}/virtkit/s/tasks")).unwrap(),
            "0",
            "{c}"
        );
    }

    cg.delete().unwrap();
    assert!(!cg.exists());
    assert!(!fake.path("memory/virtkit/s").exists());
    assert!(fake.path("memory/virtkit").is_dir());
    cg.delete().unwrap(); // idempotent
}

#[test]
fn v2_create_enables_controllers_down_the_path() {
    let fake = FakeCgroupFs::v2().unwrap();
    let hier = fake.hierarchies();
    assert_eq!(hier.version(), CgroupVersion::V2);
    let cg = open(&hier, "virtkit/c").unwrap();
    assert_eq!(cg.version(), CgroupVersion::V2);
    // The fake's mkdir makes no control files (the kernel's does): enabling
    // controllers in the new parent "virtkit" fails, naming the file.
    let e = cg.create().unwrap_err();
    assert!(e.to_string().contains("virtkit/cgroup.controllers"), "{e}");
    fake.populate("virtkit").unwrap();
    cg.create().unwrap();
    assert!(cg.exists());
    // The root offers hugetlb too, but only the managed ones are enabled,
    // in every ancestor of the leaf.
    for f in ["cgroup.subtree_control", "virtkit/cgroup.subtree_control"] {
        assert_eq!(
            fake.read(f).unwrap(),
            "+cpuset +cpu +io +memory +pids",
            "{f}"
        );
    }
    assert!(fake.path("virtkit/c").is_dir());
    // join_self writes "0" to the leaf's cgroup.procs.
    fake.populate("virtkit/c").unwrap();
    cg.join_self().unwrap();
    assert_eq!(fake.read("virtkit/c/cgroup.procs").unwrap(), "0");
    fake.write("virtkit/c/cgroup.procs", "").unwrap();
    // Already enabled: nothing is written again.
    fake.write(
        "virtkit/cgroup.subtree_control",
        "cpuset cpu io memory pids\n",
    )
    .unwrap();
    cg.create().unwrap();
    assert_eq!(
        fake.read("virtkit/cgroup.subtree_control").unwrap(),
        "cpuset cpu io memory pids"
    );
}

#[test]
fn v2_apply_converts_oci_values() {
    let fake = FakeCgroupFs::v2().unwrap();
    fake.populate("virtkit/a").unwrap();
    let cg = open(&fake.hierarchies(), "virtkit/a").unwrap();
    let mut r = res_all();
    r.unified.insert("memory.high".into(), "90M".into());
    fake.write("virtkit/a/memory.high", "max").unwrap();
    cg.apply(&r).unwrap();
    let rd = |f: &str| fake.read(&format!("virtkit/a/{f}")).unwrap();
    assert_eq!(rd("memory.max"), "104857600");
    assert_eq!(rd("memory.swap.max"), "209715200"); // 300M - 100M
    assert_eq!(rd("memory.low"), "52428800");
    assert_eq!(rd("cpu.weight"), "59"); // shares 512, log-quadratic
    assert_eq!(rd("cpu.max"), "20000 50000");
    assert_eq!(rd("cpu.max.burst"), "1000");
    assert_eq!(rd("cpuset.cpus"), "0");
    assert_eq!(rd("pids.max"), "10");
    // The fake keeps the last write: per-device weight after the default.
    assert_eq!(rd("io.weight"), "254:0 910");
    assert_eq!(rd("io.max"), "254:0 wiops=100");
    assert_eq!(rd("memory.high"), "90M");

    let mut u = Resources::default();
    u.memory.limit = Some(-1);
    u.cpu.quota = Some(-1);
    u.pids.limit = Some(-1);
    u.block_io.weight = Some(1000);
    cg.apply(&u).unwrap();
    assert_eq!(rd("memory.max"), "max");
    assert_eq!(rd("memory.swap.max"), "max");
    assert_eq!(rd("cpu.max"), "max");
    assert_eq!(rd("pids.max"), "max");
    assert_eq!(rd("io.weight"), "default 10000");

    // memory + swap == memory: no swap, memory.swap.max = 0 (not "unset").
    let mut noswap = Resources::default();
    noswap.memory.limit = Some(64 << 20);
    noswap.memory.swap = Some(64 << 20);
    cg.apply(&noswap).unwrap();
    assert_eq!(rd("memory.max"), "67108864");
    assert_eq!(rd("memory.swap.max"), "0");

    // OCI swap without a memory limit is refused; a bad unified key too.
    let mut bad = Resources::default();
    bad.memory.swap = Some(1 << 30);
    assert!(matches!(
        cg.apply(&bad),
        Err(Error::InvalidResource {
            field: "memory.swap",
            ..
        })
    ));
    let mut bad = Resources::default();
    bad.unified.insert("../../etc/passwd".into(), "x".into());
    assert!(cg.apply(&bad).is_err());
}

#[test]
fn v2_freeze_polls_cgroup_events() {
    let fake = FakeCgroupFs::v2().unwrap();
    fake.populate("f").unwrap();
    let cg = V2Manager::new(fake.root(), "f")
        .unwrap()
        .with_timeout(Duration::from_millis(50));
    // The kernel has not reported "frozen 1": freeze times out, naming the dir.
    let e = cg.freeze().unwrap_err();
    assert!(
        matches!(
            e,
            Error::Timeout {
                what: "freezing",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(fake.read("f/cgroup.freeze").unwrap(), "1");
    assert_eq!(cg.freezer_state().unwrap(), FreezerState::Freezing);
    fake.write("f/cgroup.events", "populated 1\nfrozen 1\n")
        .unwrap();
    cg.freeze().unwrap();
    assert_eq!(cg.freezer_state().unwrap(), FreezerState::Frozen);
    fake.write("f/cgroup.events", "populated 1\nfrozen 0\n")
        .unwrap();
    cg.thaw().unwrap();
    assert_eq!(fake.read("f/cgroup.freeze").unwrap(), "0");
    assert_eq!(cg.freezer_state().unwrap(), FreezerState::Thawed);
}

#[test]
fn v2_kill_uses_cgroup_kill_and_waits_for_empty() {
    let fake = FakeCgroupFs::v2().unwrap();
    fake.populate("k").unwrap();
    let cg = V2Manager::new(fake.root(), "k")
        .unwrap()
        .with_timeout(Duration::from_millis(50));
    fake.write("k/cgroup.events", "populated 1\nfrozen 0\n")
        .unwrap();
    // Nothing empties the fake: the kill is written, then it times out.
    let e = cg.kill_all().unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert_eq!(fake.read("k/cgroup.kill").unwrap(), "1");
    fake.write("k/cgroup.events", "populated 0\nfrozen 0\n")
        .unwrap();
    cg.kill_all().unwrap();
    let s = cg.stats().unwrap();
    assert_eq!(s.memory.oom_kills, Some(0));
    fake.write("k/cpu.stat", "usage_usec 7\nuser_usec 5\nsystem_usec 2\nnr_periods 3\nnr_throttled 1\nthrottled_usec 9\n")
        .unwrap();
    let s = cg.stats().unwrap();
    assert_eq!(s.cpu.usage_ns, Some(7000));
    assert_eq!(s.cpu.throttled_ns, Some(9000));
    assert_eq!(s.cpu.nr_periods, Some(3));
    cg.delete().unwrap();
    assert!(!cg.exists());
}

#[test]
fn bad_stat_content_is_a_parse_error() {
    let fake = FakeCgroupFs::v2().unwrap();
    fake.populate("p").unwrap();
    fake.write("p/pids.current", "lots\n").unwrap();
    let cg = open(&fake.hierarchies(), "p").unwrap();
    let e = cg.stats().unwrap_err();
    assert!(matches!(e, Error::Parse { .. }), "{e}");
    assert!(e.to_string().contains("p/pids.current"), "{e}");
}

#[test]
fn validate_rejects_before_any_write() {
    let mut cases: Vec<(Resources, &str)> = Vec::new();
    let mut r = Resources::default();
    r.memory.swappiness = Some(101);
    cases.push((r, "memory.swappiness"));
    let mut r = Resources::default();
    r.memory.limit = Some(-5);
    cases.push((r, "memory.limit"));
    let mut r = Resources::default();
    r.block_io.weight = Some(5);
    cases.push((r, "block_io.weight"));
    let mut r = Resources::default();
    r.block_io.weight_device = vec![WeightDevice {
        device: DeviceNumber::new(8, 0),
        weight: 2000,
    }];
    cases.push((r, "block_io.weight"));
    let mut r = Resources::default();
    r.cpu.shares = Some(300_000);
    cases.push((r, "cpu.shares"));
    let mut r = Resources::default();
    r.unified.insert("a/b".into(), "1".into());
    cases.push((r, "unified"));

    for fake in [FakeCgroupFs::v1().unwrap(), FakeCgroupFs::v2().unwrap()] {
        fake.populate("v").unwrap();
        let cg = open(&fake.hierarchies(), "v").unwrap();
        let pids_max = if cg.version() == CgroupVersion::V1 {
            "pids/v/pids.max"
        } else {
            "v/pids.max"
        };
        for (r, field) in &cases {
            let mut r = r.clone();
            r.pids.limit = Some(7); // would be written first if not validated
            let e = r.validate().unwrap_err();
            assert!(
                matches!(e, Error::InvalidResource { field: f, .. } if f == *field),
                "{field}: {e}"
            );
            assert!(cg.apply(&r).is_err());
            assert_eq!(
                fake.read(pids_max).unwrap(),
                "max",
                "{field} on {:?}",
                cg.version()
            );
        }
        // The v2 swap conversion is checked first too.
        let mut r = Resources::default();
        r.pids.limit = Some(7);
        r.memory.swap = Some(1 << 30);
        if cg.version() == CgroupVersion::V2 {
            assert!(cg.apply(&r).is_err());
            assert_eq!(fake.read(pids_max).unwrap(), "max");
        }
    }
    assert!(res_all().validate().is_ok());
}

#[test]
fn v1_device_rules_are_written_in_order() {
    let fake = FakeCgroupFs::v1().unwrap();
    fake.populate("d").unwrap();
    let cg = open(&fake.hierarchies(), "d").unwrap();
    let r = Resources {
        devices: Some(vec![
            DeviceRule::DENY_ALL,
            DeviceRule::allow_char(1, 3, "rwm").unwrap(),
            DeviceRule {
                allow: false,
                kind: DeviceType::Block,
                major: Some(8),
                minor: None,
                access: DeviceAccess::parse("w").unwrap(),
            },
            DeviceRule::allow_char(136, 0, "rw").unwrap(),
        ]),
        ..Default::default()
    };
    cg.apply(&r).unwrap();
    // One rule a line, each file in the order written: deny everything first.
    assert_eq!(
        fake.read("devices/d/devices.allow").unwrap(),
        "c 1:3 rwm\nc 136:0 rw"
    );
    assert_eq!(
        fake.read("devices/d/devices.deny").unwrap(),
        "a\na *:* rwm\nb 8:* w"
    );
    // None leaves the policy alone.
    fake.write("devices/d/devices.deny", "untouched").unwrap();
    cg.apply(&Resources::default()).unwrap();
    assert_eq!(fake.read("devices/d/devices.deny").unwrap(), "untouched");
}

#[test]
fn idle_realtime_and_oom_killer_switch() {
    let fake = FakeCgroupFs::v1().unwrap();
    fake.populate("x").unwrap();
    let cg = open(&fake.hierarchies(), "x").unwrap();
    let mut r = Resources::default();
    r.cpu.idle = Some(1);
    r.cpu.realtime_period = Some(500_000);
    r.cpu.realtime_runtime = Some(10_000);
    r.memory.disable_oom_killer = Some(true);
    cg.apply(&r).unwrap();
    assert_eq!(fake.read("cpu/x/cpu.idle").unwrap(), "1");
    assert_eq!(fake.read("cpu/x/cpu.rt_period_us").unwrap(), "500000");
    assert_eq!(fake.read("cpu/x/cpu.rt_runtime_us").unwrap(), "10000");
    assert_eq!(fake.read("memory/x/memory.oom_control").unwrap(), "1");

    let fake = FakeCgroupFs::v2().unwrap();
    fake.populate("x").unwrap();
    let cg = open(&fake.hierarchies(), "x").unwrap();
    let mut idle = Resources::default();
    idle.cpu.idle = Some(1);
    cg.apply(&idle).unwrap();
    assert_eq!(fake.read("x/cpu.idle").unwrap(), "1");
    // v1-only knobs are refused on v2, before anything is written.
    for r in [
        Resources {
            memory: MemoryResources {
                disable_oom_killer: Some(true),
                ..Default::default()
            },
            pids: PidsResources { limit: Some(3) },
            ..Default::default()
        },
        Resources {
            cpu: CpuResources {
                realtime_runtime: Some(1000),
                ..Default::default()
            },
            pids: PidsResources { limit: Some(3) },
            ..Default::default()
        },
    ] {
        assert!(matches!(cg.apply(&r), Err(Error::InvalidResource { .. })));
        assert_eq!(fake.read("x/pids.max").unwrap(), "max");
    }
    let mut bad = Resources::default();
    bad.cpu.idle = Some(2);
    assert!(bad.validate().is_err());
}

#[test]
fn io_stats_v1_and_v2() {
    let fake = FakeCgroupFs::v1().unwrap();
    fake.populate("i").unwrap();
    fake.write(
        "blkio/i/blkio.throttle.io_service_bytes_recursive",
        "254:0 Read 4096\n254:0 Write 8192\n254:0 Sync 0\n254:0 Total 12288\n7:1 Read 512\nTotal 12800\n",
    )
    .unwrap();
    fake.write(
        "blkio/i/blkio.throttle.io_serviced_recursive",
        "254:0 Read 1\n254:0 Write 2\nTotal 3\n",
    )
    .unwrap();
    let cg = open(&fake.hierarchies(), "i").unwrap();
    let io = cg.stats().unwrap().io;
    assert_eq!(io.len(), 2);
    assert_eq!(io[0].device, DeviceNumber::new(7, 1));
    assert_eq!(io[0].read_bytes, 512);
    assert_eq!(
        io[1],
        IoDeviceStats {
            device: DeviceNumber::new(254, 0),
            read_bytes: 4096,
            write_bytes: 8192,
            read_ios: 1,
            write_ios: 2
        }
    );
    fake.write(
        "blkio/i/blkio.throttle.io_serviced_recursive",
        "254:0 Read\n",
    )
    .unwrap();
    assert!(matches!(cg.stats(), Err(Error::Parse { .. })));

    let fake = FakeCgroupFs::v2().unwrap();
    fake.populate("i").unwrap();
    fake.write(
        "i/io.stat",
        "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n7:0 rbytes=1 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n",
    )
    .unwrap();
    let cg = open(&fake.hierarchies(), "i").unwrap();
    let io = cg.stats().unwrap().io;
    assert_eq!(io.len(), 2);
    assert_eq!(io[1].write_bytes, 8192);
    assert_eq!(io[1].write_ios, 2);
    assert_eq!(io[0].read_ios, 1);
    fake.write("i/io.stat", "254:0 rbytes\n").unwrap();
    assert!(cg.stats().is_err());
}
