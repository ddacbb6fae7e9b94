//! `lab-stamp [--timeout SECS] [--marker TEXT] -- CMD ARGS...`
//!
//! Runs CMD with its stdout and stderr merged, copies each line to stdout as it comes,
//! and times it from just before the exec: when the first line containing TEXT
//! appeared and when CMD ended. Kills CMD after SECS. Ends with one line
//! `BOOT-STAMP status=<code> marker_us=<µs or -1> total_us=<µs>` and exits with
//! CMD's status (137 when killed). A CMD that SIGKILL cannot end within
//! `KILL_GRACE` is stuck in the kernel (a soft lockup inside KVM_RUN, say): then it
//! prints `BOOT-STUCK`, the reason, and `BOOT-STAMP status=-2 ...`, and exits with 124
//! without waiting for it, so one wedged boot cannot hang the whole lab run. Built statically and carried into the lab by
//! `virtkit_lab::boot_payload` to time guest boots.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a killed command may take to end before it counts as stuck.
const KILL_GRACE: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut timeout = Duration::from_secs(3600);
    let mut marker: Option<String> = None;
    let mut i = 0;
    while i < args.len() && args[i] != "--" {
        match (args[i].as_str(), args.get(i + 1)) {
            ("--timeout", Some(v)) => match v.parse::<u64>() {
                Ok(s) => timeout = Duration::from_secs(s),
                Err(_) => return usage(&format!("bad --timeout {v}")),
            },
            ("--marker", Some(v)) => marker = Some(v.clone()),
            (other, _) => return usage(&format!("unexpected {other}")),
        }
        i += 2;
    }
    let cmd = &args[(i + 1).min(args.len())..];
    if cmd.is_empty() {
        return usage("no command");
    }
    let (reader, writer) = match pipe() {
        Ok(p) => p,
        Err(e) => return fail(&format!("pipe: {e}")),
    };
    let writer2 = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return fail(&format!("pipe: {e}")),
    };
    let start = Instant::now();
    let mut child = match Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return fail(&format!("{}: {e}", cmd[0])),
    };
    // Lines are read on a thread so that the main thread can enforce the timeout.
    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    std::thread::spawn(move || {
        let mut r = BufReader::new(reader);
        let mut buf = Vec::new();
        while let Ok(n) = r.read_until(b'\n', &mut buf) {
            if n == 0 {
                break;
            }
            let line = String::from_utf8_lossy(&buf).into_owned();
            buf.clear();
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let mut marker_at: Option<Duration> = None;
    let mut killed: Option<Instant> = None;
    let mut out = std::io::stdout();
    let deadline = start + timeout;
    let mut status = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(10)) {
            Ok((at, line)) => {
                if marker_at.is_none() && marker.as_deref().is_some_and(|m| line.contains(m)) {
                    marker_at = Some(at - start);
                }
                let _ = out.write_all(line.as_bytes());
                let _ = out.flush();
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // All writers closed: the command (and anything it spawned) is done.
                break;
            }
        }
        if status.is_none() {
            if let Ok(Some(s)) = child.try_wait() {
                status = Some((s, start.elapsed()));
            }
        }
        if Instant::now() >= deadline && killed.is_none() {
            let _ = child.kill();
            killed = Some(Instant::now());
        }
        if killed.is_some() && status.is_some() {
            break;
        }
        if status.is_none() && killed.is_some_and(|k| k.elapsed() >= KILL_GRACE) {
            println!("BOOT-STUCK");
            println!(
                "lab-stamp: {} not ended {KILL_GRACE:?} after SIGKILL: {}",
                cmd[0],
                virtkit_lab::soak::STUCK_MESSAGE
            );
            println!(
                "BOOT-STAMP status=-2 marker_us={} total_us={}",
                marker_at.map(|d| d.as_micros() as i64).unwrap_or(-1),
                start.elapsed().as_micros()
            );
            let _ = out.flush();
            return ExitCode::from(124);
        }
    }
    let (st, total) = match status {
        Some(s) => s,
        None => match child.wait() {
            Ok(s) => (s, start.elapsed()),
            Err(e) => return fail(&format!("wait: {e}")),
        },
    };
    use std::os::unix::process::ExitStatusExt;
    let code = st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0));
    // The reader thread may see the marker line only after the exit was observed (a
    // busy machine schedules it late): the VMM ended no earlier than its last output.
    let total = total.max(marker_at.unwrap_or_default());
    let marker_us = marker_at.map(|d| d.as_micros() as i64).unwrap_or(-1);
    println!(
        "BOOT-STAMP status={code} marker_us={marker_us} total_us={}",
        total.as_micros()
    );
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> std::io::Result<(std::fs::File, std::fs::File)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned by nothing else.
    Ok(unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    })
}

fn usage(why: &str) -> ExitCode {
    eprintln!("lab-stamp: {why}\nusage: lab-stamp [--timeout SECS] [--marker TEXT] -- CMD ARGS...");
    ExitCode::from(2)
}

fn fail(why: &str) -> ExitCode {
    eprintln!("lab-stamp: {why}");
    println!("BOOT-STAMP status=127 marker_us=-1 total_us=0");
    ExitCode::from(127)
}
