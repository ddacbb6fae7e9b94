//! Real cgroup tests, as root, on whatever this machine has: the host's v1
//! controllers (legacy or hybrid layout) or a unified v2 hierarchy (the lab).
//! The backend comes from [`Hierarchies::detect`], so the same tests cover both.
//!
//! This binary has its own runner (`harness = false`): tests run one at a
//! time, and when `VIRTKIT_CGROUPS_CHILD` is set the binary is instead the
//! workload put in the cgroup (memory hog, fork bomb, spinner), so it needs no
//! other program (it runs statically linked inside the lab).
//!
//! Arguments: substrings select tests, `--skip S` excludes, `--list` lists;
//! other `--flags` from `cargo test` are ignored. Not root: every test fails
//! with a clear message, unless `VIRTKIT_SKIP_ROOT_TESTS=1` (an opt-out for
//! developer machines that CI does not set).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use virtkit_cgroups::{
    open, CgroupManager, CgroupVersion, DeviceNumber, DeviceRule, Hierarchies, Resources,
    ThrottleDevice, V2Manager,
};

const CHILD_ENV: &str = "VIRTKIT_CGROUPS_CHILD";
const MIB: i64 = 1 << 20;

// ---------------------------------------------------------------- workloads

fn child_main(mode: &str) -> ! {
    // Wait for the parent to move us into the cgroup.
    let mut go = [0u8; 1];
    std::io::stdin().read_exact(&mut go).unwrap();
    let code = match mode {
        "memhog" => memhog(),
        "forkbomb" => forkbomb(50),
        "spin" => spin(),
        "forktree" => forktree(4),
        "forkchurn" => forkchurn(),
        "devices" => try_devices(),
        m if m.starts_with("readdev:") => read_device(&m["readdev:".len()..]),
        m if m.starts_with("joinself:") => join_self(&m["joinself:".len()..]),
        other => {
            eprintln!("unknown child mode {other}");
            2
        }
    };
    std::process::exit(code)
}

/// Moves itself into cgroup `path` with `join_self`, says so, then waits for stdin to
/// close.
fn join_self(path: &str) -> i32 {
    let cg = open(&Hierarchies::detect().unwrap(), path).unwrap();
    if let Err(e) = cg.join_self() {
        println!("error {e}");
        return 1;
    }
    println!("joined");
    std::io::stdout().flush().unwrap();
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    0
}

/// Allocates and touches 1 MiB at a time up to 1 GiB; reports progress.
fn memhog() -> i32 {
    let mut held: Vec<Vec<u8>> = Vec::new();
    for i in 1..=1024 {
        let mut v = vec![0u8; 1 << 20];
        for b in v.iter_mut().step_by(4096) {
            *b = 1;
        }
        held.push(v);
        if i % 16 == 0 {
            println!("allocated {i} MiB");
        }
    }
    println!("survived");
    0
}

/// Tries `n` forks; each grandchild blocks in pause(). Prints how many
/// succeeded, waits for a line on stdin, kills them and exits.
fn forkbomb(n: usize) -> i32 {
    let mut kids = Vec::new();
    let mut last_err = 0;
    for _ in 0..n {
        // SAFETY: this process is single-threaded (the runner spawns no threads
        // before child_main), so the child may run anything; it only pauses.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            loop {
                // SAFETY: pause() has no preconditions.
                unsafe { libc::pause() };
            }
        } else if pid > 0 {
            kids.push(pid);
        } else {
            last_err = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        }
    }
    println!("forked {} errno {}", kids.len(), last_err);
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    for k in kids {
        // SAFETY: signalling and reaping our own children.
        unsafe {
            libc::kill(k, libc::SIGKILL);
            libc::waitpid(k, std::ptr::null_mut(), 0);
        }
    }
    0
}

/// Forks `n` grandchildren that pause, then pauses itself.
fn forktree(n: usize) -> i32 {
    for _ in 0..n {
        // SAFETY: single-threaded process; the child only pauses.
        if unsafe { libc::fork() } == 0 {
            loop {
                // SAFETY: pause() has no preconditions.
                unsafe { libc::pause() };
            }
        }
    }
    println!("ready");
    loop {
        // SAFETY: pause() has no preconditions.
        unsafe { libc::pause() };
    }
}

/// A churning fork bomb: every process forks in a loop and exits after three
/// successful forks (the first one never exits), so new pids keep appearing
/// while old ones vanish. Only pids.max bounds it.
fn forkchurn() -> i32 {
    let mut first = true;
    let mut made = 0;
    let mut announced = false;
    loop {
        // SAFETY: single-threaded process; the child runs this same loop.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            first = false;
            made = 0;
            continue;
        }
        if pid > 0 {
            made += 1;
            if first && !announced {
                println!("churning");
                announced = true;
            }
        }
        // SAFETY: reaping our own exited children without blocking.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        if !first && made >= 3 {
            // SAFETY: _exit has no preconditions; skips atexit handlers (none).
            unsafe { libc::_exit(0) };
        }
    }
}

/// Opens /dev/null for reading and writing and /dev/zero for reading;
/// prints "null-r=OK null-w=EPERM zero-r=OK" style results.
fn try_devices() -> i32 {
    let try_open = |path: &str, write: bool| {
        let r = std::fs::OpenOptions::new()
            .read(!write)
            .write(write)
            .open(path);
        match r {
            Ok(_) => "OK".to_string(),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => "EPERM".to_string(),
            Err(e) => format!("{e}"),
        }
    };
    println!(
        "null-r={} null-w={} zero-r={}",
        try_open("/dev/null", false),
        try_open("/dev/null", true),
        try_open("/dev/zero", false)
    );
    0
}

/// Reads `bytes` from a block device with O_DIRECT (so every byte is block
/// I/O of this cgroup); prints "read N bytes in M ms". Argument "PATH:BYTES".
fn read_device(arg: &str) -> i32 {
    use std::os::unix::fs::OpenOptionsExt;
    let (path, bytes) = arg.rsplit_once(':').unwrap();
    let total: usize = bytes.parse().unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap();
    const CHUNK: usize = 64 << 10;
    let layout = std::alloc::Layout::from_size_align(CHUNK, 4096).unwrap();
    // SAFETY: the layout has a non-zero size.
    let buf = unsafe { std::alloc::alloc(layout) };
    assert!(!buf.is_null());
    let start = Instant::now();
    let mut done = 0;
    while done < total {
        // SAFETY: `buf` is CHUNK writable bytes, 4096-aligned as O_DIRECT wants.
        let n = unsafe {
            libc::pread(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                buf.cast(),
                CHUNK,
                i64::try_from(done).unwrap(),
            )
        };
        assert!(n > 0, "pread: {}", std::io::Error::last_os_error());
        done += usize::try_from(n).unwrap();
    }
    println!("read {done} bytes in {} ms", start.elapsed().as_millis());
    // SAFETY: allocated above with the same layout.
    unsafe { std::alloc::dealloc(buf, layout) };
    0
}

fn spin() -> i32 {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

// ---------------------------------------------------------------- helpers

/// A test cgroup: killed and deleted on drop, even when the test panics.
struct TestCgroup {
    cg: Box<dyn CgroupManager>,
}

impl TestCgroup {
    fn new(name: &str) -> Self {
        Self::with(name, |hier, path| {
            open(hier, path).expect("opening test cgroup")
        })
    }

    /// A test cgroup from a custom manager constructor.
    fn with(name: &str, make: impl FnOnce(&Hierarchies, &str) -> Box<dyn CgroupManager>) -> Self {
        let hier = Hierarchies::detect().expect("detecting cgroup hierarchies");
        let path = format!("virtkit-test/{name}-{}", std::process::id());
        let cg = make(&hier, &path);
        // Leftovers of an aborted run with the same pid would be reused: clear.
        let _ = cg.kill_all();
        let _ = cg.delete();
        cg.create().expect("creating test cgroup");
        eprintln!(
            "  cgroup {:?} ({:?}, layout {:?}) at {:?}",
            cg.path(),
            cg.version(),
            hier.layout(),
            cg.dirs()
        );
        TestCgroup { cg }
    }
}

impl std::ops::Deref for TestCgroup {
    type Target = dyn CgroupManager;
    fn deref(&self) -> &Self::Target {
        &*self.cg
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.cg.kill_all() {
            eprintln!("  cleanup: kill_all: {e}");
        }
        if let Err(e) = self.cg.delete() {
            eprintln!("  cleanup: delete: {e}");
        }
    }
}

/// Starts this binary as workload `mode`, blocked until [`go`].
fn spawn_child(mode: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning workload child")
}

/// Puts `child` in the cgroup and lets it run.
fn enter_and_go(cg: &TestCgroup, child: &mut Child) {
    cg.add_process(i32::try_from(child.id()).unwrap())
        .expect("adding child to cgroup");
    let stdin = child.stdin.as_mut().unwrap();
    stdin.write_all(b"g").unwrap();
    stdin.flush().unwrap();
}

fn read_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    line
}

/// Waits for `child` at most `limit`; kills it if it does not exit.
fn wait_for(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("child did not exit within {limit:?}");
        }
        sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- tests

/// A process moves itself in with `join_self`: it is then listed by `pids` and its
/// /proc/<pid>/cgroup names the cgroup (in every v1 hierarchy).
fn root_join_self_moves_the_caller() {
    let cg = TestCgroup::new("joinself");
    let mut child = spawn_child(&format!("joinself:{}", cg.path()));
    child.stdin.as_mut().unwrap().write_all(b"g").unwrap();
    assert_eq!(read_line(&mut child).trim(), "joined");
    let pid = i32::try_from(child.id()).unwrap();
    assert_eq!(cg.pids().unwrap(), vec![pid]);
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let want = format!("/{}", cg.path());
    // One line per hierarchy the manager uses (v1: each controller's; v2: the one).
    let in_cg = own.lines().filter(|l| l.ends_with(&want)).count();
    assert_eq!(in_cg, cg.dirs().len(), "{own} vs {:?}", cg.dirs());
    drop(child.stdin.take());
    assert!(wait_for(&mut child, Duration::from_secs(10)).success());
}

/// A process allocating past the memory limit is OOM-killed at the limit.
fn root_memory_hog_is_oom_killed() {
    let cg = TestCgroup::new("memhog");
    let mut r = Resources::default();
    r.memory.limit = Some(64 * MIB);
    r.memory.swap = Some(64 * MIB); // memory + swap = memory: no swap at all
    cg.apply(&r).unwrap();
    let mut child = spawn_child("memhog");
    enter_and_go(&cg, &mut child);
    let st = wait_for(&mut child, Duration::from_secs(60));
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let last = out.lines().last().unwrap_or("");
    eprintln!("  child {st:?}, last output {last:?}");
    assert_eq!(
        st.signal(),
        Some(libc::SIGKILL),
        "hog not killed: {st:?}, output {last:?}"
    );
    assert!(!out.contains("survived"));
    let stats = cg.stats().unwrap();
    let m = &stats.memory;
    eprintln!(
        "  memory: usage {:?} peak {:?} limit {:?} oom_kills {:?} swap {:?}, {} memory.stat counters",
        m.usage,
        m.peak,
        m.limit,
        m.oom_kills,
        m.swap_usage,
        m.stat.len()
    );
    // memory.stat names differ: v1 has "total_rss", v2 "anon".
    assert!(
        m.stat.contains_key("total_rss") || m.stat.contains_key("anon"),
        "{:?}",
        m.stat
    );
    assert!(stats.memory.oom_kills.unwrap() >= 1, "{:?}", stats.memory);
    // It got close to the limit, and never above it.
    let peak = stats.memory.peak.expect("peak usage");
    assert!(peak <= 64 << 20, "peak {peak} above the limit");
    assert!(peak >= 32 << 20, "peak {peak}: killed far below the limit?");
    // What it printed: it had allocated a good part of the 64 MiB.
    let allocated: u64 = last
        .strip_prefix("allocated ")
        .and_then(|s| s.strip_suffix(" MiB"))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!((16..64).contains(&allocated), "last output {last:?}");
}

/// pids.max = 10 stops a process trying to fork 50 children.
fn root_pids_max_stops_fork_bomb() {
    let cg = TestCgroup::new("forkbomb");
    let mut r = Resources::default();
    r.pids.limit = Some(10);
    cg.apply(&r).unwrap();
    let mut child = spawn_child("forkbomb");
    enter_and_go(&cg, &mut child);
    let line = read_line(&mut child);
    eprintln!("  child says {line:?}");
    let mut it = line.split_whitespace();
    assert_eq!(it.next(), Some("forked"));
    let forked: u64 = it.next().unwrap().parse().unwrap();
    let errno: i32 = it.nth(1).unwrap().parse().unwrap();
    // 10 tasks: the child itself plus 9 forks.
    assert_eq!(forked, 9, "{line}");
    assert_eq!(errno, libc::EAGAIN, "fork failed with errno {errno}");
    let stats = cg.stats().unwrap();
    assert_eq!(stats.pids.current, Some(10), "{:?}", stats.pids);
    assert_eq!(stats.pids.limit, Some(10));
    assert_eq!(cg.pids().unwrap().len(), 10);
    child.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    let st = wait_for(&mut child, Duration::from_secs(10));
    assert!(st.success(), "{st:?}");
}

/// A 20% quota holds a spinner to about 20% of a CPU.
fn root_cpu_quota_throttles_spinner() {
    let cg = TestCgroup::new("spin");
    let mut r = Resources::default();
    r.cpu.quota = Some(20_000);
    r.cpu.period = Some(100_000);
    cg.apply(&r).unwrap();
    let mut child = spawn_child("spin");
    enter_and_go(&cg, &mut child);
    sleep(Duration::from_millis(300));
    let before = cg.stats().unwrap().cpu;
    let t0 = Instant::now();
    sleep(Duration::from_millis(1500));
    let after = cg.stats().unwrap().cpu;
    let wall = t0.elapsed().as_secs_f64();
    let used = (after.usage_ns.unwrap() - before.usage_ns.unwrap()) as f64 / 1e9;
    let ratio = used / wall;
    eprintln!(
        "  spinner used {used:.3} s CPU in {wall:.3} s: {:.1}% (quota 20%); throttled {:?} of {:?} periods",
        ratio * 100.0,
        after.nr_throttled,
        after.nr_periods
    );
    assert!(ratio < 0.30, "cpu ratio {ratio:.3} above a 20% quota");
    assert!(ratio > 0.05, "cpu ratio {ratio:.3}: the spinner barely ran");
    assert!(after.nr_throttled.unwrap() > 0, "{after:?}");
    assert!(after.throttled_ns.unwrap() > 0, "{after:?}");
    let _ = child.kill();
    let _ = child.wait();
}

/// A loop device over a file, detached and removed on drop.
struct LoopDevice {
    path: String,
    device: DeviceNumber,
    file: std::path::PathBuf,
}

impl LoopDevice {
    fn new(size: u64) -> Self {
        const LOOP_SET_FD: libc::c_ulong = 0x4C00;
        const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
        let file = std::env::temp_dir().join(format!("virtkit-cg-loop-{}", std::process::id()));
        let backing = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&file)
            .unwrap();
        backing.set_len(size).unwrap();
        let ctl = std::fs::File::open("/dev/loop-control").expect("/dev/loop-control");
        // Another process may grab the same free device between the two
        // ioctls: LOOP_SET_FD then says EBUSY, and we ask again.
        let mut tries = 0;
        let path = loop {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
            let n =
                unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&ctl), LOOP_CTL_GET_FREE) };
            assert!(
                n >= 0,
                "LOOP_CTL_GET_FREE: {}",
                std::io::Error::last_os_error()
            );
            let path = format!("/dev/loop{n}");
            let dev = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            // SAFETY: LOOP_SET_FD takes the backing file's descriptor, open for the call.
            let rc = unsafe {
                libc::ioctl(
                    std::os::fd::AsRawFd::as_raw_fd(&dev),
                    LOOP_SET_FD,
                    std::os::fd::AsRawFd::as_raw_fd(&backing),
                )
            };
            let err = std::io::Error::last_os_error();
            if rc == 0 {
                break path;
            }
            tries += 1;
            assert!(
                err.raw_os_error() == Some(libc::EBUSY) && tries < 10,
                "LOOP_SET_FD {path}: {err}"
            );
        };
        let rdev = std::os::unix::fs::MetadataExt::rdev(&std::fs::metadata(&path).unwrap());
        let device = DeviceNumber::new(u64::from(libc::major(rdev)), u64::from(libc::minor(rdev)));
        LoopDevice { path, device, file }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
        if let Ok(dev) = std::fs::File::open(&self.path) {
            // SAFETY: LOOP_CLR_FD takes no argument.
            unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&dev), LOOP_CLR_FD, 0) };
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

/// A read throttle of 1 MiB/s holds an O_DIRECT reader of 3 MiB to about
/// 3 s, and the cgroup's I/O statistics count the bytes.
fn root_io_throttle_slows_a_reader() {
    let lo = LoopDevice::new(16 << 20);
    let cg = TestCgroup::new("io");
    let mut r = Resources::default();
    r.block_io.throttle_read_bps_device = vec![ThrottleDevice {
        device: lo.device,
        rate: 1 << 20,
    }];
    cg.apply(&r).unwrap();
    let mut child = spawn_child(&format!("readdev:{}:{}", lo.path, 3 << 20));
    enter_and_go(&cg, &mut child);
    let line = read_line(&mut child);
    assert!(wait_for(&mut child, Duration::from_secs(60)).success());
    let ms: u64 = line
        .trim()
        .rsplit(' ')
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("child said {line:?}"));
    let io = cg.stats().unwrap().io;
    let dev = io.iter().find(|e| e.device == lo.device);
    eprintln!(
        "  {} throttled to 1 MiB/s: {line:?}; stats {dev:?}",
        lo.path
    );
    // 3 MiB at 1 MiB/s: about 2-3 s (the first slice may pass at once).
    assert!(ms >= 1500, "3 MiB read in {ms} ms despite 1 MiB/s");
    let dev = dev.expect("no I/O statistics for the loop device");
    assert!(dev.read_bytes >= 3 << 20, "{dev:?}");
    assert!(dev.read_ios >= 48, "{dev:?}"); // 64 KiB reads
}

/// Two spinners pinned to one CPU share it by weight: shares 2048 against
/// 512 is 4:1 on v1; on v2 the weights are 174 and 59 (runc's log-quadratic
/// conversion), about 2.95:1.
fn root_cpu_shares_split_a_cpu() {
    let make = |name: &str, shares: u64| {
        let cg = TestCgroup::new(name);
        let mut r = Resources::default();
        r.cpu.shares = Some(shares);
        r.cpu.cpus = Some("0".into());
        r.cpu.mems = Some("0".into());
        cg.apply(&r).unwrap();
        let mut child = spawn_child("spin");
        enter_and_go(&cg, &mut child);
        (cg, child)
    };
    let (hi, mut hi_child) = make("shares-hi", 2048);
    let (lo, mut lo_child) = make("shares-lo", 512);
    sleep(Duration::from_millis(300));
    let usage = |cg: &TestCgroup| cg.stats().unwrap().cpu.usage_ns.unwrap() as f64;
    let (h0, l0) = (usage(&hi), usage(&lo));
    sleep(Duration::from_millis(1500));
    let (h1, l1) = (usage(&hi), usage(&lo));
    let ratio = (h1 - h0) / (l1 - l0).max(1.0);
    let expect = if hi.version() == CgroupVersion::V2 {
        174.0 / 59.0
    } else {
        4.0
    };
    eprintln!(
        "  hi {:.0} ms, lo {:.0} ms of CPU: ratio {ratio:.2} (expected {expect:.2})",
        (h1 - h0) / 1e6,
        (l1 - l0) / 1e6
    );
    for c in [&mut hi_child, &mut lo_child] {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert!(
        ratio > expect * 0.6 && ratio < expect * 1.6,
        "ratio {ratio:.2}, expected about {expect:.2}"
    );
}

/// Freezing stops a spinner from using CPU; thawing resumes it.
fn root_freeze_and_thaw() {
    let cg = TestCgroup::new("freeze");
    let mut child = spawn_child("spin");
    enter_and_go(&cg, &mut child);
    sleep(Duration::from_millis(200));
    cg.freeze().unwrap();
    assert_eq!(
        cg.freezer_state().unwrap(),
        virtkit_cgroups::FreezerState::Frozen
    );
    // Let the run time accrued before the freeze reach the statistics (ticks
    // come late under emulation), then measure.
    sleep(Duration::from_millis(100));
    let a = cg.stats().unwrap().cpu.usage_ns.unwrap();
    sleep(Duration::from_millis(500));
    let b = cg.stats().unwrap().cpu.usage_ns.unwrap();
    eprintln!("  frozen: {} µs of CPU in 500 ms", (b - a) / 1000);
    assert!(b - a < 5_000_000, "a frozen spinner used {} ns", b - a);
    cg.thaw().unwrap();
    assert_eq!(
        cg.freezer_state().unwrap(),
        virtkit_cgroups::FreezerState::Thawed
    );
    let c = cg.stats().unwrap().cpu.usage_ns.unwrap();
    sleep(Duration::from_millis(500));
    let d = cg.stats().unwrap().cpu.usage_ns.unwrap();
    eprintln!("  thawed: {} µs of CPU in 500 ms", (d - c) / 1000);
    assert!(
        d - c > 20_000_000,
        "a thawed spinner used only {} ns",
        d - c
    );
    // kill_all works on a frozen cgroup too (v1 must thaw for SIGKILL to act).
    cg.freeze().unwrap();
    cg.kill_all().unwrap();
    let st = wait_for(&mut child, Duration::from_secs(5));
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    assert!(cg.pids().unwrap().is_empty());
}

/// kill_all empties a cgroup holding a process tree, then delete removes it.
fn root_kill_all_and_delete() {
    let cg = TestCgroup::new("kill");
    // A nested child cgroup, which delete must remove first.
    let sub = open(
        &Hierarchies::detect().unwrap(),
        &format!("{}/sub", cg.path()),
    )
    .unwrap();
    sub.create().unwrap();
    let mut child = spawn_child("forktree");
    sub.add_process(i32::try_from(child.id()).unwrap()).unwrap();
    child.stdin.as_mut().unwrap().write_all(b"g").unwrap();
    assert_eq!(read_line(&mut child).trim(), "ready");
    assert_eq!(
        cg.pids().unwrap().len(),
        5,
        "parent + 4 forks, seen from above"
    );

    // Deleting a busy cgroup fails after the bounded EBUSY retries, naming it.
    let t = Instant::now();
    let e = cg.delete().unwrap_err();
    eprintln!("  delete while busy: {e} (after {:?})", t.elapsed());
    assert!(e.to_string().contains("sub"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(cg.exists());

    cg.kill_all().unwrap();
    assert!(cg.pids().unwrap().is_empty());
    let st = wait_for(&mut child, Duration::from_secs(5));
    assert_eq!(st.signal(), Some(libc::SIGKILL));
    cg.delete().unwrap();
    assert!(!cg.exists());
    for d in cg.dirs() {
        assert!(!d.exists(), "{} still there", d.display());
    }
}

/// kill_all empties a cgroup whose processes keep forking and exiting
/// (v2: with cgroup.kill).
fn root_kill_all_stops_a_churning_fork_bomb() {
    churning_fork_bomb(TestCgroup::new("churn"));
}

/// The same with signals only: v2 without cgroup.kill (kernels before 5.14);
/// v1 always works this way.
fn root_kill_all_by_signals_stops_a_churning_fork_bomb() {
    churning_fork_bomb(TestCgroup::with("churnsig", |hier, path| {
        if hier.version() == CgroupVersion::V2 {
            let root = hier.unified_mount().unwrap();
            Box::new(V2Manager::new(root, path).unwrap().with_cgroup_kill(false))
        } else {
            open(hier, path).unwrap()
        }
    }));
}

fn churning_fork_bomb(cg: TestCgroup) {
    let mut r = Resources::default();
    r.pids.limit = Some(64);
    cg.apply(&r).unwrap();
    let mut child = spawn_child("forkchurn");
    enter_and_go(&cg, &mut child);
    assert_eq!(read_line(&mut child).trim(), "churning");
    sleep(Duration::from_millis(500));
    let before = cg.pids().unwrap().len();
    let current = cg.stats().unwrap().pids.current.unwrap();
    eprintln!("  {before} processes listed, pids.current {current}");
    assert!(before > 3, "the bomb is not running: {before} processes");
    assert!(current <= 64);
    let t = Instant::now();
    cg.kill_all().unwrap();
    eprintln!("  kill_all took {:?}", t.elapsed());
    assert!(cg.pids().unwrap().is_empty());
    let st = wait_for(&mut child, Duration::from_secs(5));
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    // Orphans' zombies are reaped by init: the charge drops to 0.
    let t = Instant::now();
    while cg.stats().unwrap().pids.current != Some(0) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{:?}",
            cg.stats().unwrap().pids
        );
        sleep(Duration::from_millis(20));
    }
    cg.delete().unwrap();
    assert!(!cg.exists());
}

/// signal_all delivers a chosen signal to every process.
fn root_signal_all() {
    let cg = TestCgroup::new("signal");
    let mut child = spawn_child("forktree");
    enter_and_go(&cg, &mut child);
    assert_eq!(read_line(&mut child).trim(), "ready");
    cg.signal_all(libc::SIGTERM).unwrap();
    let st = wait_for(&mut child, Duration::from_secs(5));
    assert_eq!(st.signal(), Some(libc::SIGTERM));
    // The grandchildren got it too: the cgroup empties without kill_all.
    let t = Instant::now();
    while !cg.pids().unwrap().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", cg.pids());
        sleep(Duration::from_millis(20));
    }
}

/// Reads control file `name` of the cgroup, in whichever of its dirs has it.
fn read_back(cg: &TestCgroup, name: &str) -> String {
    let dir = cg
        .dirs()
        .into_iter()
        .find(|d| d.join(name).exists())
        .unwrap_or_else(|| panic!("no {name} in {:?}", cg.dirs()));
    std::fs::read_to_string(dir.join(name))
        .unwrap()
        .trim()
        .to_string()
}

/// The first block device's major:minor (vda here, a loop device in the lab).
fn some_block_device() -> Option<DeviceNumber> {
    let mut devs: Vec<_> = std::fs::read_dir("/sys/block").ok()?.flatten().collect();
    devs.sort_by_key(|e| {
        (
            e.file_name().to_string_lossy().starts_with("loop"),
            e.file_name(),
        )
    });
    let dev = std::fs::read_to_string(devs.first()?.path().join("dev")).ok()?;
    let (ma, mi) = dev.trim().split_once(':')?;
    Some(DeviceNumber::new(ma.parse().ok()?, mi.parse().ok()?))
}

/// Every resource the kernel accepts reads back as expected, and memory
/// limits can be lowered and raised with memory+swap in both orders.
fn root_apply_reads_back() {
    let cg = TestCgroup::new("apply");
    let v2 = cg.version() == CgroupVersion::V2;
    let mut r = Resources::default();
    r.memory.limit = Some(128 * MIB);
    r.memory.swap = Some(256 * MIB);
    r.memory.reservation = Some(32 * MIB);
    r.cpu.shares = Some(512);
    r.cpu.quota = Some(20_000);
    r.cpu.period = Some(100_000);
    r.cpu.burst = Some(1_000);
    r.cpu.cpus = Some("0".into());
    r.cpu.mems = Some("0".into());
    r.pids.limit = Some(32);
    let dev = some_block_device();
    match dev {
        Some(d) => {
            r.block_io.throttle_read_bps_device = vec![ThrottleDevice {
                device: d,
                rate: 1 << 20,
            }];
        }
        None => eprintln!("  NOTE: no block device in /sys/block: throttle not checked"),
    }
    cg.apply(&r).unwrap();
    let swap_file = v2 && cg.dirs()[0].join("memory.swap.max").exists();
    if v2 {
        assert_eq!(read_back(&cg, "memory.max"), "134217728");
        assert_eq!(read_back(&cg, "memory.low"), "33554432");
        if swap_file {
            assert_eq!(read_back(&cg, "memory.swap.max"), "134217728");
        }
        assert_eq!(read_back(&cg, "cpu.weight"), "59");
        assert_eq!(read_back(&cg, "cpu.max"), "20000 100000");
        assert_eq!(read_back(&cg, "cpu.max.burst"), "1000");
        assert_eq!(read_back(&cg, "cpuset.cpus"), "0");
        if let Some(d) = dev {
            assert_eq!(
                read_back(&cg, "io.max"),
                format!("{d} rbps=1048576 wbps=max riops=max wiops=max")
            );
        }
    } else {
        assert_eq!(read_back(&cg, "memory.limit_in_bytes"), "134217728");
        assert_eq!(read_back(&cg, "memory.memsw.limit_in_bytes"), "268435456");
        assert_eq!(read_back(&cg, "memory.soft_limit_in_bytes"), "33554432");
        assert_eq!(read_back(&cg, "cpu.shares"), "512");
        assert_eq!(read_back(&cg, "cpu.cfs_quota_us"), "20000");
        assert_eq!(read_back(&cg, "cpu.cfs_period_us"), "100000");
        assert_eq!(read_back(&cg, "cpu.cfs_burst_us"), "1000");
        assert_eq!(read_back(&cg, "cpuset.cpus"), "0");
        if let Some(d) = dev {
            assert_eq!(
                read_back(&cg, "blkio.throttle.read_bps_device"),
                format!("{d} 1048576")
            );
        }
    }
    assert_eq!(read_back(&cg, "cpuset.mems"), "0");
    assert_eq!(read_back(&cg, "pids.max"), "32");

    // Shrink below the old limit, then grow past the old memory+swap: on v1
    // the writes must be ordered so that limit <= memsw holds at every step.
    for (limit, swap) in [(64 * MIB, 64 * MIB), (512 * MIB, 1024 * MIB)] {
        let mut m = Resources::default();
        m.memory.limit = Some(limit);
        m.memory.swap = Some(swap);
        cg.apply(&m).unwrap();
        if v2 {
            assert_eq!(read_back(&cg, "memory.max"), limit.to_string());
            if swap_file {
                assert_eq!(
                    read_back(&cg, "memory.swap.max"),
                    (swap - limit).to_string()
                );
            }
        } else {
            assert_eq!(read_back(&cg, "memory.limit_in_bytes"), limit.to_string());
            assert_eq!(
                read_back(&cg, "memory.memsw.limit_in_bytes"),
                swap.to_string()
            );
        }
    }
    // Back to unlimited.
    let mut u = Resources::default();
    u.memory.limit = Some(-1);
    u.cpu.quota = Some(-1);
    u.pids.limit = Some(-1);
    cg.apply(&u).unwrap();
    assert_eq!(read_back(&cg, "pids.max"), "max");
    let s = cg.stats().unwrap();
    assert!(s.memory.limit.unwrap() > 1 << 60, "{:?}", s.memory);
    assert_eq!(s.pids.limit, Some(u64::MAX));
    if v2 {
        assert_eq!(read_back(&cg, "cpu.max"), "max 100000");
    } else {
        assert_eq!(read_back(&cg, "cpu.cfs_quota_us"), "-1");
    }

    // SCHED_IDLE for the group, on and off.
    for idle in [1, 0] {
        let mut i = Resources::default();
        i.cpu.idle = Some(idle);
        cg.apply(&i).unwrap();
        assert_eq!(read_back(&cg, "cpu.idle"), idle.to_string());
    }
    // v1 can switch the OOM killer off; v2 refuses to pretend.
    let mut o = Resources::default();
    o.memory.disable_oom_killer = Some(true);
    if v2 {
        assert!(cg.apply(&o).is_err());
    } else {
        cg.apply(&o).unwrap();
        assert!(read_back(&cg, "memory.oom_control").contains("oom_kill_disable 1"));
        o.memory.disable_oom_killer = Some(false);
        cg.apply(&o).unwrap();
        assert!(read_back(&cg, "memory.oom_control").contains("oom_kill_disable 0"));
    }

    // Block I/O weight, where the kernel has a weight file (BFQ or io.weight).
    let weight_file = [
        "blkio.weight",
        "blkio.bfq.weight",
        "io.weight",
        "io.bfq.weight",
    ]
    .into_iter()
    .find(|f| cg.dirs().iter().any(|d| d.join(f).exists()));
    match weight_file {
        Some(f) => {
            let mut w = Resources::default();
            w.block_io.weight = Some(500);
            cg.apply(&w).unwrap();
            let expect = match f {
                "io.weight" => "default 4950", // 1 + (500 - 10) * 9999 / 990
                _ => "500",
            };
            let got = read_back(&cg, f);
            eprintln!("  {f}: {got:?}");
            assert!(
                got.starts_with(expect) || got.contains(&format!("default {expect}")),
                "{f}: {got}"
            );
        }
        None => eprintln!("  NOTE: no block I/O weight file: weight not checked"),
    }

    // A value the kernel refuses comes back naming the file and the value.
    let mut bad = Resources::default();
    bad.cpu.cpus = Some("4096".into());
    let e = cg.apply(&bad).unwrap_err().to_string();
    eprintln!("  refused: {e}");
    assert!(e.starts_with("writing \"4096\" to /sys/fs/cgroup/"), "{e}");
    assert!(e.contains("cpuset.cpus: "), "{e}");
}

/// Device rules decide which device nodes a process in the cgroup may open:
/// v1 devices.allow/deny, v2 an eBPF program (replaced, not stacked, on update).
fn root_device_rules() {
    let cg = TestCgroup::new("devices");
    let probe = |cg: &TestCgroup| {
        let mut child = spawn_child("devices");
        enter_and_go(cg, &mut child);
        let line = read_line(&mut child).trim().to_string();
        assert!(wait_for(&mut child, Duration::from_secs(10)).success());
        line
    };
    let v2_programs = || {
        let hier = Hierarchies::detect().unwrap();
        hier.unified_mount()
            .filter(|_| hier.version() == CgroupVersion::V2)
            .map(|root| {
                V2Manager::new(root, cg.path())
                    .unwrap()
                    .device_programs()
                    .unwrap()
            })
    };
    assert_eq!(probe(&cg), "null-r=OK null-w=OK zero-r=OK");
    let cases: [(Vec<DeviceRule>, &str); 3] = [
        (
            vec![
                DeviceRule::DENY_ALL,
                DeviceRule::allow_char(1, 3, "r").unwrap(),
            ],
            "null-r=OK null-w=EPERM zero-r=EPERM",
        ),
        (
            vec![
                DeviceRule::DENY_ALL,
                DeviceRule::allow_char(1, 5, "rw").unwrap(),
            ],
            "null-r=EPERM null-w=EPERM zero-r=OK",
        ),
        (vec![], "null-r=EPERM null-w=EPERM zero-r=EPERM"),
    ];
    for (rules, expect) in cases {
        let r = Resources {
            devices: Some(rules.clone()),
            ..Default::default()
        };
        cg.apply(&r).unwrap();
        let got = probe(&cg);
        eprintln!(
            "  {:?} -> {got}",
            rules.iter().map(DeviceRule::v1_line).collect::<Vec<_>>()
        );
        assert_eq!(got, expect);
        if let Some(n) = v2_programs() {
            assert_eq!(n, 1, "device programs must be replaced, not stacked");
        }
    }
    // Allow everything again.
    let r = Resources {
        devices: Some(vec![DeviceRule {
            allow: true,
            ..DeviceRule::DENY_ALL
        }]),
        ..Default::default()
    };
    cg.apply(&r).unwrap();
    assert_eq!(probe(&cg), "null-r=OK null-w=OK zero-r=OK");
}

/// A child cgroup under a cgroup holding a process: fine on v1; on v2 the
/// "no internal processes" rule refuses the controllers, and the error names
/// the file and the value.
fn root_child_of_busy_cgroup() {
    let cg = TestCgroup::new("busy");
    let mut child = spawn_child("spin");
    enter_and_go(&cg, &mut child);
    let sub = open(
        &Hierarchies::detect().unwrap(),
        &format!("{}/child", cg.path()),
    )
    .unwrap();
    let res = sub.create();
    if cg.version() == CgroupVersion::V2 {
        let e = res.unwrap_err().to_string();
        eprintln!("  {e}");
        assert!(
            e.contains("cgroup.subtree_control: Device or resource busy"),
            "{e}"
        );
        assert!(e.starts_with("writing \"+"), "{e}");
        assert!(!sub.exists());
    } else {
        res.unwrap();
        assert!(sub.exists());
    }
    cg.kill_all().unwrap();
    let _ = child.wait();
}

/// Removes test cgroups left by runs that died (their pid suffix is gone).
fn remove_stale_test_cgroups() {
    let Ok(h) = Hierarchies::detect() else { return };
    let Ok(parent) = open(&h, "virtkit-test") else {
        return;
    };
    let mut names = std::collections::BTreeSet::new();
    for d in parent.dirs() {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                names.insert(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    for name in names {
        let pid = name.rsplit('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
            if let Ok(cg) = open(&h, &format!("virtkit-test/{name}")) {
                let _ = cg.kill_all();
                match cg.delete() {
                    Ok(()) => eprintln!("removed stale test cgroup virtkit-test/{name}"),
                    Err(e) => eprintln!("stale test cgroup virtkit-test/{name}: {e}"),
                }
            }
        }
    }
}

// ---------------------------------------------------------------- runner

fn main() {
    if let Ok(mode) = std::env::var(CHILD_ENV) {
        child_main(&mode);
    }
    let tests: &[(&str, fn())] = &[
        (
            "root_memory_hog_is_oom_killed",
            root_memory_hog_is_oom_killed,
        ),
        (
            "root_pids_max_stops_fork_bomb",
            root_pids_max_stops_fork_bomb,
        ),
        (
            "root_cpu_quota_throttles_spinner",
            root_cpu_quota_throttles_spinner,
        ),
        ("root_cpu_shares_split_a_cpu", root_cpu_shares_split_a_cpu),
        ("root_freeze_and_thaw", root_freeze_and_thaw),
        ("root_kill_all_and_delete", root_kill_all_and_delete),
        ("root_signal_all", root_signal_all),
        (
            "root_kill_all_stops_a_churning_fork_bomb",
            root_kill_all_stops_a_churning_fork_bomb,
        ),
        (
            "root_kill_all_by_signals_stops_a_churning_fork_bomb",
            root_kill_all_by_signals_stops_a_churning_fork_bomb,
        ),
        ("root_apply_reads_back", root_apply_reads_back),
        ("root_device_rules", root_device_rules),
        (
            "root_io_throttle_slows_a_reader",
            root_io_throttle_slows_a_reader,
        ),
        ("root_child_of_busy_cgroup", root_child_of_busy_cgroup),
        (
            "root_join_self_moves_the_caller",
            root_join_self_moves_the_caller,
        ),
    ];
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let mut list = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--list" => list = true,
            "--skip" => skips.extend(args.next()),
            "--test-threads" | "--format" | "--color" | "-Z" => {
                args.next();
            }
            s if s.starts_with('-') => {}
            s => filters.push(s.to_string()),
        }
    }
    let selected: Vec<_> = tests
        .iter()
        .filter(|(n, _)| filters.is_empty() || filters.iter().any(|f| n.contains(f.as_str())))
        .filter(|(n, _)| !skips.iter().any(|s| n.contains(s.as_str())))
        .collect();
    if list {
        for (n, _) in &selected {
            println!("{n}: test");
        }
        return;
    }
    if std::env::var("VIRTKIT_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        // Reported the way libtest reports #[ignore]: skipped, never passed.
        for (n, _) in &selected {
            println!("test {n} ... ignored, VIRTKIT_SKIP_ROOT_TESTS=1");
        }
        println!(
            "\ntest result: ok. 0 passed; 0 failed; {} ignored; 0 measured; 0 filtered out",
            selected.len()
        );
        return;
    }
    // SAFETY: geteuid() has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        remove_stale_test_cgroups();
    }
    let version = Hierarchies::detect().map(|h| h.version());
    println!(
        "\nrunning {} tests (cgroup {:?})",
        selected.len(),
        version.as_ref().map_err(ToString::to_string)
    );
    let mut failed = Vec::new();
    for (name, f) in &selected {
        let res = if euid != 0 {
            eprintln!("  {name} needs root (euid {euid}); set VIRTKIT_SKIP_ROOT_TESTS=1 to skip");
            Err(())
        } else {
            catch_unwind(AssertUnwindSafe(f)).map_err(|_| ())
        };
        match res {
            Ok(()) => println!("test {name} ... ok"),
            Err(()) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    // Remove the shared parent if it is empty (plain rmdir: never another
    // run's cgroups).
    if let Ok(h) = Hierarchies::detect() {
        if let Ok(parent) = open(&h, "virtkit-test") {
            for d in parent.dirs() {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        selected.len() - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        println!("failures: {failed:?}");
        std::process::exit(1);
    }
}
