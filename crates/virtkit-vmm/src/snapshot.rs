//! Snapshots: a directory with the VM's configuration, its machine state and its memory,
//! and a copy of each disk frozen at the same instant.
//!
//! ```text
//! DIR/config.json   the VmConfig (Cloud Hypervisor's JSON)
//! DIR/state.json    {"version": 1, "checksum": "fnv1a64:...", "state": {vm, vcpus, serial, virtio, disks}}
//! DIR/memory        guest RAM, regions back to back, zero pages left as holes
//! DIR/disk0 ...     each disk's image as it was (sparse copies; a qcow2 backing file is
//!                   referenced by its path, not copied)
//! ```
//!
//! A snapshot is taken with the VM paused, on the event loop's thread (so no device moves
//! a ring meanwhile): [`crate::VmController::snapshot`]. Restoring
//! ([`crate::VmmBuilder::from_snapshot`]) maps `memory` privately (pages come in on first
//! touch, so restore time does not grow with the guest's size), gives the guest a fresh
//! working copy of each disk (the snapshot stays usable for further restores), and brings
//! the VM back paused.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use virtkit_vcpu::{VcpuState, VmState as HvState};
use virtkit_virtio::mmio::MmioState;

use crate::config::VmConfig;

/// The snapshot format this code writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Errors reading or writing a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file of the snapshot could not be read or written.
    #[error("snapshot {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// A file is not valid JSON of the expected shape.
    #[error("snapshot {path}: {error}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The error.
        error: serde_json::Error,
    },
    /// Written by another version of this format.
    #[error("snapshot format version {0} is not supported (this build reads {SNAPSHOT_VERSION})")]
    Version(u32),
    /// The state does not match its checksum.
    #[error("snapshot state.json is corrupt: checksum {found} does not match {expected}")]
    Checksum {
        /// What the file says.
        expected: String,
        /// What its contents give.
        found: String,
    },
    /// The state does not fit the configuration.
    #[error("snapshot is inconsistent: {0}")]
    Inconsistent(String),
}

/// COM1's registers (vm-superio's `SerialState`, as a serde type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSerial {
    /// The registers, in vm-superio's order: DLL, DLM, IER, IIR, LCR, LSR, MCR, MSR, SCR.
    pub registers: [u8; 9],
    /// Bytes received and not yet read by the guest.
    pub in_buffer: Vec<u8>,
}

impl From<&vm_superio::serial::SerialState> for SavedSerial {
    fn from(s: &vm_superio::serial::SerialState) -> Self {
        SavedSerial {
            registers: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer.clone(),
        }
    }
}

impl From<&SavedSerial> for vm_superio::serial::SerialState {
    fn from(s: &SavedSerial) -> Self {
        let r = s.registers;
        vm_superio::serial::SerialState {
            baud_divisor_low: r[0],
            baud_divisor_high: r[1],
            interrupt_enable: r[2],
            interrupt_identification: r[3],
            line_control: r[4],
            line_status: r[5],
            modem_control: r[6],
            modem_status: r[7],
            scratch: r[8],
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// Everything but memory and disks.
#[derive(Debug, Serialize, Deserialize)]
pub struct MachineState {
    /// The VM's in-kernel devices.
    pub vm: HvState,
    /// Each vCPU, by id.
    pub vcpus: Vec<VcpuState>,
    /// COM1, when the VM has it.
    pub serial: Option<SavedSerial>,
    /// Each virtio-mmio transport with its device's queues, in device order.
    pub virtio: Vec<MmioState>,
    /// The disk copies, in disk order (file names inside the snapshot).
    pub disks: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    checksum: String,
    state: serde_json::Value,
}

/// FNV-1a (64 bits): enough to catch a damaged or hand-edited state file.
pub(crate) fn checksum(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("fnv1a64:{h:016x}")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |error| SnapshotError::Io {
        path: path.to_path_buf(),
        error,
    }
}

fn json(path: &Path) -> impl FnOnce(serde_json::Error) -> SnapshotError + '_ {
    move |error| SnapshotError::Json {
        path: path.to_path_buf(),
        error,
    }
}

/// Writes `config.json` and `state.json` into `dir`.
pub fn write_state(
    dir: &Path,
    config: &VmConfig,
    state: &MachineState,
) -> Result<(), SnapshotError> {
    let p = dir.join("config.json");
    let text = serde_json::to_vec_pretty(config).map_err(json(&p))?;
    std::fs::write(&p, text).map_err(io(&p))?;
    let p = dir.join("state.json");
    let value = serde_json::to_value(state).map_err(json(&p))?;
    let bytes = serde_json::to_vec(&value).map_err(json(&p))?;
    let file = StateFile {
        version: SNAPSHOT_VERSION,
        checksum: checksum(&bytes),
        state: value,
    };
    std::fs::write(&p, serde_json::to_vec(&file).map_err(json(&p))?).map_err(io(&p))
}

/// Reads and checks `config.json` and `state.json` of `dir`.
pub fn read_state(dir: &Path) -> Result<(VmConfig, MachineState), SnapshotError> {
    let p = dir.join("config.json");
    let config: VmConfig =
        serde_json::from_slice(&std::fs::read(&p).map_err(io(&p))?).map_err(json(&p))?;
    let p = dir.join("state.json");
    let file: StateFile =
        serde_json::from_slice(&std::fs::read(&p).map_err(io(&p))?).map_err(json(&p))?;
    if file.version != SNAPSHOT_VERSION {
        return Err(SnapshotError::Version(file.version));
    }
    let found = checksum(&serde_json::to_vec(&file.state).map_err(json(&p))?);
    if found != file.checksum {
        return Err(SnapshotError::Checksum {
            expected: file.checksum,
            found,
        });
    }
    let state: MachineState = serde_json::from_value(file.state).map_err(json(&p))?;
    if state.disks.len() != config.disks().len() {
        return Err(SnapshotError::Inconsistent(format!(
            "{} disk copies for {} disks",
            state.disks.len(),
            config.disks().len()
        )));
    }
    for d in &state.disks {
        if d.contains('/') || d.starts_with('.') {
            return Err(SnapshotError::Inconsistent(format!("disk file name {d:?}")));
        }
    }
    Ok((config, state))
}

/// Copies `from` to `to`, leaving holes where `from` has them (SEEK_DATA/SEEK_HOLE).
pub fn sparse_copy(from: &Path, to: &Path) -> Result<u64, SnapshotError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let src = File::open(from).map_err(io(from))?;
    let len = src.metadata().map_err(io(from))?.len();
    let dst = File::create(to).map_err(io(to))?;
    dst.set_len(len).map_err(io(to))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut copied = 0u64;
    let mut pos = 0u64;
    while pos < len {
        let seek = |whence, at: u64| {
            let at = libc::off_t::try_from(at).unwrap_or(libc::off_t::MAX);
            // SAFETY: lseek on a descriptor we own; it touches no memory.
            let r = unsafe { libc::lseek(src.as_raw_fd(), at, whence) };
            u64::try_from(r).ok()
        };
        // No SEEK_DATA support (or an error): copy the rest as data.
        let start = seek(libc::SEEK_DATA, pos).unwrap_or(pos);
        if start >= len {
            break;
        }
        let end = seek(libc::SEEK_HOLE, start).unwrap_or(len).min(len);
        let mut at = start;
        while at < end {
            let n = usize::try_from((end - at).min(buf.len() as u64)).unwrap_or(buf.len());
            src.read_exact_at(&mut buf[..n], at).map_err(io(from))?;
            dst.write_all_at(&buf[..n], at).map_err(io(to))?;
            at += n as u64;
            copied += n as u64;
        }
        pos = end.max(start + 1);
    }
    dst.sync_all().map_err(io(to))?;
    Ok(copied)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn state() -> MachineState {
        MachineState {
            vm: HvState::Fake,
            vcpus: vec![VcpuState::Fake { id: 0, position: 7 }],
            serial: Some(SavedSerial {
                registers: [1, 0, 0, 1, 3, 0x60, 8, 0xb0, 0],
                in_buffer: b"ab".to_vec(),
            }),
            virtio: Vec::new(),
            disks: Vec::new(),
        }
    }

    #[test]
    fn state_files_round_trip_and_damage_is_caught() {
        let d = tempfile::tempdir().unwrap();
        let config = VmConfig::with_kernel("/k");
        write_state(d.path(), &config, &state()).unwrap();
        let (c, s) = read_state(d.path()).unwrap();
        assert_eq!(c, config);
        assert_eq!(s.serial, state().serial);
        let p = d.path().join("state.json");
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replace("\"position\":7", "\"position\":8")).unwrap();
        let e = read_state(d.path()).unwrap_err();
        assert!(matches!(e, SnapshotError::Checksum { .. }), "{e}");
        std::fs::write(&p, text.replace("\"version\":1", "\"version\":9")).unwrap();
        assert!(matches!(
            read_state(d.path()),
            Err(SnapshotError::Version(9))
        ));
        std::fs::write(&p, "{").unwrap();
        assert!(matches!(
            read_state(d.path()),
            Err(SnapshotError::Json { .. })
        ));
        std::fs::remove_file(d.path().join("config.json")).unwrap();
        assert!(matches!(
            read_state(d.path()),
            Err(SnapshotError::Io { .. })
        ));
    }

    #[test]
    fn sparse_copies_keep_holes_and_data() {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let f = File::create(&a).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"start", 0).unwrap();
        f.write_all_at(b"middle", 32 << 20).unwrap();
        let b = d.path().join("b");
        let copied = sparse_copy(&a, &b).unwrap();
        assert!(
            copied < 2 << 20,
            "copied {copied} bytes of a 64 MiB file with 2 pages"
        );
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert!(std::fs::metadata(&b).unwrap().blocks() * 512 < 4 << 20);
    }
}

/// What a snapshot wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// The directory.
    pub dir: PathBuf,
    /// Guest RAM size in bytes.
    pub memory_size: u64,
    /// Bytes of RAM actually written (the rest are holes).
    pub memory_written: u64,
    /// Bytes of disk data copied.
    pub disk_bytes: u64,
    /// How long it took, in milliseconds.
    pub millis: u64,
}

/// What the event loop's snapshot handler needs of the running VM.
pub(crate) struct SnapshotContext {
    pub config: VmConfig,
    pub ram: virtkit_memory::GuestRam,
    pub vm: std::sync::Arc<dyn virtkit_vcpu::Vm>,
    pub controller: crate::VmController,
    pub serial: Option<std::sync::Arc<std::sync::Mutex<crate::devices::SerialPort>>>,
    pub virtio: crate::devices::VirtioSlots,
    pub disks: Vec<(PathBuf, std::sync::Arc<dyn virtkit_block::BlockBackend>)>,
}

impl SnapshotContext {
    /// The state of the paused VM: every vCPU, the in-kernel devices, COM1 and every
    /// virtio transport, with `disks` as the disk copies' names.
    pub fn machine_state(&self, disks: Vec<String>) -> Result<MachineState, String> {
        let vcpus = self.controller.save_vcpus()?;
        let vm = self.vm.save_state().map_err(|e| e.to_string())?;
        let serial = self.serial.as_ref().map(|s| {
            let port = s.lock().unwrap_or_else(|e| e.into_inner());
            SavedSerial::from(&port.device().state())
        });
        Ok(MachineState {
            vm,
            vcpus,
            serial,
            virtio: self.virtio.save(),
            disks,
        })
    }

    /// Writes the snapshot (on the event loop's thread, with the vCPUs paused).
    pub fn take(&self, dir: &Path) -> Result<SnapshotInfo, String> {
        let started = std::time::Instant::now();
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut disks = Vec::with_capacity(self.disks.len());
        let mut disk_bytes = 0;
        for (i, (path, backend)) in self.disks.iter().enumerate() {
            backend
                .flush()
                .map_err(|e| format!("flushing disk {}: {e}", path.display()))?;
            let name = format!("disk{i}");
            disk_bytes += sparse_copy(path, &dir.join(&name)).map_err(|e| e.to_string())?;
            disks.push(name);
        }
        let mem_path = dir.join("memory");
        let mem = File::create(&mem_path)
            .and_then(|f| self.ram.save_sparse(&f))
            .map_err(|e| format!("writing {}: {e}", mem_path.display()))?;
        let state = self.machine_state(disks)?;
        write_state(dir, &self.config, &state).map_err(|e| e.to_string())?;
        Ok(SnapshotInfo {
            dir: dir.to_path_buf(),
            memory_size: mem.size,
            memory_written: mem.written,
            disk_bytes,
            millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }
}

/// The event-loop subscriber that takes snapshots when [`crate::VmController::snapshot`]
/// asks.
pub(crate) struct Snapshotter {
    pub evt: std::sync::Arc<virtkit_vcpu::EventFd>,
    pub requests: std::sync::mpsc::Receiver<crate::control::LoopRequest>,
    pub ctx: SnapshotContext,
}

impl event_manager::MutEventSubscriber for Snapshotter {
    fn init(&mut self, ops: &mut event_manager::EventOps<'_>) {
        if let Err(e) = ops.add(event_manager::Events::new(
            &*self.evt,
            vmm_sys_util::epoll::EventSet::IN,
        )) {
            log::error!("cannot watch the snapshot event: {e:?}");
        }
    }

    fn process(&mut self, _events: event_manager::Events, _ops: &mut event_manager::EventOps<'_>) {
        let _ = self.evt.read();
        while let Ok(req) = self.requests.try_recv() {
            match req {
                crate::control::LoopRequest::Snapshot(dir, reply) => {
                    let _ = reply.send(self.ctx.take(&dir));
                }
                crate::control::LoopRequest::Migrate(url, reply) => {
                    let _ = reply.send(crate::migration::send(&self.ctx, &url));
                }
            }
        }
    }
}
