//! Control-file helpers: every read and write goes through here so every error
//! names its file (and the value, for writes).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;

use crate::error::{Error, Result};

/// Writes `value` to the control file `path` (which must exist: cgroupfs
/// creates control files itself, so a missing one means a missing feature).
pub(crate) fn write(path: &Path, value: &str) -> Result<()> {
    let err = |source| Error::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    };
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(err)?;
    // cgroupfs takes a value in one write(2); write_all would retry short writes.
    f.write_all(value.as_bytes()).map_err(err)
}

/// A control file kept open for several writes (each value one `write(2)`, as cgroupfs
/// reads one value per write).
#[derive(Debug)]
pub(crate) struct ControlFile {
    path: PathBuf,
    file: fs::File,
}

impl ControlFile {
    /// Opens the existing control file `path` for writing.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|source| Error::Write {
                path: path.to_path_buf(),
                value: String::new(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Writes one value as one line (`value` and a newline, in one `write(2)`, as
    /// `echo` would): cgroupfs takes it as one value, and a plain file (a fake tree)
    /// keeps every value in order, one a line.
    pub(crate) fn write_line(&mut self, value: &str) -> Result<()> {
        let mut line = String::with_capacity(value.len() + 1);
        line.push_str(value);
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|source| Error::Write {
                path: self.path.clone(),
                value: value.to_string(),
                source,
            })
    }
}

/// Writes `value` to `dir/name`.
pub(crate) fn write_in(dir: &Path, name: &str, value: &str) -> Result<()> {
    write(&dir.join(name), value)
}

/// Reads a whole control file.
pub(crate) fn read(path: &Path) -> Result<String> {
    read_small(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a control file with open, read until EOF, close: control files report size 0,
/// so the `fstat` + `lseek` that `std::fs::read_to_string` spends on a size hint only
/// cost time.
fn read_small(path: &Path) -> io::Result<String> {
    use std::io::Read;
    let mut f = fs::File::open(path)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    String::from_utf8(out).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Reads `dir/name` if it exists, `None` if it does not.
pub(crate) fn read_opt(path: &Path) -> Result<Option<String>> {
    match read_small(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn parse_err(path: &Path, content: &str, reason: &str) -> Error {
    Error::Parse {
        path: path.to_path_buf(),
        content: content.chars().take(200).collect(),
        reason: reason.to_string(),
    }
}

/// Parses one unsigned number; "max" reads as `u64::MAX`.
pub(crate) fn parse_u64(path: &Path, s: &str) -> Result<u64> {
    let t = s.trim();
    if t == "max" {
        return Ok(u64::MAX);
    }
    t.parse::<u64>()
        .map_err(|_| parse_err(path, s, "expected an unsigned number or \"max\""))
}

/// Reads a single-number control file.
pub(crate) fn read_u64(path: &Path) -> Result<u64> {
    let s = read(path)?;
    parse_u64(path, &s)
}

/// Reads a single-number control file if it exists.
pub(crate) fn read_u64_opt(path: &Path) -> Result<Option<u64>> {
    match read_opt(path)? {
        Some(s) => parse_u64(path, &s).map(Some),
        None => Ok(None),
    }
}

/// Reads a "flat keyed" file ("key value" lines, as cpu.stat or
/// memory.events) and returns the value of `key` if present.
pub(crate) fn keyed_value(path: &Path, content: &str, key: &str) -> Result<Option<u64>> {
    for line in content.lines() {
        let mut it = line.split_whitespace();
        if it.next() == Some(key) {
            let v = it
                .next()
                .ok_or_else(|| parse_err(path, line, "key without a value"))?;
            return parse_u64(path, v).map(Some);
        }
    }
    Ok(None)
}

/// Parses every "key value" line of a flat keyed file into a map; lines
/// that are not a name and a number are skipped (v1 memory.stat has none).
pub(crate) fn keyed_map(content: &str) -> std::collections::BTreeMap<String, u64> {
    content
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = it.next()?.parse().ok()?;
            it.next().is_none().then(|| (k.to_string(), v))
        })
        .collect()
}

/// Reads the pids in a cgroup.procs (or tasks) file.
pub(crate) fn read_pids(path: &Path) -> Result<Vec<i32>> {
    parse_pids(path, &read(path)?)
}

/// Parses the content of a cgroup.procs (or tasks) file: one pid a line.
pub(crate) fn parse_pids(path: &Path, s: &str) -> Result<Vec<i32>> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim()
                .parse::<i32>()
                .map_err(|_| parse_err(path, l, "expected a pid"))
        })
        .collect()
}

/// Creates `dir` and its missing parents.
pub(crate) fn mkdir_all(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|source| Error::Create {
        path: dir.to_path_buf(),
        source,
    })
}

/// The subdirectories (child cgroups) of `dir`.
pub(crate) fn child_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let err = |source| Error::List {
        path: dir.to_path_buf(),
        source,
    };
    // A directory's link count is 2 plus its subdirectories (cgroupfs keeps it so, as
    // do the filesystems fake trees live on): one stat spares listing a leaf cgroup.
    {
        use std::os::unix::fs::MetadataExt;
        if fs::symlink_metadata(dir).map_err(err)?.nlink() == 2 {
            return Ok(Vec::new());
        }
    }
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        if entry.file_type().map_err(err)?.is_dir() {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// Backoff used when rmdir says EBUSY: 10 ms doubling up to 320 ms, 12
/// attempts, about 2.5 s in all.
const RMDIR_ATTEMPTS: u32 = 12;

/// Removes the cgroup `dir` and every child cgroup under it, deepest first,
/// retrying EBUSY with a bounded backoff. A missing directory is not an error.
///
/// On a real cgroupfs the control files vanish with the directory; on a fake
/// tree (plain tmpfs) regular files are removed first so rmdir can succeed.
pub(crate) fn remove_cgroup_dir(dir: &Path) -> Result<()> {
    // Usually an empty leaf: one rmdir. Otherwise list the children and retry.
    match fs::remove_dir(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    let children = match child_dirs(dir) {
        Ok(c) => c,
        Err(Error::List { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(())
        }
        Err(e) => return Err(e),
    };
    for child in children {
        remove_cgroup_dir(&child)?;
    }
    let mut delay = Duration::from_millis(10);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) && is_plain_dir(dir) => {
                // A fake tree: delete the regular files standing for control files.
                remove_plain_files(dir)?;
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < RMDIR_ATTEMPTS => {
                sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(320));
            }
            Err(source) => {
                return Err(Error::Remove {
                    path: dir.to_path_buf(),
                    attempts: attempt,
                    source,
                })
            }
        }
        if attempt >= RMDIR_ATTEMPTS {
            return Err(Error::Remove {
                path: dir.to_path_buf(),
                attempts: attempt,
                source: io::Error::from_raw_os_error(libc::EBUSY),
            });
        }
    }
}

/// Whether `dir` is on a filesystem other than cgroupfs (a fake tree).
fn is_plain_dir(dir: &Path) -> bool {
    const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    match statfs_type(dir) {
        Ok(t) => t != CGROUP_SUPER_MAGIC && t != CGROUP2_SUPER_MAGIC,
        Err(_) => false,
    }
}

/// statfs(2): the filesystem type of `path`.
fn statfs_type(path: &Path) -> io::Result<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: all-zero is a valid `statfs` (plain integers and arrays).
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated string and `st` a valid, writable statfs.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64)
}

fn remove_plain_files(dir: &Path) -> Result<()> {
    let err = |source| Error::List {
        path: dir.to_path_buf(),
        source,
    };
    for entry in fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        if !entry.file_type().map_err(err)?.is_dir() {
            fs::remove_file(entry.path()).map_err(|source| Error::Remove {
                path: entry.path(),
                attempts: 1,
                source,
            })?;
        }
    }
    Ok(())
}

/// kill(2), the crate's only signal-sending syscall.
pub(crate) fn kill(pid: i32, signal: i32) -> Result<()> {
    // 0 and negative pids address process groups or every process: never.
    if pid <= 0 {
        return Err(Error::Signal {
            pid,
            signal,
            source: io::Error::from_raw_os_error(libc::EINVAL),
        });
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ESRCH) {
        // Already gone: that is what we wanted.
        return Ok(());
    }
    Err(Error::Signal {
        pid,
        signal,
        source: e,
    })
}

/// Parses "major:minor" at the start of an io stat line.
pub(crate) fn parse_device(s: &str) -> Option<crate::resources::DeviceNumber> {
    let (ma, mi) = s.split_once(':')?;
    Some(crate::resources::DeviceNumber::new(
        ma.parse().ok()?,
        mi.parse().ok()?,
    ))
}

fn io_entry(
    map: &mut std::collections::BTreeMap<
        crate::resources::DeviceNumber,
        crate::resources::IoDeviceStats,
    >,
    device: crate::resources::DeviceNumber,
) -> &mut crate::resources::IoDeviceStats {
    map.entry(device)
        .or_insert_with(|| crate::resources::IoDeviceStats {
            device,
            ..Default::default()
        })
}

/// Parses v2 `io.stat`: "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0".
pub(crate) fn parse_io_stat(
    path: &Path,
    text: &str,
) -> Result<Vec<crate::resources::IoDeviceStats>> {
    let mut map = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut it = line.split_whitespace();
        let dev = it
            .next()
            .and_then(parse_device)
            .ok_or_else(|| parse_err(path, line, "expected major:minor first"))?;
        let e = io_entry(&mut map, dev);
        for kv in it {
            let Some((k, v)) = kv.split_once('=') else {
                return Err(parse_err(path, line, "expected key=value"));
            };
            let v = parse_u64(path, v)?;
            match k {
                "rbytes" => e.read_bytes = v,
                "wbytes" => e.write_bytes = v,
                "rios" => e.read_ios = v,
                "wios" => e.write_ios = v,
                _ => {}
            }
        }
    }
    Ok(map.into_values().collect())
}

/// Parses the v1 blkio pair `io_service_bytes` and `io_serviced` ("8:0 Read
/// 4096" lines, then "Total N").
pub(crate) fn parse_blkio_stats(
    bytes: (&Path, &str),
    ios: (&Path, &str),
) -> Result<Vec<crate::resources::IoDeviceStats>> {
    let mut map = std::collections::BTreeMap::new();
    for (is_bytes, (path, text)) in [(true, bytes), (false, ios)] {
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dev, op, v) = match f.as_slice() {
                [dev, op, v] => (*dev, *op, *v),
                ["Total", _] | [] => continue,
                _ => return Err(parse_err(path, line, "expected \"major:minor Op value\"")),
            };
            let dev = parse_device(dev).ok_or_else(|| parse_err(path, line, "bad device"))?;
            let v = parse_u64(path, v)?;
            let e = io_entry(&mut map, dev);
            match (is_bytes, op) {
                (true, "Read") => e.read_bytes = v,
                (true, "Write") => e.write_bytes = v,
                (false, "Read") => e.read_ios = v,
                (false, "Write") => e.write_ios = v,
                _ => {}
            }
        }
    }
    Ok(map.into_values().collect())
}
