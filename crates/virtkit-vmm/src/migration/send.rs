//! The source side of a migration, run on the event loop's thread (see the module docs).

use std::io::Write;
use std::time::Instant;

use virtkit_memory::{dirty::dirty_pages, GuestAddress, PAGE_SIZE};
use vm_memory::Bytes;

use super::wire::{self, Tag};
use super::{connect, MigrationError, MigrationInfo, Stream, DIRTY_PAGES_TO_STOP, MAX_ROUNDS};
use crate::control::VmState;
use crate::snapshot::SnapshotContext;

/// Pages per memory frame (1 MiB).
const BATCH_PAGES: u64 = 256;
/// Bytes gathered before a write to the destination.
const WRITE_BUFFER: usize = 2 << 20;

fn source(e: impl std::fmt::Display) -> MigrationError {
    MigrationError::Source(e.to_string())
}

fn stream(e: std::io::Error) -> MigrationError {
    MigrationError::Stream(e)
}

/// Migrates the VM of `ctx` to the VMM listening at `url`. On success the VM has ended
/// here; on failure it runs (or stays paused) as before.
pub(crate) fn send(ctx: &SnapshotContext, url: &str) -> Result<MigrationInfo, MigrationError> {
    let started = Instant::now();
    let mut s = connect(url)?;
    let was_running = match ctx.controller.state() {
        VmState::Running => true,
        VmState::Paused => false,
        other => return Err(source(format!("the VM is {other:?}"))),
    };
    ctx.vm.set_dirty_logging(true).map_err(source)?;
    let result = transfer(ctx, &mut *s, was_running, started);
    match &result {
        Ok(info) => {
            log::info!("migrated to {url}: {info:?}");
            ctx.controller.end_migrated();
        }
        Err(e) => {
            log::warn!("migration to {url} failed: {e}");
            if !matches!(e, MigrationError::Peer(_)) {
                let _ = wire::write_frame(&mut *s, Tag::Error, &[e.to_string().as_bytes()]);
            }
            let _ = ctx.vm.set_dirty_logging(false);
            if was_running && ctx.controller.state() == VmState::Paused {
                if let Err(e) = ctx.controller.resume() {
                    log::error!("resuming the VM after a failed migration: {e}");
                }
            }
        }
    }
    result
}

fn transfer(
    ctx: &SnapshotContext,
    conn: &mut dyn Stream,
    was_running: bool,
    started: Instant,
) -> Result<MigrationInfo, MigrationError> {
    // Frames go out in large writes: unbuffered, each frame was two or more writes, and
    // each woke the destination (on a host with one free CPU, a context switch per write:
    // about 30 ms for the last round's 150 pages in the lab).
    let mut w = std::io::BufWriter::with_capacity(WRITE_BUFFER, &mut *conn);
    let s: &mut dyn Write = &mut w;
    wire::write_magic(s).map_err(stream)?;
    let config = serde_json::to_vec(&ctx.config).map_err(source)?;
    wire::write_frame(s, Tag::Config, &[&config]).map_err(stream)?;
    // Pages written before logging began are in the full copy that follows.
    ctx.vm.take_dirty_log().map_err(source)?;
    let mut memory_bytes = send_all(ctx, s)?;
    let mut rounds = 1;
    let mut pages = dirty(ctx)?;
    // The round that finds few pages left still sends them with the VM running: what the
    // pause leaves is then only what the guest dirtied during that short round.
    loop {
        let last = pages.len() <= DIRTY_PAGES_TO_STOP || rounds + 1 >= MAX_ROUNDS;
        memory_bytes += send_pages(ctx, s, &pages)?;
        rounds += 1;
        pages = dirty(ctx)?;
        if last {
            break;
        }
    }
    // Nothing sent before the pause may wait in the buffer into the downtime.
    s.flush().map_err(stream)?;
    let paused = Instant::now();
    if was_running {
        ctx.controller.pause().map_err(source)?;
    }
    let step = |what: &str| {
        log::info!(
            "migration: {what} at {:?} after the pause",
            paused.elapsed()
        )
    };
    step("paused");
    pages.extend(dirty(ctx)?);
    pages.sort_unstable();
    pages.dedup();
    memory_bytes += send_pages(ctx, s, &pages)?;
    step("last pages sent");
    for (path, backend) in &ctx.disks {
        backend
            .flush()
            .map_err(|e| source(format!("flushing disk {}: {e}", path.display())))?;
    }
    let state = ctx.machine_state(Vec::new()).map_err(source)?;
    let state = serde_json::to_vec(&state).map_err(source)?;
    step(&format!("state saved ({} bytes)", state.len()));
    wire::write_frame(s, Tag::State, &[&state]).map_err(stream)?;
    wire::write_frame(s, Tag::Complete, &[]).map_err(stream)?;
    s.flush().map_err(stream)?;
    drop(w);
    step("state sent");
    match wire::read_frame(conn)? {
        (Tag::Ok, _) => {}
        (Tag::Error, m) => {
            return Err(MigrationError::Peer(
                String::from_utf8_lossy(&m).into_owned(),
            ))
        }
        (t, _) => {
            return Err(MigrationError::Protocol(format!(
                "{t:?} instead of an answer"
            )))
        }
    }
    step("answered");
    let _ = ctx.vm.set_dirty_logging(false);
    Ok(MigrationInfo {
        rounds,
        memory_bytes,
        last_round_pages: pages.len(),
        downtime_us: u64::try_from(paused.elapsed().as_micros()).unwrap_or(u64::MAX),
        total_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// The pages the guest dirtied since the last call, in address order.
fn dirty(ctx: &SnapshotContext) -> Result<Vec<u64>, MigrationError> {
    let mut out = Vec::new();
    for (region, bitmap) in ctx.vm.take_dirty_log().map_err(source)? {
        out.extend(dirty_pages(&region, &bitmap).map(|a| a.0));
    }
    Ok(out)
}

/// Every non-zero page (the destination's fresh RAM is zero); returns the bytes sent.
fn send_all(ctx: &SnapshotContext, s: &mut dyn Write) -> Result<u64, MigrationError> {
    let mem = ctx.ram.memory();
    let mut page = vec![0u8; PAGE_SIZE as usize];
    let mut batch: Vec<u8> = Vec::with_capacity((BATCH_PAGES * PAGE_SIZE) as usize);
    let mut batch_start = 0u64;
    let mut sent = 0u64;
    for region in ctx.ram.regions() {
        for i in 0..region.size / PAGE_SIZE {
            let gpa = region.start.0 + i * PAGE_SIZE;
            mem.read_slice(&mut page, GuestAddress(gpa))
                .map_err(|e| source(format!("reading guest page {gpa:#x}: {e}")))?;
            let zero = is_zero(&page);
            let next = batch_start + batch.len() as u64;
            if !batch.is_empty()
                && (zero || gpa != next || batch.len() as u64 >= BATCH_PAGES * PAGE_SIZE)
            {
                sent += flush_batch(s, batch_start, &mut batch)?;
            }
            if !zero {
                if batch.is_empty() {
                    batch_start = gpa;
                }
                batch.extend_from_slice(&page);
            }
        }
    }
    sent += flush_batch(s, batch_start, &mut batch)?;
    Ok(sent)
}

/// The pages at `pages` (sorted guest addresses), in runs; returns the bytes sent.
fn send_pages(
    ctx: &SnapshotContext,
    s: &mut dyn Write,
    pages: &[u64],
) -> Result<u64, MigrationError> {
    let mem = ctx.ram.memory();
    let mut sent = 0u64;
    let mut i = 0;
    while i < pages.len() {
        let start = pages[i];
        let mut n = 1u64;
        while i + (n as usize) < pages.len()
            && n < BATCH_PAGES
            && pages[i + n as usize] == start + n * PAGE_SIZE
        {
            n += 1;
        }
        let mut buf = vec![0u8; (n * PAGE_SIZE) as usize];
        mem.read_slice(&mut buf, GuestAddress(start))
            .map_err(|e| source(format!("reading guest pages at {start:#x}: {e}")))?;
        // Runs of zero pages go as one Zero frame each, the rest as Memory frames.
        let ps = PAGE_SIZE as usize;
        let pages_in = buf.chunks(ps).map(is_zero).collect::<Vec<bool>>();
        let mut j = 0;
        while j < pages_in.len() {
            let zero = pages_in[j];
            let mut k = j + 1;
            while k < pages_in.len() && pages_in[k] == zero {
                k += 1;
            }
            let gpa = start + j as u64 * PAGE_SIZE;
            if zero {
                let len = (k - j) as u64 * PAGE_SIZE;
                wire::write_frame(s, Tag::Zero, &[&gpa.to_le_bytes(), &len.to_le_bytes()])
                    .map_err(stream)?;
            } else {
                let data = &buf[j * ps..k * ps];
                wire::write_frame(s, Tag::Memory, &[&gpa.to_le_bytes(), data]).map_err(stream)?;
                sent += data.len() as u64;
            }
            j = k;
        }
        i += n as usize;
    }
    Ok(sent)
}

fn is_zero(page: &[u8]) -> bool {
    page.iter().all(|b| *b == 0)
}

fn flush_batch(s: &mut dyn Write, gpa: u64, batch: &mut Vec<u8>) -> Result<u64, MigrationError> {
    if batch.is_empty() {
        return Ok(0);
    }
    wire::write_frame(s, Tag::Memory, &[&gpa.to_le_bytes(), batch]).map_err(stream)?;
    let n = batch.len() as u64;
    batch.clear();
    Ok(n)
}
