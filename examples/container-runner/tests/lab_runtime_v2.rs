//! container-runner on real cgroup v2: the lab (a QEMU VM whose `/sys/fs/cgroup` is
//! cgroup2) runs a statically built container-runner on a busybox rootfs: the lifecycle
//! (create, state, start, exec, kill, delete, no cgroup left), a memory limit that
//! OOM-kills, a pids limit that stops forks, and the eBPF device program denying a
//! device node the config creates but does not allow. `VIRTKIT_SKIP_LAB=1` opts out
//! (CI does not set it).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use virtkit_lab::{has_interpreter, run_in, static_binary, Payload, Venue};

/// `container-runner spec` (the host build), with `args`, no tty and `resources`.
fn config(dir: &Path, name: &str, args: &[&str], resources: Value) -> std::path::PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let st = Command::new(env!("CARGO_BIN_EXE_container-runner"))
        .arg("spec")
        .arg("-b")
        .arg(&d)
        .status()
        .unwrap();
    assert!(st.success(), "container-runner spec failed");
    let p = d.join("config.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    cfg["process"]["terminal"] = false.into();
    cfg["process"]["args"] = json!(args);
    let r = &mut cfg["linux"]["resources"];
    if r.is_null() {
        *r = json!({});
    }
    for (k, v) in resources.as_object().unwrap() {
        r[k] = v.clone();
    }
    if name == "dev" {
        // A node the container gets but may not open: only the eBPF program stops it.
        cfg["linux"]["devices"] = json!([{
            "path": "/dev/kmsg", "type": "c", "major": 1, "minor": 11,
            "fileMode": 438, "uid": 0, "gid": 0
        }]);
    }
    let out = dir.join(format!("config-{name}.json"));
    std::fs::write(&out, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    out
}

const SCRIPT: &str = r#"
echo "cgroupfs: $(grep ' /sys/fs/cgroup ' /proc/mounts | cut -d' ' -f3)"
set -e
mkdir -p rootfs/bin rootfs/proc rootfs/sys rootfs/dev rootfs/tmp
cp /bin/busybox rootfs/bin/busybox
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox rootfs/bin/$a; done
for b in life mem pids dev; do
    mkdir -p $b
    ln -s ../rootfs $b/rootfs
    mv config-$b.json $b/config.json
done
CR="./container-runner --root $PWD/state"
st() { $CR state "$1" | grep -o '"status": "[a-z]*"'; }

$CR create -b "$PWD/life" c1 </dev/null
echo "S1 $(st c1)"
$CR start c1
echo "S2 $(st c1)"
echo "MEMMAX $(cat /sys/fs/cgroup/virtkit/c1/memory.max)"
echo "PIDSMAX $(cat /sys/fs/cgroup/virtkit/c1/pids.max)"
$CR exec c1 sh -c 'echo EXEC-IN $(hostname)'
$CR kill c1 KILL
i=0
while [ "$(st c1)" != '"status": "stopped"' ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
echo "S3 $(st c1)"
$CR delete c1
if [ -e /sys/fs/cgroup/virtkit/c1 ]; then echo CGROUP-LEFT; else echo CGROUP-GONE; fi

set +e
$CR run -b "$PWD/mem" m1 </dev/null
echo "MEMRC $?"
$CR create -b "$PWD/pids" p1 </dev/null
$CR start p1
i=0
while ! grep -q '^max [1-9]' /sys/fs/cgroup/virtkit/p1/pids.events && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
sleep 1
echo "PIDS-CURRENT $(cat /sys/fs/cgroup/virtkit/p1/pids.current)"
echo "PIDS-PEAK $(cat /sys/fs/cgroup/virtkit/p1/pids.peak)"
echo "PIDS-EVENTS $(cat /sys/fs/cgroup/virtkit/p1/pids.events)"
$CR delete --force p1
echo "PIDSRC $?"
$CR run -b "$PWD/dev" d1 </dev/null
echo "DEVRC $?"
for d in /sys/fs/cgroup/virtkit/*/; do [ -d "$d" ] && echo "LEFTOVER $d"; done
exit 0
"#;

#[test]
#[cfg_attr(virtkit_skip_lab, ignore = "VIRTKIT_SKIP_LAB=1")]
fn lab_runtime_on_cgroup_v2() {
    let runner = static_binary("container-runner", "container-runner")
        .expect("static build of container-runner");
    assert!(
        !has_interpreter(&std::fs::read(&runner).unwrap()),
        "{} is not static",
        runner.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let mib = 1i64 << 20;
    let life = config(
        dir.path(),
        "life",
        &["sleep", "300"],
        json!({"memory": {"limit": 64 * mib}, "pids": {"limit": 32}}),
    );
    // The shell keeps 64 MiB of output in a variable: far past 16 MiB.
    let mem = config(
        dir.path(),
        "mem",
        &[
            "sh",
            "-c",
            "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo SURVIVED ${#x}",
        ],
        json!({"memory": {"limit": 16 * mib, "swap": 16 * mib}}),
    );
    // An inner shell forks sleeps until fork fails (ash then exits): the cgroup peaks at
    // 8 tasks, the limit, and pids.events counts the refused fork.
    let pids = config(
        dir.path(),
        "pids",
        &[
            "sh",
            "-c",
            "sh -c 'while :; do sleep 30 & done' 2>/dev/null; echo INNER-EXITED; sleep 300",
        ],
        json!({"pids": {"limit": 8}}),
    );
    let dev = config(
        dir.path(),
        "dev",
        &[
            "sh",
            "-c",
            "if head -c 1 /dev/kmsg >/dev/null 2>&1; then echo KMSG-OPEN; else echo KMSG-DENIED; fi; \
             ls -l /dev/kmsg; head -c 1 /dev/zero >/dev/null && echo ZERO-OPEN",
        ],
        json!({}),
    );
    let payload = Payload::new(SCRIPT)
        .file(&runner, "container-runner")
        .file(&life, "config-life.json")
        .file(&mem, "config-mem.json")
        .file(&pids, "config-pids.json")
        .file(&dev, "config-dev.json")
        .timeout(Duration::from_secs(300));
    let out = run_in(Venue::Lab, &payload).expect("running the lab");
    let o = &out.output;
    assert!(
        out.success(),
        "lab script failed (status {}):\n{o}",
        out.status
    );
    let want = [
        "cgroupfs: cgroup2",
        "S1 \"status\": \"created\"",
        "S2 \"status\": \"running\"",
        "MEMMAX 67108864",
        "PIDSMAX 32",
        "EXEC-IN ",
        "S3 \"status\": \"stopped\"",
        "CGROUP-GONE",
        // OOM-killed: 128 + SIGKILL.
        "MEMRC 137",
        "INNER-EXITED",
        "PIDS-PEAK 8",
        "PIDS-EVENTS max ",
        "PIDSRC 0",
        "KMSG-DENIED",
        "ZERO-OPEN",
        "DEVRC 0",
    ];
    for w in want {
        assert!(o.contains(w), "missing {w:?} in the lab output:\n{o}");
    }
    for bad in ["SURVIVED", "KMSG-OPEN", "LEFTOVER", "CGROUP-LEFT"] {
        assert!(
            !o.contains(bad),
            "unexpected {bad:?} in the lab output:\n{o}"
        );
    }
}
