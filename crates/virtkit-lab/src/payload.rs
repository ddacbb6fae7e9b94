//! What a lab run carries: [`Payload`], a shell script plus its files.
//!
//! Small files travel in the lab's initramfs (held in the lab VM's RAM). Big ones
//! ([`Payload::disk_file`], e.g. a guest's root disk image) travel on a second virtio
//! disk of the lab VM: an ext4 image made with `mkfs.ext4 -d` for each run, attached to
//! the lab QEMU as a virtio-blk-pci drive and mounted read-write at [`LAB_DISK_MOUNT`]
//! before the script runs.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::boot::quote;
use crate::error::{LabError, Result};
use crate::lab::{shared_libraries, LAB_CPUS, LAB_MEMORY_MIB};
use crate::util;

/// Where the payload disk is mounted inside the lab ([`Payload::disk_file`]).
pub const LAB_DISK_MOUNT: &str = "/lab-disk";

/// The lab kernel modules that make the payload disk appear as `/dev/vda`, dependencies
/// first (`virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
/// virtio_blk`; the resolver adds the dependencies anyway).
const DISK_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
];

/// What to run: a shell script plus the files it needs.
///
/// The script runs with `sh` in a folder holding the payload files (`/payload` in the
/// lab, a temporary folder on the host), so it names them `./name`.
#[derive(Debug, Clone)]
pub struct Payload {
    pub(crate) files: Vec<(PathBuf, String)>,
    pub(crate) disk_files: Vec<(PathBuf, String)>,
    pub(crate) host_files: BTreeSet<PathBuf>,
    pub(crate) script: String,
    pub(crate) timeout: Duration,
    pub(crate) modules: Vec<String>,
    pub(crate) lab_cpus: u32,
    pub(crate) lab_memory_mib: u32,
    pub(crate) echo: bool,
}

impl Payload {
    /// A payload running `script` with `sh`, with a 10-minute timeout.
    pub fn new(script: impl Into<String>) -> Self {
        Payload {
            files: Vec::new(),
            disk_files: Vec::new(),
            host_files: BTreeSet::new(),
            script: script.into(),
            timeout: Duration::from_secs(600),
            modules: Vec::new(),
            lab_cpus: LAB_CPUS,
            lab_memory_mib: LAB_MEMORY_MIB,
            echo: true,
        }
    }

    /// Carries the host file `host` as `./name` (a relative path, folders allowed).
    pub fn file(mut self, host: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        self.files.push((host.into(), name.into()));
        self
    }

    /// Carries the big host file `host` as `./name` on the lab's payload disk instead of
    /// its initramfs (which lives in the lab VM's RAM): for disk images and other files
    /// of hundreds of MiB. In the lab `./name` is a symlink to
    /// `/lab-disk/name` on a read-write ext4 file system with room to grow (a guest may
    /// write to an image there; the host file is never changed). On the host the file
    /// is copied into the payload folder.
    pub fn disk_file(mut self, host: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        self.disk_files.push((host.into(), name.into()));
        self
    }

    /// Makes the host file `path` available at the same absolute path (in the lab it is
    /// copied in; on the host it is already there). Use it for data files a carried
    /// program reads, such as QEMU's firmware under /usr/share/qemu.
    pub fn host_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.host_files.insert(path.into());
        self
    }

    /// Makes a dynamically linked host program runnable at its own absolute path: the
    /// program, its ELF loader and the libraries `ldd` lists are carried in at their
    /// host paths.
    pub fn host_program(mut self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            util::which(&path.to_string_lossy()).ok_or_else(|| {
                LabError::BadInput(format!("program {} not found on PATH", path.display()))
            })?
        };
        if !path.is_file() {
            return Err(LabError::BadInput(format!(
                "program {} not found",
                path.display()
            )));
        }
        for lib in shared_libraries(&path)? {
            self.host_files.insert(lib);
        }
        self.host_files.insert(path);
        Ok(self)
    }

    /// Puts `text` before the script (e.g. checks to run first).
    pub fn prepend_script(mut self, text: &str) -> Self {
        self.script.insert_str(0, text);
        self
    }

    /// Appends `text` to the script.
    pub fn append_script(mut self, text: &str) -> Self {
        self.script.push_str(text);
        self
    }

    /// The overall time limit (lab boot included).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Loads one more lab kernel module (by name, dependencies included).
    pub fn module(mut self, name: impl Into<String>) -> Self {
        self.modules.push(name.into());
        self
    }

    /// The lab VM's vCPU count (default [`LAB_CPUS`]).
    pub fn lab_cpus(mut self, cpus: u32) -> Self {
        self.lab_cpus = cpus;
        self
    }

    /// The lab VM's memory in MiB (default [`LAB_MEMORY_MIB`]).
    pub fn lab_memory_mib(mut self, mib: u32) -> Self {
        self.lab_memory_mib = mib;
        self
    }

    /// Whether to copy the output to stderr as it comes (default true).
    pub fn echo(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    pub(crate) fn check(&self) -> Result<()> {
        let mut names = BTreeSet::new();
        for (host, name) in self.files.iter().chain(&self.disk_files) {
            if !host.is_file() {
                return Err(LabError::BadInput(format!(
                    "payload file {} not found",
                    host.display()
                )));
            }
            if name.is_empty()
                || name.starts_with('/')
                || name.split('/').any(|c| c == ".." || c.is_empty())
                || name == "run.sh"
            {
                return Err(LabError::BadInput(format!(
                    "bad payload file name {name:?}"
                )));
            }
            if !names.insert(name.as_str()) {
                return Err(LabError::BadInput(format!(
                    "payload file name {name:?} given twice"
                )));
            }
        }
        for p in &self.host_files {
            if !p.is_absolute() || !p.exists() {
                return Err(LabError::BadInput(format!(
                    "host file {} not found",
                    p.display()
                )));
            }
        }
        if self.lab_cpus == 0 || self.lab_memory_mib < 256 {
            return Err(LabError::BadInput(
                "the lab needs at least 1 vCPU and 256 MiB".into(),
            ));
        }
        Ok(())
    }

    /// For the lab: the payload disk's image, made in `dir` (`None` without disk
    /// files), and this payload with the modules and the script prelude that mount it.
    pub(crate) fn with_lab_disk(&self, dir: &Path) -> Result<(Payload, Option<PathBuf>)> {
        if self.disk_files.is_empty() {
            return Ok((self.clone(), None));
        }
        let image = disk_image(&self.disk_files, dir)?;
        let mut p = self.clone().prepend_script(&mount_script(&self.disk_files));
        p.modules.extend(DISK_MODULES.iter().map(|m| m.to_string()));
        Ok((p, Some(image)))
    }
}

/// An ext4 image in `dir` holding `files` at their names, with room to grow: the
/// files' size plus a quarter plus 256 MiB (the image is sparse).
fn disk_image(files: &[(PathBuf, String)], dir: &Path) -> Result<PathBuf> {
    util::ensure_packages(&["e2fsprogs"])?;
    let staging = dir.join("disk-root");
    let image = dir.join("payload-disk.ext4");
    let mut total: u64 = 0;
    for (host, name) in files {
        let dest = staging.join(name);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(LabError::io("creating", parent))?;
        }
        // mkfs.ext4 -d copies what it finds: a hard link saves a copy of a big file.
        if fs::hard_link(host, &dest).is_err() {
            fs::copy(host, &dest).map_err(LabError::io("copying", host))?;
        }
        total += fs::metadata(&dest)
            .map_err(LabError::io("reading", &dest))?
            .len();
    }
    let mib = (total + total / 4) / (1024 * 1024) + 256;
    util::run_captured(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-L", "virtkit-payload", "-d"])
            .arg(&staging)
            .arg(&image)
            .arg(format!("{mib}M")),
    )?;
    let _ = fs::remove_dir_all(&staging);
    Ok(image)
}

/// The lab QEMU's arguments that attach `image` as a virtio-blk disk.
pub(crate) fn qemu_disk_args(image: &Path) -> Vec<OsString> {
    // QEMU's option syntax escapes a comma by doubling it.
    let mut drive = OsString::from("file=");
    drive.push(image.to_string_lossy().replace(',', ",,"));
    drive.push(",if=none,id=payload,format=raw,cache=unsafe");
    vec![
        "-drive".into(),
        drive,
        "-device".into(),
        "virtio-blk-pci,drive=payload".into(),
    ]
}

/// The script prelude that mounts the payload disk and links its files into the
/// payload folder.
fn mount_script(files: &[(PathBuf, String)]) -> String {
    let mut s = format!(
        "# virtkit-lab: the payload disk (Payload::disk_file)\n\
         mkdir -p {LAB_DISK_MOUNT}\n\
         n=0; while [ ! -b /dev/vda ] && [ $n -lt 300 ]; do usleep 100000; n=$((n+1)); done\n\
         if mount -t ext4 /dev/vda {LAB_DISK_MOUNT}; then\n"
    );
    for (_, name) in files {
        if let Some((dir, _)) = name.rsplit_once('/') {
            s.push_str(&format!("  mkdir -p {}\n", quote(dir)));
        }
        s.push_str(&format!(
            "  ln -s {} {}\n",
            quote(&format!("{LAB_DISK_MOUNT}/{name}")),
            quote(&format!("./{name}"))
        ));
    }
    s.push_str("else\n  echo 'lab: cannot mount the payload disk /dev/vda'\nfi\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_payloads_are_refused() {
        let bad = |p: Payload| matches!(p.check(), Err(LabError::BadInput(_)));
        assert!(bad(Payload::new("true").file("/nonexistent/x", "x")));
        assert!(bad(Payload::new("true").file("/bin/sh", "../x")));
        assert!(bad(Payload::new("true").disk_file("/bin/sh", "/abs")));
        assert!(bad(Payload::new("true").disk_file("/nonexistent/x", "x")));
        assert!(bad(Payload::new("true")
            .file("/bin/sh", "x")
            .disk_file("/bin/sh", "x")));
        assert!(bad(Payload::new("true").host_file("relative")));
        assert!(bad(Payload::new("true").lab_memory_mib(1)));
        assert!(Payload::new("true")
            .file("/bin/sh", "x")
            .disk_file("/bin/sh", "d/y")
            .check()
            .is_ok());
    }

    #[test]
    fn mount_script_links_disk_files() {
        let s = mount_script(&[
            ("/h/a".into(), "root.qcow2".into()),
            ("/h/b".into(), "sub/dir/k".into()),
        ]);
        assert!(s.contains("mount -t ext4 /dev/vda /lab-disk"), "{s}");
        assert!(s.contains("ln -s /lab-disk/root.qcow2 ./root.qcow2"), "{s}");
        assert!(s.contains("mkdir -p sub/dir\n  ln -s /lab-disk/sub/dir/k ./sub/dir/k"));
    }

    #[test]
    fn qemu_args_escape_commas() {
        let a = qemu_disk_args(Path::new("/t/a,b.img"));
        assert_eq!(
            a[1],
            "file=/t/a,,b.img,if=none,id=payload,format=raw,cache=unsafe"
        );
        assert_eq!(a[3], "virtio-blk-pci,drive=payload");
    }

    #[test]
    fn lab_disk_holds_the_files_with_room_to_spare() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("big");
        fs::write(&f, vec![7u8; 3 << 20]).unwrap();
        let p = Payload::new("true").disk_file(&f, "img/big");
        let (lab, image) = p.with_lab_disk(dir.path()).unwrap();
        let image = image.unwrap();
        // 3 MiB of files: 3 + 0.75 + 256 MiB.
        assert_eq!(fs::metadata(&image).unwrap().len(), 259 << 20);
        assert!(lab.script.starts_with("# virtkit-lab: the payload disk"));
        assert!(lab.modules.iter().any(|m| m == "virtio_blk"));
        assert!(!dir.path().join("disk-root").exists());
        let listing = util::run_captured(
            Command::new("debugfs")
                .args(["-R", "ls -l /img"])
                .arg(&image),
        )
        .unwrap();
        assert!(
            listing.contains("3145728") && listing.contains("big"),
            "{listing}"
        );
        let (same, none) = Payload::new("true").with_lab_disk(dir.path()).unwrap();
        assert!(none.is_none() && same.modules.is_empty());
    }
}
