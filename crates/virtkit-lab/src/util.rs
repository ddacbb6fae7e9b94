//! Small helpers: workspace paths, cache hashing, commands, file locks, packages.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{LabError, Result};

/// The workspace root: `$VIRTKIT_ROOT`, else the workspace this crate was built in.
pub fn workspace_root() -> Result<PathBuf> {
    if let Some(root) = std::env::var_os("VIRTKIT_ROOT") {
        let root = PathBuf::from(root);
        if root.join("guest").is_dir() {
            return Ok(root);
        }
        return Err(LabError::BadInput(format!(
            "VIRTKIT_ROOT={} has no guest/ folder",
            root.display()
        )));
    }
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if built_in.join("guest").is_dir() {
        return fs::canonicalize(&built_in).map_err(LabError::io("resolving", built_in));
    }
    Err(LabError::BadInput(
        "cannot find the virtkit workspace (set VIRTKIT_ROOT to the folder holding guest/)".into(),
    ))
}

/// `<workspace>/target/<sub>`, created.
pub fn cache_dir(sub: &str) -> Result<PathBuf> {
    let dir = workspace_root()?.join("target").join(sub);
    fs::create_dir_all(&dir).map_err(LabError::io("creating", &dir))?;
    Ok(dir)
}

/// A stable 64-bit FNV-1a hash of cache inputs (not cryptographic: a cache key).
#[derive(Debug, Clone)]
pub struct InputHash(u64);

impl InputHash {
    /// Starts a hash with a recipe name and version.
    pub fn new(recipe: &str) -> Self {
        let mut h = InputHash(0xcbf2_9ce4_8422_2325);
        h.add(recipe.as_bytes());
        h
    }

    /// Adds one input (length-prefixed so that inputs cannot run together).
    pub fn add(&mut self, bytes: &[u8]) -> &mut Self {
        for b in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    /// Adds the contents of a file.
    pub fn add_file(&mut self, path: &Path) -> Result<&mut Self> {
        let bytes = fs::read(path).map_err(LabError::io("reading", path))?;
        Ok(self.add(&bytes))
    }

    /// The hash as 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// An exclusive `flock` held until dropped (serializes builds between processes).
#[derive(Debug)]
pub struct FileLock(#[allow(dead_code)] File);

impl FileLock {
    /// Blocks until the lock file `path` is ours.
    pub fn acquire(path: &Path) -> Result<Self> {
        let file = File::create(path).map_err(LabError::io("creating lock", path))?;
        loop {
            // SAFETY: flock on a file descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(FileLock(file));
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(LabError::Io {
                    what: "locking",
                    path: path.into(),
                    source: err,
                });
            }
        }
    }
}

/// Runs a command to completion, capturing its output; fails with the output's end.
pub fn run_captured(cmd: &mut Command) -> Result<String> {
    let line = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError::Command {
            command: line.clone(),
            status: e.to_string(),
            output: String::new(),
        })?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(LabError::Command {
            command: line,
            status: out.status.to_string(),
            output: tail(&text, 4000),
        });
    }
    Ok(text)
}

/// Runs a command with inherited output (for long builds the user should watch).
pub fn run_visible(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .map_err(|e| LabError::Command {
            command: line.clone(),
            status: e.to_string(),
            output: String::new(),
        })?;
    if !status.success() {
        return Err(LabError::Command {
            command: line,
            status: status.to_string(),
            output: String::new(),
        });
    }
    Ok(())
}

/// The command line of `cmd`, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The last `max` bytes of `s` (on a char boundary).
pub fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}

/// Finds `name` on `$PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// True when we run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether a Debian package is installed (`dpkg-query`).
pub fn package_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
        .unwrap_or(false)
}

/// Debian's hook that `invoke-rc.d` asks before a package's maintainer script starts a
/// service: exit status 101 means "not now".
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// While alive, `invoke-rc.d` refuses to start services: a `policy-rc.d` that exits 101,
/// made only when there is none and removed on drop (one already there is left alone).
#[derive(Debug)]
struct NoServiceStarts {
    made: Option<PathBuf>,
}

impl NoServiceStarts {
    fn install(path: &Path) -> Result<NoServiceStarts> {
        use std::os::unix::fs::OpenOptionsExt;
        let made = match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(path)
        {
            Ok(mut f) => {
                use std::io::Write;
                f.write_all(b"#!/bin/sh\n# virtkit-lab: no service starts while it installs packages\nexit 101\n")
                    .map_err(LabError::io("writing", path))?;
                Some(path.to_path_buf())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => None,
            Err(e) => return Err(LabError::io("creating", path)(e)),
        };
        Ok(NoServiceStarts { made })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(p) = &self.made {
            let _ = fs::remove_file(p);
        }
    }
}

/// Makes sure the Debian packages are installed: installs them with apt-get when
/// root, else fails with the list of what is missing.
pub fn ensure_packages(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<String> = pkgs
        .iter()
        .filter(|p| !package_installed(p))
        .map(|p| p.to_string())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() || which("apt-get").is_none() {
        return Err(LabError::PackagesMissing(missing));
    }
    eprintln!("virtkit-lab: installing {}", missing.join(" "));
    let _lock = FileLock::acquire(&std::env::temp_dir().join("virtkit-apt.lock"))?;
    // No package may start a service: docker.io's would start a global dockerd (iptables
    // rules, net.ipv4.ip_forward set to 1, a shared `/`); the tests start their own daemons.
    let _no_services = NoServiceStarts::install(Path::new(POLICY_RC_D))?;
    let apt = |args: &[&str]| -> Result<String> {
        let mut last = None;
        // Another process may hold the dpkg lock: retry for a while.
        for _ in 0..60 {
            let mut cmd = Command::new("apt-get");
            cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
            match run_captured(&mut cmd) {
                Ok(out) => return Ok(out),
                Err(e) => {
                    let locked =
                        matches!(&e, LabError::Command { output, .. } if output.contains("lock"));
                    last = Some(e);
                    if !locked {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_secs(5));
                }
            }
        }
        Err(last.unwrap_or_else(|| LabError::PackagesMissing(Vec::new())))
    };
    let install = |missing: &[String]| -> Result<String> {
        let mut args = vec![
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "--allow-downgrades",
        ];
        args.extend(missing.iter().map(String::as_str));
        // A newer qemu-utils than Debian 12's QEMU (a backport some machine images come
        // with) Breaks qemu-system-common: take qemu-utils at the QEMU system version.
        let pin = missing
            .iter()
            .any(|p| p.starts_with("qemu-"))
            .then(qemu_utils_pin)
            .flatten();
        if let Some(pin) = &pin {
            args.push(pin);
        }
        apt(&args)
    };
    if install(&missing).is_err() {
        apt(&["update", "-q"])?;
        install(&missing)?;
    }
    Ok(())
}

/// `qemu-utils=VERSION` when the installed qemu-utils is not the version of the
/// qemu-system-common that apt would install (they must be of one QEMU release).
fn qemu_utils_pin() -> Option<String> {
    let have = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "qemu-utils"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())?;
    let policy =
        run_captured(Command::new("apt-cache").args(["policy", "qemu-system-common"])).ok()?;
    let cand = policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .filter(|c| !c.is_empty() && *c != "(none)")?;
    (!have.is_empty() && have != cand).then(|| format!("qemu-utils={cand}"))
}

/// Atomically writes `bytes` to `path` (temp file + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, bytes).map_err(LabError::io("writing", &tmp))?;
    fs::rename(&tmp, path).map_err(LabError::io("renaming into", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn no_service_starts_while_installing_and_an_existing_policy_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy-rc.d");
        {
            let _g = NoServiceStarts::install(&path).unwrap();
            let st = Command::new(&path).status().unwrap();
            assert_eq!(st.code(), Some(101), "invoke-rc.d's 'not now'");
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o755
            );
        }
        assert!(!path.exists(), "removed once the install is over");
        fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        drop(NoServiceStarts::install(&path).unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), "#!/bin/sh\nexit 0\n");
    }
}
