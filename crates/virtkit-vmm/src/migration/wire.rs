//! The migration stream: a magic and a format version, then frames of
//! `[tag: u8][length: u64 little-endian][payload]`.
//!
//! ```text
//! source -> destination: MAGIC, Config(VmConfig JSON), Memory(gpa u64 LE + bytes) and
//!                        Zero(gpa u64 LE + length u64 LE)...,
//!                        State(MachineState JSON), Complete
//! destination -> source: Ok, or Error(message)
//! ```

use std::io::{Read, Write};

use super::MigrationError;

/// The first bytes of a migration stream (the last byte is the format version).
pub const MAGIC: &[u8; 8] = b"VKMIGR\x00\x01";

/// The largest payload a frame may announce (a memory batch is at most 1 MiB).
pub const MAX_FRAME: u64 = 16 << 20;

/// Frame kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Tag {
    /// The VM's configuration (JSON).
    Config = 1,
    /// Guest memory: the guest physical address (8 bytes LE), then the bytes.
    Memory = 2,
    /// The machine state (JSON).
    State = 3,
    /// The source sent everything.
    Complete = 4,
    /// The destination runs the VM.
    Ok = 5,
    /// The other side failed (a UTF-8 message).
    Error = 6,
    /// Guest memory that is all zeros: the address and the length (8 bytes LE each).
    Zero = 7,
}

impl Tag {
    fn from_u8(b: u8) -> Option<Tag> {
        Some(match b {
            1 => Tag::Config,
            2 => Tag::Memory,
            3 => Tag::State,
            4 => Tag::Complete,
            5 => Tag::Ok,
            6 => Tag::Error,
            7 => Tag::Zero,
            _ => return None,
        })
    }
}

/// Writes one frame whose payload is `parts` back to back.
pub fn write_frame(w: &mut dyn Write, tag: Tag, parts: &[&[u8]]) -> std::io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut head = [0u8; 9];
    head[0] = tag as u8;
    head[1..].copy_from_slice(&(len as u64).to_le_bytes());
    w.write_all(&head)?;
    for p in parts {
        w.write_all(p)?;
    }
    Ok(())
}

/// Reads one frame, refusing unknown tags and payloads over [`MAX_FRAME`].
pub fn read_frame(r: &mut dyn Read) -> Result<(Tag, Vec<u8>), MigrationError> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).map_err(MigrationError::Stream)?;
    let tag = Tag::from_u8(head[0]).ok_or(MigrationError::Protocol(format!(
        "unknown frame tag {}",
        head[0]
    )))?;
    let mut len = [0u8; 8];
    len.copy_from_slice(&head[1..]);
    let len = u64::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(MigrationError::Protocol(format!(
            "a frame of {len} bytes (at most {MAX_FRAME})"
        )));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).map_err(MigrationError::Stream)?;
    Ok((tag, payload))
}

/// Writes the magic.
pub fn write_magic(w: &mut dyn Write) -> std::io::Result<()> {
    w.write_all(MAGIC)
}

/// Reads and checks the magic.
pub fn read_magic(r: &mut dyn Read) -> Result<(), MigrationError> {
    let mut m = [0u8; 8];
    r.read_exact(&mut m).map_err(MigrationError::Stream)?;
    if m[..7] != MAGIC[..7] {
        return Err(MigrationError::Protocol(
            "not a virtkit migration stream".into(),
        ));
    }
    if m[7] != MAGIC[7] {
        return Err(MigrationError::Protocol(format!(
            "migration format version {} (this VMM speaks {})",
            m[7], MAGIC[7]
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_ones_are_refused() {
        let mut buf = Vec::new();
        write_magic(&mut buf).unwrap();
        write_frame(&mut buf, Tag::Memory, &[&7u64.to_le_bytes(), b"abc"]).unwrap();
        let mut r = &buf[..];
        read_magic(&mut r).unwrap();
        let (tag, p) = read_frame(&mut r).unwrap();
        assert_eq!(tag, Tag::Memory);
        assert_eq!(&p[8..], b"abc");
        // Truncated, unknown tag, absurd length, wrong magic or version.
        assert!(read_frame(&mut &buf[8..12]).is_err());
        let mut bad = buf[8..].to_vec();
        bad[0] = 99;
        assert!(read_frame(&mut &bad[..]).is_err());
        let mut huge = vec![2u8];
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        let e = read_frame(&mut &huge[..]).unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
        assert!(read_magic(&mut &b"GARBAGE!"[..]).is_err());
        let e = read_magic(&mut &b"VKMIGR\x00\x09"[..]).unwrap_err();
        assert!(e.to_string().contains("version 9"), "{e}");
    }
}
