//! Saving guest RAM to a file for snapshots: the regions back to back from offset 0, only
//! the pages that are not all zero written, so pages the guest never touched stay holes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestRam;
use crate::PAGE_SIZE;

/// What [`GuestRam::save_sparse`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveStats {
    /// The file's size (the RAM's size).
    pub size: u64,
    /// Bytes of non-zero pages written; the rest are holes.
    pub written: u64,
}

impl GuestRam {
    /// Writes the RAM to `file` (truncated to the RAM's size first), skipping zero pages.
    /// Take it with the vCPUs paused and no device writing guest memory.
    pub fn save_sparse(&self, file: &File) -> io::Result<SaveStats> {
        const CHUNK: usize = 1 << 20;
        file.set_len(0)?;
        file.set_len(self.size())?;
        let mut buf = vec![0u8; CHUNK];
        let page = PAGE_SIZE as usize;
        let mut written = 0u64;
        let mut file_off = 0u64;
        for r in self.regions() {
            let mut done = 0u64;
            while done < r.size {
                let n = usize::try_from((r.size - done).min(CHUNK as u64))
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
                self.memory()
                    .read_slice(&mut buf[..n], GuestAddress(r.start.0 + done))
                    .map_err(|e| io::Error::other(e.to_string()))?;
                // Write each run of non-zero pages with one pwrite.
                let mut p = 0;
                while p < n {
                    let end = (p + page).min(n);
                    if buf[p..end].iter().all(|&b| b == 0) {
                        p = end;
                        continue;
                    }
                    let mut q = end;
                    while q < n {
                        let e = (q + page).min(n);
                        if buf[q..e].iter().all(|&b| b == 0) {
                            break;
                        }
                        q = e;
                    }
                    file.write_all_at(&buf[p..q], file_off + done + p as u64)?;
                    written += (q - p) as u64;
                    p = q;
                }
                done += n as u64;
            }
            file_off += r.size;
        }
        file.sync_data()?;
        Ok(SaveStats {
            size: self.size(),
            written,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use vm_memory::{Bytes, GuestAddress};

    use crate::GuestMemoryBuilder;

    #[test]
    fn saved_ram_comes_back_copy_on_write_and_sparse() {
        let ram = GuestMemoryBuilder::from_mib(64).build().unwrap();
        ram.memory()
            .write_slice(b"hello", GuestAddress(0x1000))
            .unwrap();
        ram.memory()
            .write_slice(b"world", GuestAddress(40 << 20))
            .unwrap();
        let f = tempfile::tempfile().unwrap();
        let st = ram.save_sparse(&f).unwrap();
        assert_eq!(st.size, 64 << 20);
        assert_eq!(st.written, 2 * 4096, "only the two touched pages");
        assert!(
            f.metadata().unwrap().blocks() * 512 <= 64 * 1024,
            "the file is sparse"
        );
        let back = GuestMemoryBuilder::from_mib(64)
            .backing_file(f.try_clone().unwrap())
            .build()
            .unwrap();
        let mut b = [0u8; 5];
        back.memory()
            .read_slice(&mut b, GuestAddress(0x1000))
            .unwrap();
        assert_eq!(&b, b"hello");
        back.memory()
            .read_slice(&mut b, GuestAddress(40 << 20))
            .unwrap();
        assert_eq!(&b, b"world");
        // Writes are private: the file keeps the snapshot.
        back.memory()
            .write_slice(b"XXXXX", GuestAddress(0x1000))
            .unwrap();
        let mut f5 = [0u8; 5];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut f5, 0x1000).unwrap();
        assert_eq!(&f5, b"hello");
        // A file smaller than the RAM is refused.
        let small = tempfile::tempfile().unwrap();
        small.set_len(1 << 20).unwrap();
        let e = GuestMemoryBuilder::from_mib(64)
            .backing_file(small)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("holds 1048576 bytes"), "{e}");
    }
}
