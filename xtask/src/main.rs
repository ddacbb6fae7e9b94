//! Project tasks (see README.md and docs/testing.md):
//!
//! - `cargo xtask test [CARGO TEST ARGS]`: format check, clippy, the workspace's tests
//!   (unit, host KVM and lab tiers), after building the guest artifacts.
//! - `cargo xtask guest`: build the test guest's kernel and initramfs, and the Debian
//!   guest (debootstrap; needs root and deb.debian.org), all cached.
//! - `cargo xtask lab [--timeout S] [--file HOST[:NAME]]... [--program PATH]... [--qemu] [--host] -- CMD...`:
//!   run a command in the lab VM (or, with `--host`, here) and exit with its status.
//! - `cargo xtask demo [WORD...]`: build the guest and boot it with vm-runner where Linux
//!   boots, with a qcow2 disk, on a bridged tap; run a container (only the parts whose
//!   names contain a WORD, when given).
//! - `cargo xtask boot-bench [--runs N] [--cpus N] [--memory MiB] [--kernel vmlinux|bzImage]`:
//!   boot to the /init marker, vm-runner vs QEMU microvm, in one lab run (see
//!   benches/scripts/boot-vs-qemu.sh).
//! - `cargo xtask bench [--quick] [--update-docs] [GROUP...]`: every benchmark group side by
//!   side with its peer; writes target/bench/report.{md,json} and ratios.svg (`src/bench/`).
//! - `cargo xtask fuzz [TARGET...] [--time SECONDS] [--jobs N] [--build-only]`: run the fuzz
//!   targets (all by default), installing cargo-fuzz when missing (`src/fuzz.rs`).
//! - `cargo xtask soak vm-boots [OPTIONS]`: boot the guest with vm-runner hundreds of
//!   times in one lab run and count boots that locked up a CPU (`src/soak.rs`).
//! - `cargo xtask soak containers [--cycles N]`: N container-runner `run`/`delete` cycles
//!   on the host (root), failing on anything left behind (`src/soak_containers.rs`).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use virtkit_lab::{BootResult, GuestBoot, Payload, Venue, Vmm};

mod bench;
mod demo_web;
mod fuzz;
mod soak;
mod soak_containers;
mod soak_vm;

/// Debian packages the whole test suite needs (also installed by .ci/run).
const TEST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-utils",
    "busybox-static",
    "cpio",
    "linux-source-6.1",
    "bc",
    "flex",
    "bison",
    "libelf-dev",
    "libssl-dev",
    "make",
    "gcc",
    "xz-utils",
    "e2fsprogs",
    "runc",
    "crun",
    "iproute2",
    "iperf3",
    "podman",
    "conmon",
    "docker.io",
    "containerd",
    "libc6-dev",
    "attr",
    "docker-registry",
    "skopeo",
    "apache2-utils",
    "openssl",
    "nftables",
    "debootstrap",
];

pub(crate) fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let start = Instant::now();
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .status()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed with {status}", args.join(" "));
    }
    eprintln!(
        "xtask: cargo {} took {:.0?}",
        args.join(" "),
        start.elapsed()
    );
    Ok(())
}

fn timed<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    eprintln!("xtask: {what} ...");
    let r = f()?;
    eprintln!("xtask: {what} took {:.1?}", start.elapsed());
    Ok(r)
}

/// The test guest's initramfs used by `guest` and `demo`: prints what the guest sees.
const DEMO_SCRIPT: &str =
    "echo \"guest: $(grep -c ^processor /proc/cpuinfo) cpus, $(grep MemTotal /proc/meminfo)\"\n";

fn guest() -> Result<(virtkit_lab::GuestKernel, PathBuf)> {
    let kernel = timed("guest kernel", || Ok(virtkit_lab::guest_kernel()?))?;
    let initrd = timed("guest initramfs", || {
        Ok(virtkit_lab::initramfs(DEMO_SCRIPT, &[])?)
    })?;
    println!("bzImage:   {}", kernel.bzimage.display());
    println!("vmlinux:   {}", kernel.vmlinux.display());
    println!("initramfs: {}", initrd.display());
    Ok((kernel, initrd))
}

/// `guest`: the test guest, then the stock Debian guest (`virtkit_lab::debian_guest`).
fn guest_all() -> Result<()> {
    guest()?;
    let debian = timed("Debian guest", || Ok(virtkit_lab::debian_guest()?))?;
    println!(
        "debian:    {} (root.qcow2, vmlinuz, initrd.img)",
        debian.dir.display()
    );
    Ok(())
}

fn test(extra: &[String]) -> Result<()> {
    let start = Instant::now();
    if let Err(e) = virtkit_lab::ensure_packages(TEST_PACKAGES) {
        // Not root: say what is missing but go on; the tests that need it fail clearly.
        eprintln!("xtask: warning: {e}");
    }
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ])?;
    if virtkit_lab::lab_opted_out("guest build") {
        eprintln!(
            "xtask: {} set: not building the guest",
            virtkit_lab::SKIP_LAB_ENV
        );
    } else {
        guest_all()?;
    }
    // Every test binary runs even after one failed, so that a run shows all its failures.
    let mut args = vec!["test", "--workspace", "--all-features", "--no-fail-fast"];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)?;
    eprintln!("xtask: test passed in {:.0?}", start.elapsed());
    Ok(())
}

fn lab(args: &[String]) -> Result<i32> {
    let usage = "usage: cargo xtask lab [--timeout S] [--file HOST[:NAME]]... [--program PATH]... [--qemu] [--host] -- CMD...";
    let mut payload_opts: Vec<Box<dyn FnOnce(Payload) -> Result<Payload>>> = Vec::new();
    let mut venue = Venue::Lab;
    let mut timeout = Duration::from_secs(600);
    let mut it = args.iter();
    let mut cmd: Vec<String> = Vec::new();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--" => {
                cmd = it.by_ref().cloned().collect();
                break;
            }
            "--host" => venue = Venue::Host,
            "--qemu" => payload_opts.push(Box::new(|p| Ok(virtkit_lab::with_qemu_peer(p)?))),
            "--timeout" => {
                let s = it.next().context(usage)?;
                timeout = Duration::from_secs(s.parse().with_context(|| format!("--timeout {s}"))?);
            }
            "--file" => {
                let spec = it.next().context(usage)?.clone();
                let (host, name) = match spec.split_once(':') {
                    Some((h, n)) => (PathBuf::from(h), n.to_string()),
                    None => {
                        let h = PathBuf::from(&spec);
                        let n = h
                            .file_name()
                            .context("--file needs a file")?
                            .to_string_lossy()
                            .into_owned();
                        (h, n)
                    }
                };
                payload_opts.push(Box::new(move |p| Ok(p.file(host, name))));
            }
            "--program" => {
                let prog = it.next().context(usage)?.clone();
                payload_opts.push(Box::new(move |p| Ok(p.host_program(prog)?)));
            }
            _ => {
                cmd = std::iter::once(a.clone())
                    .chain(it.by_ref().cloned())
                    .collect();
                break;
            }
        }
    }
    if cmd.is_empty() {
        bail!("{usage}");
    }
    let script: Vec<String> = cmd.iter().map(|a| virtkit_lab::boot::quote(a)).collect();
    let mut payload = Payload::new(script.join(" ")).timeout(timeout);
    for f in payload_opts {
        payload = f(payload)?;
    }
    let out = virtkit_lab::run_in(venue, &payload)?;
    eprintln!(
        "xtask: payload exited with {} after {:.1?} (venue {})",
        out.status, out.elapsed, out.venue
    );
    Ok(out.status)
}

/// One part of the demo: a name and what it does.
type DemoPart = (&'static str, fn() -> Result<()>);

/// The demo's parts, in order; add new parts here.
const DEMO_PARTS: &[DemoPart] = &[
    ("boot the guest with vm-runner", demo_vm_boot),
    (
        "guest reads and writes a qcow2 disk (vm-runner --disk)",
        demo_disk,
    ),
    (
        "guest pings its host over a bridged tap (vm-runner --net)",
        demo_net,
    ),
    ("run a container with container-runner", demo_container),
    (
        "pull an image from a registry and run it (virtkit)",
        demo_image,
    ),
    (
        "build a web image, run it with -d -p, fetch its page (virtkit)",
        demo_web::demo_web,
    ),
];

/// Boots the guest with vm-runner and `check` as its script, after `setup` ran in the
/// payload; `files` go into the payload; the boot must reach /init, the check must pass
/// and the output must contain `expect`.
fn demo_guest(
    name: &str,
    check: &str,
    vm_args: &[&str],
    (setup, teardown): (&str, &str),
    files: Vec<(PathBuf, &str)>,
    expect: &str,
) -> Result<()> {
    let kernel = virtkit_lab::guest_kernel()?;
    let initrd = virtkit_lab::initramfs(check, &[])?;
    let vm_runner = virtkit_lab::static_binary("vm-runner", "vm-runner")?;
    let mut boot = GuestBoot::new(name, Vmm::VmRunner, 1, 256, "./vmlinux", "./initrd");
    boot.extra_args = vm_args.iter().map(|a| a.to_string()).collect();
    let mut payload = virtkit_lab::boot_payload(std::slice::from_ref(&boot))?
        .prepend_script(setup)
        .append_script(teardown)
        .file(vm_runner, "vm-runner")
        .file(kernel.vmlinux, "vmlinux")
        .file(initrd, "initrd")
        .timeout(Duration::from_secs(300));
    for (host, inner) in files {
        payload = payload.file(host, inner);
    }
    let out = virtkit_lab::run(&payload)?;
    let r = BootResult::parse(&out.output, name).context("the boot never started")?;
    if !r.reached_init || r.check_status != Some(0) || r.status != 0 || !r.console.contains(expect)
    {
        bail!(
            "{name}: failed (reached /init: {}, check status {:?}, vm-runner status {}):\n{}",
            r.reached_init,
            r.check_status,
            r.status,
            r.console
        );
    }
    Ok(())
}

fn demo_disk() -> Result<()> {
    // An ext4 file system holding one file, converted to qcow2 on the host.
    let dir = tempfile::tempdir()?;
    let content = dir.path().join("content");
    std::fs::create_dir(&content)?;
    std::fs::write(content.join("hello.txt"), "hello from a qcow2 disk\n")?;
    let raw = dir.path().join("disk.raw");
    let qcow2 = dir.path().join("disk.qcow2");
    let run = |cmd: &mut Command| -> Result<()> {
        let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
        if !out.status.success() {
            bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&raw)
        .arg("16M"))?;
    run(Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2))?;
    demo_guest(
        "demo-disk",
        "mount -t ext4 /dev/vda /mnt && cat /mnt/hello.txt && echo written-by-guest > /mnt/out.txt \
         && umount /mnt && mount -t ext4 /dev/vda /mnt && echo \"read back: $(cat /mnt/out.txt)\" && umount /mnt\n",
        &["--disk", "path=./disk.qcow2,format=qcow2"],
        ("", ""),
        vec![(qcow2, "disk.qcow2")],
        "read back: written-by-guest",
    )
}

fn demo_net() -> Result<()> {
    demo_guest(
        "demo-net",
        "ip link set eth0 up && ip addr add 10.0.2.2/24 dev eth0 && ping -c 3 -W 5 10.0.2.1\n",
        &["--net", "tap=vktap0,bridge=vkbr0"],
        (
            "ip link add vkbr0 type bridge && ip addr add 10.0.2.1/24 dev vkbr0 && ip link set vkbr0 up\n",
            "ip link del vktap0 2>/dev/null; ip link del vkbr0 2>/dev/null; true\n",
        ),
        Vec::new(),
        "3 packets received",
    )
}

/// Where containers run: the host when it has a unified cgroup v2 hierarchy, else the
/// lab (which has one).
fn container_venue() -> Venue {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.contains(" /sys/fs/cgroup cgroup2 "))
    {
        Venue::Host
    } else {
        Venue::Lab
    }
}

fn demo_container() -> Result<()> {
    let runner = timed("static container-runner", || {
        Ok(virtkit_lab::static_binary(
            "container-runner",
            "container-runner",
        )?)
    })?;
    // The bundle's config.json: `container-runner spec`, with our command and no tty.
    let dir = tempfile::tempdir()?;
    let out = Command::new(&runner)
        .arg("spec")
        .arg("-b")
        .arg(dir.path())
        .output()?;
    if !out.status.success() {
        bail!(
            "container-runner spec failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cfg_path = dir.path().join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path)?)?;
    cfg["process"]["terminal"] = false.into();
    cfg["process"]["args"] = serde_json::json!([
        "sh",
        "-c",
        "echo \"container: hello from $(hostname), pid $$, cgroup $(cat /proc/self/cgroup)\""
    ]);
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg)?)?;
    // The rootfs is busybox, made where the container runs.
    let script = "set -e\n\
        mkdir -p bundle/rootfs/bin bundle/rootfs/proc bundle/rootfs/sys bundle/rootfs/dev bundle/rootfs/tmp\n\
        cp /bin/busybox bundle/rootfs/bin/busybox\n\
        for a in $(/bin/busybox --list); do [ \"$a\" = busybox ] || ln -sf busybox bundle/rootfs/bin/$a; done\n\
        mv config.json bundle/config.json\n\
        ./container-runner --root \"$PWD/state\" run -b \"$PWD/bundle\" virtkit-demo </dev/null\n";
    let venue = container_venue();
    let payload = Payload::new(script)
        .file(runner, "container-runner")
        .file(cfg_path, "config.json")
        .timeout(Duration::from_secs(300));
    let out = virtkit_lab::run_in(venue, &payload)?;
    if !out.success() || !out.output.contains("container: hello from") {
        bail!(
            "the container did not run (status {}):\n{}",
            out.status,
            out.output
        );
    }
    eprintln!("xtask: container-runner ran the container (venue {venue})");
    Ok(())
}

/// A busybox image pushed into a local registry (Debian's docker-registry, skopeo), then
/// `virtkit pull` and `virtkit run` with container-runner, on the host.
fn demo_image() -> Result<()> {
    virtkit_lab::ensure_packages(&["docker-registry", "skopeo", "busybox-static"])?;
    let runner = virtkit_lab::static_binary("container-runner", "container-runner")?;
    cargo(&["build", "-q", "-p", "virtkit"])?;
    let virtkit = virtkit_lab::workspace_root()?.join("target/debug/virtkit");
    let dir = tempfile::tempdir()?;
    let reg = virtkit_lab::registry::TestRegistry::start(dir.path(), None)?;
    let layout = virtkit_lab::registry::busybox_layout(
        dir.path(),
        &[
            "/bin/sh",
            "-c",
            "echo image: hello from $WHO, pulled and run by virtkit",
        ],
        &["WHO=busybox"],
    )?;
    reg.push(&layout, "v1", "demo/busybox:1", None)?;
    let image = format!("{}/demo/busybox:1", reg.addr);
    let root = dir.path().join("state");
    let vk = |args: &[&str]| -> Result<String> {
        let out = Command::new(&virtkit)
            .arg("--root")
            .arg(&root)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("virtkit {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    vk(&["pull", &image])?;
    eprint!("{}", vk(&["images"])?);
    let out = vk(&[
        "run",
        "--rm",
        "--runtime",
        &runner.to_string_lossy(),
        &image,
    ])?;
    eprint!("{out}");
    if !out.contains("image: hello from busybox") {
        bail!("the image's container printed {out:?}");
    }
    Ok(())
}

fn demo_vm_boot() -> Result<()> {
    let (kernel, initrd) = guest()?;
    let vm_runner = timed("static vm-runner", || {
        Ok(virtkit_lab::static_binary("vm-runner", "vm-runner")?)
    })?;
    let boot = GuestBoot::new("demo", Vmm::VmRunner, 2, 256, "./bzImage", "./initrd");
    let payload = virtkit_lab::boot_payload(std::slice::from_ref(&boot))?
        .file(vm_runner, "vm-runner")
        .file(kernel.bzimage, "bzImage")
        .file(initrd, "initrd")
        .timeout(Duration::from_secs(300));
    let out = virtkit_lab::run(&payload)?;
    let r = BootResult::parse(&out.output, &boot.name).context("the boot never started")?;
    if !r.reached_init || r.status != 0 {
        bail!(
            "vm-runner did not boot the guest to /init and exit 0 (status {})",
            r.status
        );
    }
    eprintln!(
        "xtask: vm-runner booted the guest to /init in {:.0} ms (venue {})",
        r.marker_us.unwrap_or(0) as f64 / 1000.0,
        out.venue
    );
    Ok(())
}

/// `boot-bench`: vm-runner against QEMU microvm (KVM), same kernel, initramfs, vCPUs
/// and memory, interleaved in ONE lab run; prints medians and the ratio.
fn boot_bench(args: &[String]) -> Result<()> {
    let mut runs = 5u32;
    let mut cpus = 1u32;
    let mut memory = 128u32;
    let mut kernel_kind = "vmlinux".to_string();
    let mut append = String::new();
    let mut console_dir: Option<std::path::PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().context("boot-bench: option needs a value");
        match a.as_str() {
            "--runs" => runs = val()?.parse()?,
            "--cpus" => cpus = val()?.parse()?,
            "--memory" => memory = val()?.parse()?,
            "--kernel" => kernel_kind = val()?.clone(),
            "--append" => append = val()?.clone(),
            "--console" => console_dir = Some(val()?.into()),
            other => bail!(
                "boot-bench: unknown option {other}; usage: boot-bench [--runs N] [--cpus N] [--memory MiB] [--kernel vmlinux|bzImage] [--append 'KERNEL ARGS'] [--console DIR]"
            ),
        }
    }
    if runs == 0 {
        bail!("boot-bench: --runs must be at least 1");
    }
    let (kernel, initrd) = guest()?;
    let kernel_file = match kernel_kind.as_str() {
        "vmlinux" => kernel.vmlinux,
        "bzImage" => kernel.bzimage,
        other => bail!("boot-bench: --kernel {other}: expected vmlinux or bzImage"),
    };
    let vm_runner = timed("static vm-runner", || {
        Ok(virtkit_lab::static_binary("vm-runner", "vm-runner")?)
    })?;
    let kpath = format!("./{kernel_kind}");
    let mut boots = Vec::new();
    // One warm-up boot each, then the measured runs, interleaved against drift.
    for i in 0..=runs {
        for (vmm, tag) in [(Vmm::VmRunner, "vm-runner"), (Vmm::QemuMicrovm, "qemu")] {
            let mut b =
                GuestBoot::new(&format!("{tag}-{i}"), vmm, cpus, memory, &kpath, "./initrd");
            if !append.is_empty() {
                b.cmdline = format!("{} {append}", b.cmdline);
            }
            boots.push(b);
        }
    }
    let payload = virtkit_lab::boot_payload(&boots)?
        .file(vm_runner, "vm-runner")
        .file(kernel_file, &kernel_kind)
        .file(initrd, "initrd")
        .echo(false)
        .timeout(Duration::from_secs(120 + 60 * u64::from(runs)));
    let out = virtkit_lab::run(&payload)?;
    println!(
        "boot to /init marker: {cpus} vCPU(s), {memory} MiB, {kernel_kind}, {runs} runs each (venue {})",
        out.venue
    );
    let mut medians = Vec::new();
    let median = |mut v: Vec<f64>| -> (f64, f64, f64) {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    for tag in ["vm-runner", "qemu"] {
        let mut ms = Vec::new();
        let mut guest_ms = Vec::new();
        for i in 1..=runs {
            let r = BootResult::parse(&out.output, &format!("{tag}-{i}"))
                .with_context(|| format!("{tag} run {i} never started"))?;
            if let Some(dir) = &console_dir {
                std::fs::create_dir_all(dir)?;
                std::fs::write(dir.join(format!("{tag}-{i}.log")), &r.console)?;
            }
            let Some(us) = r.marker_us.filter(|_| r.reached_init) else {
                bail!(
                    "{tag} run {i} did not reach /init (status {}):\n{}",
                    r.status,
                    r.console
                );
            };
            ms.push(us as f64 / 1000.0);
            // The guest's own clock at the marker: the kernel's part of the boot.
            let uptime = r.console.lines().find_map(|l| {
                let rest = l.split_once(virtkit_lab::INIT_MARKER)?.1;
                rest.trim().strip_prefix("uptime=")?.parse::<f64>().ok()
            });
            if let Some(u) = uptime {
                guest_ms.push(u * 1000.0);
            }
        }
        let (med, min, max) = median(ms);
        let guest = if guest_ms.len() == runs as usize {
            let (g, _, _) = median(guest_ms);
            format!("   (guest clock at marker: median {g:7.1} ms)")
        } else {
            String::new()
        };
        println!("  {tag:<10} median {med:8.1} ms   min {min:8.1} ms   max {max:8.1} ms{guest}");
        medians.push(med);
    }
    let ratio = medians[0] / medians[1];
    println!(
        "  ratio vm-runner / qemu = {ratio:.2} (target <= 0.80): {}",
        if ratio <= 0.8 { "met" } else { "NOT met" }
    );
    Ok(())
}

fn demo(only: &[String]) -> Result<()> {
    let mut failed = Vec::new();
    let parts: Vec<&DemoPart> = DEMO_PARTS
        .iter()
        .filter(|(name, _)| only.is_empty() || only.iter().any(|o| name.contains(o.as_str())))
        .collect();
    for (name, part) in parts.iter().copied() {
        if let Err(e) = timed(name, part) {
            eprintln!("xtask: demo part `{name}` FAILED: {e:#}");
            failed.push(*name);
        }
    }
    if !failed.is_empty() {
        bail!("demo parts failed: {}", failed.join("; "));
    }
    eprintln!("xtask: demo: all {} parts passed", parts.len());
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tasks = "tasks: test, guest, lab, demo, boot-bench, bench, soak, fuzz";
    match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("guest") => guest_all(),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("lab") => {
            let code = lab(&args[1..])?;
            std::process::exit(code);
        }
        Some("demo") => demo(&args[1..]),
        Some("boot-bench") => boot_bench(&args[1..]),
        Some("soak") if args.get(1).is_some_and(|g| g == "containers") => {
            soak_containers::run(&args[2..])
        }
        Some("soak") => soak::soak(&args[1..]),
        Some(other) => bail!("unknown task `{other}`; {tasks}"),
        None => bail!("usage: cargo xtask <task>; {tasks}"),
    }
}
