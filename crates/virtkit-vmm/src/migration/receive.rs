//! The destination side of a migration (see the module docs).

use std::io::Write;
use std::sync::Arc;

use virtkit_vcpu::Hypervisor;

use virtkit_memory::{GuestAddress, GuestMemoryBuilder, GuestRam};
use vm_memory::Bytes;

use super::wire::{self, Tag};
use super::{listen, MigrationError, Stream};
use crate::builder::{prebuild, Prebuilt, VmmBuilder};
use crate::config::VmConfig;
use crate::snapshot::MachineState;

/// Bytes read from the source at a time.
const READ_BUFFER: usize = 2 << 20;
use crate::vmm::{Vmm, VmmError};

/// A migration received in full, not yet running: [`Incoming::finish`] builds the VM and
/// tells the source.
pub struct Incoming {
    stream: Box<dyn Stream>,
    config: VmConfig,
    ram: GuestRam,
    state: MachineState,
    prebuilt: Option<Prebuilt>,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn refuse(s: &mut dyn Stream, e: &MigrationError) {
    if !matches!(e, MigrationError::Peer(_) | MigrationError::Stream(_)) {
        let _ = wire::write_frame(s, Tag::Error, &[e.to_string().as_bytes()]);
        let _ = s.flush();
    }
}

impl Incoming {
    /// Listens at `url` (`unix:/PATH` or `tcp:HOST:PORT`), accepts one source and receives
    /// its VM: configuration, memory and state. The source waits, paused, for
    /// [`Incoming::finish`].
    pub fn accept(url: &str) -> Result<Incoming, MigrationError> {
        Incoming::receive(listen(url)?, None)
    }

    /// [`Incoming::accept`], creating the VM on `hv` (memory slots, vCPUs) as soon as the
    /// configuration arrives, while memory still comes in: the downtime then does not
    /// include it. [`Incoming::finish`] must then build on the same hypervisor.
    pub fn accept_on(url: &str, hv: Arc<dyn Hypervisor>) -> Result<Incoming, MigrationError> {
        Incoming::receive(listen(url)?, Some(hv))
    }

    /// Receives a VM from a source already connected on `stream` (the VM made ahead on
    /// `hv` when given, see [`Incoming::accept_on`]).
    pub fn receive(
        mut stream: Box<dyn Stream>,
        hv: Option<Arc<dyn Hypervisor>>,
    ) -> Result<Incoming, MigrationError> {
        match read_all(&mut *stream, hv.as_ref()) {
            Ok((config, ram, state, prebuilt)) => Ok(Incoming {
                stream,
                config,
                ram,
                state,
                prebuilt,
            }),
            Err(e) => {
                refuse(&mut *stream, &e);
                Err(e)
            }
        }
    }

    /// The VM's configuration, as the source sent it.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Builds the VM with `build` (given a builder that restores what was received and
    /// runs the VM as soon as it starts), then answers the source: it ends on success, and
    /// runs on when the build failed.
    pub fn finish(
        mut self,
        build: impl FnOnce(VmmBuilder) -> Result<Vmm, VmmError>,
    ) -> Result<Vmm, MigrationError> {
        let started = std::time::Instant::now();
        let builder = VmmBuilder::from_migration(self.config, self.state, self.ram, self.prebuilt);
        let built = build(builder);
        log::info!(
            "migration: the VM built and restored in {:?}",
            started.elapsed()
        );
        match built {
            Ok(vmm) => {
                wire::write_frame(&mut *self.stream, Tag::Ok, &[])
                    .and_then(|()| self.stream.flush())
                    .map_err(MigrationError::Stream)?;
                Ok(vmm)
            }
            Err(e) => {
                let e = MigrationError::Restore(e.to_string());
                refuse(&mut *self.stream, &e);
                Err(e)
            }
        }
    }
}

/// What [`read_all`] receives.
type Received = (VmConfig, GuestRam, MachineState, Option<Prebuilt>);

fn read_all(
    conn: &mut dyn Stream,
    hv: Option<&Arc<dyn Hypervisor>>,
) -> Result<Received, MigrationError> {
    // Frames come in large reads (a frame's head alone was a read of its own). Nothing
    // follows the Complete frame until this side answers, so the buffer holds nothing
    // when it goes.
    let mut r = std::io::BufReader::with_capacity(READ_BUFFER, &mut *conn);
    let s: &mut dyn std::io::Read = &mut r;
    wire::read_magic(s)?;
    let started = std::time::Instant::now();
    let config: VmConfig = match wire::read_frame(s)? {
        (Tag::Config, p) => serde_json::from_slice(&p)
            .map_err(|e| MigrationError::Protocol(format!("the VM configuration: {e}")))?,
        (Tag::Error, m) => return Err(peer(&m)),
        (t, _) => {
            return Err(MigrationError::Protocol(format!(
                "{t:?} before the configuration"
            )))
        }
    };
    let ram = GuestMemoryBuilder::new(config.memory.size)
        .huge_pages(config.memory.huge_pages())
        .build()
        .map_err(|e| MigrationError::Restore(format!("guest memory: {e}")))?;
    let prebuilt = match hv {
        Some(hv) => Some(
            prebuild(hv, &config, &ram)
                .map_err(|e| MigrationError::Restore(format!("creating the VM: {e}")))?,
        ),
        None => None,
    };
    let mut state = None;
    loop {
        match wire::read_frame(s)? {
            (Tag::Memory, p) => {
                let (head, data) = p.split_at_checked(8).ok_or_else(|| {
                    MigrationError::Protocol("a memory frame without its address".into())
                })?;
                let mut a = [0u8; 8];
                a.copy_from_slice(head);
                let gpa = u64::from_le_bytes(a);
                ram.memory()
                    .write_slice(data, GuestAddress(gpa))
                    .map_err(|e| {
                        MigrationError::Protocol(format!(
                            "{} bytes at {gpa:#x}: not guest RAM ({e})",
                            data.len()
                        ))
                    })?;
            }
            (Tag::Zero, p) => zero_fill(&ram, &p)?,
            (Tag::State, p) => {
                log::info!("migration: state frame at {:?}", started.elapsed());
                state =
                    Some(serde_json::from_slice::<MachineState>(&p).map_err(|e| {
                        MigrationError::Protocol(format!("the machine state: {e}"))
                    })?);
            }
            (Tag::Complete, _) => {
                log::info!("migration: stream complete after {:?}", started.elapsed());
                break;
            }
            (Tag::Error, m) => return Err(peer(&m)),
            (t, _) => return Err(MigrationError::Protocol(format!("unexpected {t:?} frame"))),
        }
    }
    let state =
        state.ok_or_else(|| MigrationError::Protocol("complete without a machine state".into()))?;
    Ok((config, ram, state, prebuilt))
}

/// A Zero frame: `len` bytes of guest RAM at `gpa` become zeros (they may hold an older
/// copy of the page). A range outside RAM is refused.
fn zero_fill(ram: &GuestRam, p: &[u8]) -> Result<(), MigrationError> {
    let field = |i: usize| {
        p.get(i..i + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| MigrationError::Protocol(format!("a zero frame of {} bytes", p.len())))
    };
    if p.len() != 16 {
        return Err(MigrationError::Protocol(format!(
            "a zero frame of {} bytes",
            p.len()
        )));
    }
    let (gpa, len) = (field(0)?, field(8)?);
    let outside =
        || MigrationError::Protocol(format!("{len} zero bytes at {gpa:#x}: not guest RAM"));
    let end = gpa.checked_add(len).ok_or_else(outside)?;
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK as usize];
    let mut at = gpa;
    while at < end {
        let n = (end - at).min(CHUNK);
        ram.memory()
            .write_slice(&zeros[..n as usize], GuestAddress(at))
            .map_err(|_| outside())?;
        at += n;
    }
    Ok(())
}

fn peer(m: &[u8]) -> MigrationError {
    MigrationError::Peer(String::from_utf8_lossy(m).into_owned())
}
