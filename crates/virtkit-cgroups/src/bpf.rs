//! The bpf(2) calls needed to put a device program on a v2 cgroup.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::devices::{bpf_program, BpfInsn, DeviceRule};
use crate::error::{Error, Result};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// `union bpf_attr`, as large as any command here needs; unused bytes stay 0.
#[repr(C, align(8))]
struct BpfAttr([u8; 128]);

impl BpfAttr {
    fn new() -> Self {
        BpfAttr([0; 128])
    }
    fn put_u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    }
    fn get_u32(&self, at: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[at..at + 4]);
        u32::from_ne_bytes(b)
    }
}

/// bpf(2), the crate's only bpf syscall.
fn bpf(cmd: libc::c_long, attr: &mut BpfAttr) -> io::Result<i64> {
    let size = std::mem::size_of::<BpfAttr>();
    // SAFETY: `attr` is a valid, writable buffer of `size` bytes laid out as
    // the kernel's `union bpf_attr` for `cmd`; any pointers in it (set by the
    // callers) point to live buffers that outlive this call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut BpfAttr, size) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn err(op: &'static str, dir: &Path, source: io::Error, log: String) -> Error {
    Error::Bpf {
        op,
        path: dir.to_path_buf(),
        source,
        log,
    }
}

fn fd_from(rc: i64) -> OwnedFd {
    // SAFETY: `rc` is a new file descriptor the kernel just returned to us and
    // nothing else owns.
    unsafe { OwnedFd::from_raw_fd(i32::try_from(rc).unwrap_or(-1)) }
}

fn load(insns: &[BpfInsn], dir: &Path) -> Result<OwnedFd> {
    let license = CString::new("Apache").unwrap_or_default();
    let mut log = vec![0u8; 64 * 1024];
    let mut a = BpfAttr::new();
    a.put_u32(0, BPF_PROG_TYPE_CGROUP_DEVICE);
    a.put_u32(4, u32::try_from(insns.len()).unwrap_or(u32::MAX));
    a.put_u64(8, insns.as_ptr() as u64);
    a.put_u64(16, license.as_ptr() as u64);
    a.put_u32(24, 1); // log_level
    a.put_u32(28, u32::try_from(log.len()).unwrap_or(0));
    a.put_u64(32, log.as_mut_ptr() as u64);
    a.0[48..56].copy_from_slice(b"virtkit\0");
    a.put_u32(68, BPF_CGROUP_DEVICE); // expected_attach_type
    match bpf(BPF_PROG_LOAD, &mut a) {
        Ok(fd) => Ok(fd_from(fd)),
        Err(e) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]).trim().to_string();
            Err(err("loading the device program for", dir, e, text))
        }
    }
}

/// Ids of the device programs attached to the cgroup `cg`.
fn attached(cg: &File, dir: &Path) -> Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut a = BpfAttr::new();
    a.put_u32(0, u32::try_from(cg.as_raw_fd()).unwrap_or(u32::MAX));
    a.put_u32(4, BPF_CGROUP_DEVICE);
    a.put_u64(16, ids.as_mut_ptr() as u64);
    a.put_u32(24, u32::try_from(ids.len()).unwrap_or(0));
    bpf(BPF_PROG_QUERY, &mut a)
        .map_err(|e| err("querying device programs of", dir, e, String::new()))?;
    let n = usize::try_from(a.get_u32(24)).unwrap_or(0).min(ids.len());
    ids.truncate(n);
    Ok(ids)
}

fn attach_cmd(cmd: libc::c_long, cg: &File, prog: &OwnedFd, flags: u32) -> io::Result<()> {
    let mut a = BpfAttr::new();
    a.put_u32(0, u32::try_from(cg.as_raw_fd()).unwrap_or(u32::MAX));
    a.put_u32(4, u32::try_from(prog.as_raw_fd()).unwrap_or(u32::MAX));
    a.put_u32(8, BPF_CGROUP_DEVICE);
    a.put_u32(12, flags);
    bpf(cmd, &mut a).map(drop)
}

/// Replaces the device programs of the v2 cgroup `dir` with one built from
/// `rules`: the new one is attached first, then the old ones are detached,
/// so there is no moment without a policy.
pub(crate) fn set_device_rules(dir: &Path, rules: &[DeviceRule]) -> Result<()> {
    let insns = bpf_program(rules)?;
    let cg = File::open(dir).map_err(|source| Error::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let old = attached(&cg, dir)?;
    let prog = load(&insns, dir)?;
    attach_cmd(BPF_PROG_ATTACH, &cg, &prog, BPF_F_ALLOW_MULTI)
        .map_err(|e| err("attaching the device program to", dir, e, String::new()))?;
    for id in old {
        let mut a = BpfAttr::new();
        a.put_u32(0, id);
        let fd = match bpf(BPF_PROG_GET_FD_BY_ID, &mut a) {
            Ok(fd) => fd_from(fd),
            // Already gone.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => {
                return Err(err(
                    "opening an old device program of",
                    dir,
                    e,
                    String::new(),
                ))
            }
        };
        attach_cmd(BPF_PROG_DETACH, &cg, &fd, 0).map_err(|e| {
            err(
                "detaching an old device program from",
                dir,
                e,
                String::new(),
            )
        })?;
    }
    Ok(())
}

/// How many device programs are attached to the v2 cgroup `dir` (for tests
/// and diagnostics).
pub(crate) fn device_program_count(dir: &Path) -> Result<usize> {
    let cg = File::open(dir).map_err(|source| Error::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(attached(&cg, dir)?.len())
}
