//! Compression of whole clusters for compressed writes.

use crate::error::{Qcow2Error, Result};
use crate::header::CompressionType;

/// Compress one cluster the way QEMU expects: raw deflate with a 4 KiB
/// window (QEMU inflates with `windowBits = -12`), or one zstd frame.
pub(crate) fn compress(kind: CompressionType, data: &[u8]) -> Result<Vec<u8>> {
    match kind {
        CompressionType::Zlib => {
            let mut c =
                flate2::Compress::new_with_window_bits(flate2::Compression::default(), false, 12);
            let mut out = Vec::with_capacity(data.len() + 64);
            loop {
                let status = c
                    .compress_vec(
                        &data[c.total_in() as usize..],
                        &mut out,
                        flate2::FlushCompress::Finish,
                    )
                    .map_err(|e| Qcow2Error::Corrupt(format!("deflate: {e}")))?;
                match status {
                    flate2::Status::StreamEnd => return Ok(out),
                    _ => out.reserve(out.capacity().max(4096)),
                }
            }
        }
        CompressionType::Zstd => zstd::bulk::compress(data, 3).map_err(Qcow2Error::Io),
    }
}
