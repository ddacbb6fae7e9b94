//! Times one container's cgroup life cycle on this machine, as root:
//! create, apply (memory, cpu, pids), add a process, kill everything, delete.
//!
//! `cargo run --release -p virtkit-cgroups --example cgroup_cycle [-- ROUNDS]`
//!
//! It works under `virtkit-bench/` at the hierarchy root(s) and removes what it made.

use std::process::Command;
use std::time::Instant;

use virtkit_cgroups::{open, Hierarchies, Resources};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: u32 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(200);
    let hier = Hierarchies::detect()?;
    let mut res = Resources::default();
    res.memory.limit = Some(256 << 20);
    res.cpu.shares = Some(512);
    res.cpu.quota = Some(50_000);
    res.cpu.period = Some(100_000);
    res.pids.limit = Some(100);
    // Seconds spent in create, apply, add_process, kill_all, delete.
    let mut spent = [0f64; 5];
    let mut time = |i: usize, t: Instant| spent[i] += t.elapsed().as_secs_f64();
    for i in 0..rounds {
        let cg = open(&hier, &format!("virtkit-bench/c{i}-{}", std::process::id()))?;
        let t = Instant::now();
        cg.create()?;
        time(0, t);
        let t = Instant::now();
        cg.apply(&res)?;
        time(1, t);
        let mut child = Command::new("sleep").arg("30").spawn()?;
        let t = Instant::now();
        cg.add_process(i32::try_from(child.id())?)?;
        time(2, t);
        let t = Instant::now();
        cg.kill_all()?;
        time(3, t);
        child.wait()?;
        let t = Instant::now();
        cg.delete()?;
        time(4, t);
    }
    for d in open(&hier, "virtkit-bench")?.dirs() {
        let _ = std::fs::remove_dir(d);
    }
    let us = |s: f64| s / f64::from(rounds) * 1e6;
    println!(
        "cgroup {:?} ({:?} layout), mean of {rounds}: create {:.0} µs, apply {:.0} µs, \
         add_process {:.0} µs, kill_all {:.0} µs, delete {:.0} µs",
        hier.version(),
        hier.layout(),
        us(spent[0]),
        us(spent[1]),
        us(spent[2]),
        us(spent[3]),
        us(spent[4])
    );
    Ok(())
}
