//! The cluster codecs: compression of whole clusters for compressed writes,
//! and decompression of what the read path found in the file.

use std::io::Read;

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

/// Inflate the compressed data of one cluster (`src`, as read from the
/// file) into `cluster_size` bytes. The error says what is wrong with the
/// data; the caller names the cluster.
pub(crate) fn decompress(
    kind: CompressionType,
    src: &[u8],
    cluster_size: usize,
) -> std::result::Result<Vec<u8>, String> {
    let mut out = vec![0u8; cluster_size];
    match kind {
        CompressionType::Zlib => {
            let mut d = flate2::Decompress::new(false);
            d.decompress(src, &mut out, flate2::FlushDecompress::Finish)
                .map_err(|e| e.to_string())?;
            if d.total_out() != cluster_size as u64 {
                return Err(format!("inflated to {} bytes", d.total_out()));
            }
        }
        CompressionType::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(src)
                .map_err(|e| e.to_string())?
                .single_frame();
            d.read_exact(&mut out).map_err(|e| e.to_string())?;
        }
    }
    Ok(out)
}
