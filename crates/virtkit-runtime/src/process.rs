//! The container process: everything from `process` in config.json, prepared in the
//! parent (parsing, allocation) and applied in the child right before `execve`.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{bail, err, Context, Error, Result};
use oci_spec::runtime::{Capabilities, Process};

use crate::util::cstring;

/// Capability names in kernel order (CAP_CHOWN = 0 ...).
pub const CAP_NAMES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The number of capability `name` ("CAP_CHOWN" or "CHOWN").
pub fn cap_number(name: &str) -> Option<u32> {
    let n = name.trim_start_matches("CAP_");
    CAP_NAMES.iter().position(|c| *c == n).map(|i| i as u32)
}

fn cap_mask(set: &Option<Capabilities>) -> u64 {
    set.iter()
        .flatten()
        .filter_map(|c| cap_number(&c.to_string()))
        .fold(0u64, |m, n| m | (1u64 << n))
}

/// The five capability sets as bit masks.
#[derive(Debug, Clone, Copy, Default)]
pub struct CapSets {
    /// Bounding set.
    pub bounding: u64,
    /// Effective set.
    pub effective: u64,
    /// Permitted set.
    pub permitted: u64,
    /// Inheritable set.
    pub inheritable: u64,
    /// Ambient set.
    pub ambient: u64,
}

/// One rlimit.
#[derive(Debug, Clone, Copy)]
pub struct Rlimit {
    /// `RLIMIT_*`.
    pub resource: libc::__rlimit_resource_t,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

fn rlimit_resource(name: &str) -> Result<libc::__rlimit_resource_t> {
    Ok(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        other => bail!("unknown rlimit {other}"),
    })
}

/// Everything needed to turn the child into the container process.
#[derive(Debug, Clone)]
pub struct Plan {
    /// argv.
    pub args: Vec<CString>,
    /// envp.
    pub env: Vec<CString>,
    /// `PATH` from env, for looking up a bare `args[0]`.
    pub path_var: String,
    /// Working directory inside the container.
    pub cwd: PathBuf,
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// umask.
    pub umask: Option<u32>,
    /// rlimits.
    pub rlimits: Vec<Rlimit>,
    /// `no_new_privs`.
    pub no_new_privileges: bool,
    /// Capabilities (None: leave as they are).
    pub caps: Option<CapSets>,
    /// Compiled seccomp program and flags.
    pub seccomp: Option<virtkit_seccomp::Program>,
    /// The profile has `SCMP_ACT_NOTIFY` rules: install it with a listener fd.
    pub seccomp_listener: bool,
    /// `oom_score_adj`.
    pub oom_score_adj: Option<i32>,
    /// Allocate a pty.
    pub terminal: bool,
    /// Console size (rows, cols).
    pub console_size: Option<(u16, u16)>,
    /// Highest capability number the kernel knows.
    pub last_cap: u32,
}

/// Builds the plan from the OCI process (and the config's seccomp profile).
pub fn plan(p: &Process, seccomp: Option<&oci_spec::runtime::LinuxSeccomp>) -> Result<Plan> {
    let args: Vec<String> = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        bail!("process.args is empty");
    }
    let env: Vec<String> = p.env().clone().unwrap_or_default();
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .to_string();
    let user = p.user();
    let mut rlimits = Vec::new();
    for r in p.rlimits().iter().flatten() {
        let name = serde_json::to_value(r.typ())?
            .as_str()
            .unwrap_or_default()
            .to_string();
        rlimits.push(Rlimit {
            resource: rlimit_resource(&name)?,
            soft: r.soft(),
            hard: r.hard(),
        });
    }
    let caps = p.capabilities().as_ref().map(|c| CapSets {
        bounding: cap_mask(c.bounding()),
        effective: cap_mask(c.effective()),
        permitted: cap_mask(c.permitted()),
        inheritable: cap_mask(c.inheritable()),
        ambient: cap_mask(c.ambient()),
    });
    let profile = seccomp
        .map(virtkit_seccomp::Profile::from_oci)
        .transpose()?;
    let seccomp_listener = profile.as_ref().is_some_and(|p| p.needs_listener());
    let seccomp = profile.as_ref().map(virtkit_seccomp::compile).transpose()?;
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    let cwd = p.cwd().clone();
    if !cwd.is_absolute() {
        bail!("process.cwd {} is not absolute", cwd.display());
    }
    Ok(Plan {
        args: args.iter().map(|a| cstring(a)).collect::<Result<_>>()?,
        env: env.iter().map(|a| cstring(a)).collect::<Result<_>>()?,
        path_var,
        cwd,
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        umask: user.umask(),
        rlimits,
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        caps,
        seccomp,
        seccomp_listener,
        oom_score_adj: p.oom_score_adj(),
        terminal: p.terminal().unwrap_or(false),
        console_size: p
            .console_size()
            .as_ref()
            .map(|b| (b.height() as u16, b.width() as u16)),
        last_cap,
    })
}

fn os_err(call: &str) -> Error {
    err!("{call}: {}", io::Error::last_os_error())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn capset(c: &CapSets) -> Result<()> {
    let hdr = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [
        CapData {
            effective: c.effective as u32,
            permitted: c.permitted as u32,
            inheritable: c.inheritable as u32,
        },
        CapData {
            effective: (c.effective >> 32) as u32,
            permitted: (c.permitted >> 32) as u32,
            inheritable: (c.inheritable >> 32) as u32,
        },
    ];
    // SAFETY: header and two data structs as capset(2) v3 expects.
    let r = unsafe { libc::syscall(libc::SYS_capset, &hdr as *const CapHeader, data.as_ptr()) };
    if r < 0 {
        return Err(os_err("capset"));
    }
    Ok(())
}

impl Plan {
    /// Things done early, while still privileged and with the host /proc visible:
    /// oom_score_adj and rlimits.
    pub fn apply_early(&self) -> Result<()> {
        if let Some(adj) = self.oom_score_adj {
            std::fs::write("/proc/self/oom_score_adj", adj.to_string())
                .context("write oom_score_adj")?;
        }
        for r in &self.rlimits {
            let lim = libc::rlimit {
                rlim_cur: r.soft,
                rlim_max: r.hard,
            };
            // SAFETY: a valid rlimit struct.
            if unsafe { libc::setrlimit(r.resource, &lim) } < 0 {
                return Err(err!(
                    "setrlimit {} soft {} hard {}: {}",
                    r.resource,
                    r.soft,
                    r.hard,
                    io::Error::last_os_error()
                ));
            }
        }
        Ok(())
    }

    /// Installs the seccomp filter; with `SCMP_ACT_NOTIFY` rules, returns its listener fd.
    fn install_seccomp(&self) -> Result<Option<std::os::fd::OwnedFd>> {
        let Some(prog) = &self.seccomp else {
            return Ok(None);
        };
        if self.seccomp_listener {
            let fd = virtkit_seccomp::install_with_listener(prog)
                .context("install seccomp filter with a listener")?;
            return Ok(Some(fd));
        }
        virtkit_seccomp::install(prog).context("install seccomp filter")?;
        Ok(None)
    }

    /// cwd, user, capabilities, no_new_privs and seccomp, in runc's order. After this
    /// only [`Plan::exec`] remains. Returns the seccomp listener fd when the profile
    /// notifies (for the runtime to hand to `listenerPath`).
    pub fn apply_identity(&self) -> Result<Option<std::os::fd::OwnedFd>> {
        // Seccomp must be loaded while we still hold CAP_SYS_ADMIN when no_new_privs is
        // off; with no_new_privs it goes last so fewer syscalls need allowing.
        let mut listener = None;
        if !self.no_new_privileges {
            listener = self.install_seccomp()?;
        }
        // SAFETY: prctl/setgroups/setres[ug]id take plain integers or valid arrays.
        unsafe {
            if self.caps.is_some() && libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0 {
                return Err(os_err("prctl(PR_SET_KEEPCAPS)"));
            }
            if let Some(c) = &self.caps {
                for cap in 0..=self.last_cap.min(63) {
                    if c.bounding & (1u64 << cap) == 0
                        && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) < 0
                    {
                        let e = io::Error::last_os_error();
                        if e.raw_os_error() != Some(libc::EINVAL) {
                            bail!("drop capability {cap} from the bounding set: {e}");
                        }
                    }
                }
            }
            let gids: Vec<libc::gid_t> = self.additional_gids.clone();
            if libc::setgroups(gids.len(), gids.as_ptr()) < 0 {
                let e = io::Error::last_os_error();
                // In a user namespace with setgroups denied, only an empty list matters.
                if !(gids.is_empty() && e.raw_os_error() == Some(libc::EPERM)) {
                    bail!("setgroups: {e}");
                }
            }
            if libc::setresgid(self.gid, self.gid, self.gid) < 0 {
                return Err(os_err("setresgid"));
            }
            if libc::setresuid(self.uid, self.uid, self.uid) < 0 {
                return Err(os_err("setresuid"));
            }
            if self.caps.is_some() && libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) < 0 {
                return Err(os_err("prctl(PR_SET_KEEPCAPS)"));
            }
        }
        if let Some(c) = &self.caps {
            capset(c)?;
            for cap in 0..=self.last_cap.min(63) {
                if c.ambient & (1u64 << cap) != 0 {
                    // SAFETY: prctl with integer arguments.
                    let r = unsafe {
                        libc::prctl(
                            libc::PR_CAP_AMBIENT,
                            libc::PR_CAP_AMBIENT_RAISE,
                            cap as libc::c_ulong,
                            0,
                            0,
                        )
                    };
                    if r < 0 {
                        // Ambient capabilities need the cap in permitted and
                        // inheritable; runc ignores failures here too.
                        continue;
                    }
                }
            }
        }
        if let Some(m) = self.umask {
            // SAFETY: umask takes an integer.
            unsafe { libc::umask(m) };
        }
        if self.no_new_privileges {
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
                return Err(os_err("prctl(PR_SET_NO_NEW_PRIVS)"));
            }
            listener = self.install_seccomp()?;
        }
        Ok(listener)
    }

    /// Changes to the working directory and checks it is inside the container
    /// (CVE-2024-21626: a leaked host fd as cwd would show as unreachable).
    pub fn enter_cwd(&self) -> Result<()> {
        let c = crate::util::cstring(&self.cwd.to_string_lossy())?;
        // SAFETY: valid NUL-terminated path.
        if unsafe { libc::chdir(c.as_ptr()) } < 0 {
            bail!(
                "chdir to cwd {:?} set in config.json: {}",
                self.cwd,
                io::Error::last_os_error()
            );
        }
        let mut buf = vec![0u8; 4096];
        // SAFETY: valid writable buffer of the given length.
        let p = unsafe { libc::getcwd(buf.as_mut_ptr().cast(), buf.len()) };
        if p.is_null() || buf[0] != b'/' {
            bail!("cwd {:?} is outside the container root", self.cwd);
        }
        Ok(())
    }

    /// Resolves `args[0]` (a bare name is looked up in `PATH`) inside the container.
    pub fn resolve_exe(&self) -> Result<CString> {
        let a0 = self.args[0].as_bytes();
        if a0.contains(&b'/') {
            return Ok(self.args[0].clone());
        }
        for dir in self.path_var.split(':').filter(|d| !d.is_empty()) {
            let cand = Path::new(dir).join(std::ffi::OsStr::from_bytes(a0));
            let c = CString::new(cand.as_os_str().as_bytes())?;
            // SAFETY: valid NUL-terminated path.
            if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 && !cand.is_dir() {
                return Ok(c);
            }
        }
        bail!(
            "exec: {:?}: executable file not found in $PATH",
            String::from_utf8_lossy(a0)
        )
    }

    /// `execve` through the exec DMZ in `dmz` (see `crate::dmz`); returns only on
    /// failure.
    pub fn exec_via_dmz(&self, dmz: &std::os::fd::OwnedFd, exe: &CString) -> Error {
        let e = crate::dmz::exec(dmz, exe, &self.args, &self.env);
        err!("exec {:?} through the exec DMZ: {e}", exe.to_string_lossy())
    }

    /// `execve`; returns only on failure.
    pub fn exec(&self, exe: &CString) -> Error {
        let mut argv: Vec<*const libc::c_char> = self.args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = self.env.iter().map(|a| a.as_ptr()).collect();
        envp.push(std::ptr::null());
        // SAFETY: NULL-terminated arrays of valid C strings that outlive the call.
        unsafe { libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        err!(
            "exec {:?}: {}",
            exe.to_string_lossy(),
            io::Error::last_os_error()
        )
    }
}

/// Marks every fd from `first` up close-on-exec (fds below are passed on purpose).
pub fn cloexec_from(first: u32) -> Result<()> {
    // SAFETY: close_range with integer arguments; CLOSE_RANGE_CLOEXEC (4) only sets flags.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 4u32) };
    if r < 0 {
        return Err(os_err("close_range"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps() {
        assert_eq!(cap_number("CAP_CHOWN"), Some(0));
        assert_eq!(cap_number("SYS_ADMIN"), Some(21));
        assert_eq!(cap_number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(cap_number("CAP_NOPE"), None);
        let p: Process = serde_json::from_str(
            r#"{"args":["sh"],"cwd":"/","user":{"uid":1,"gid":2,"additionalGids":[3]},
                "capabilities":{"bounding":["CAP_KILL","CAP_CHOWN"],"effective":["CAP_KILL"]},
                "rlimits":[{"type":"RLIMIT_NOFILE","hard":1024,"soft":512}],"noNewPrivileges":true}"#,
        )
        .unwrap();
        let pl = plan(&p, None).unwrap();
        let c = pl.caps.unwrap();
        assert_eq!(c.bounding, (1 << 5) | 1);
        assert_eq!(c.effective, 1 << 5);
        assert_eq!(pl.rlimits[0].resource, libc::RLIMIT_NOFILE);
        assert_eq!((pl.rlimits[0].soft, pl.rlimits[0].hard), (512, 1024));
        assert_eq!(
            (pl.uid, pl.gid, pl.additional_gids.clone()),
            (1, 2, vec![3])
        );
        assert!(pl.no_new_privileges);
    }

    #[test]
    fn bad_process() {
        let p: Process =
            serde_json::from_str(r#"{"args":[],"cwd":"/","user":{"uid":0,"gid":0}}"#).unwrap();
        assert!(plan(&p, None).is_err());
        let p: Process =
            serde_json::from_str(r#"{"args":["x"],"cwd":"rel","user":{"uid":0,"gid":0}}"#).unwrap();
        assert!(plan(&p, None).is_err());
    }
}
