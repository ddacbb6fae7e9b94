//! [`Store`]: blobs and unpacked layers under one directory, by digest.
//!
//! ```text
//! ROOT/blobs/sha256/<hex>     verified blobs (manifests, configs, layers)
//! ROOT/layers/sha256/<hex>/   a layer blob unpacked (overlayfs whiteouts)
//! ROOT/tmp/                   work in progress, renamed into place when verified
//! ```

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::HashingReader;
use crate::unpack::{unpack, UnpackOptions, UnpackStats};
use crate::{Digest, ImageError};

/// The most bytes a blob may have.
pub const MAX_BLOB: u64 = 64 << 30;

/// A content-addressed store of blobs and unpacked layers.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// The store at `root`, created when missing.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, ImageError> {
        let root = root.into();
        for d in ["blobs/sha256", "layers/sha256", "tmp"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(ImageError::io("cannot create", &p))?;
        }
        Ok(Store { root })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `d` is (or would be).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// Where the layer blob `d` is unpacked (or would be).
    pub fn layer_path(&self, d: &Digest) -> PathBuf {
        self.root.join("layers/sha256").join(d.hex())
    }

    /// Whether the store holds the blob `d`.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// A fresh name under `tmp/` (unique across threads and processes).
    fn tmp(&self, what: &str) -> PathBuf {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    /// Stores what `reader` gives as the blob `expected`: written to a temporary file,
    /// hashed on the way, synced, and renamed into place only when the digest matches
    /// (a blob already there is kept). Returns the blob's size.
    pub fn put_blob(&self, reader: impl Read, expected: &Digest) -> Result<u64, ImageError> {
        self.store_verified(reader, expected.hex(), Some(expected))
            .map(|(_, n)| n)
    }

    /// Writes what `reader` gives to a temporary file, hashing it, and renames it into
    /// place under its digest once synced, if that is `expected` (when given); removes the
    /// temporary file on any failure.
    fn store_verified(
        &self,
        reader: impl Read,
        what: &str,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64), ImageError> {
        let tmp = self.tmp(what);
        let result = (|| {
            let mut f =
                std::fs::File::create_new(&tmp).map_err(ImageError::io("cannot create", &tmp))?;
            let mut r = HashingReader::new(reader, MAX_BLOB);
            let n = std::io::copy(&mut r, &mut f).map_err(ImageError::io("cannot write", &tmp))?;
            let actual = r
                .finish()
                .map_err(ImageError::io("cannot read the blob for", &tmp))?;
            if let Some(e) = expected.filter(|e| **e != actual) {
                return Err(ImageError::DigestMismatch {
                    expected: e.clone(),
                    actual,
                });
            }
            f.flush().map_err(ImageError::io("cannot write", &tmp))?;
            f.sync_all().map_err(ImageError::io("cannot sync", &tmp))?;
            let dest = self.blob_path(&actual);
            std::fs::rename(&tmp, &dest).map_err(ImageError::io("cannot rename into", &dest))?;
            Ok((actual, n))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// A writer for the blob `expected` that resumes an interrupted one: its bytes go to
    /// `tmp/partial-<hex>`, locked (`flock`) against another process writing the same
    /// blob, which waits and then finds the blob stored. [`BlobWriter::offset`] says
    /// how much an earlier attempt already wrote; [`BlobWriter::commit`] verifies the
    /// whole and renames it into place.
    pub fn blob_writer(&self, expected: &Digest) -> Result<BlobWriter, ImageError> {
        use std::os::fd::AsRawFd;
        let tmp = self
            .root
            .join("tmp")
            .join(format!("partial-{}", expected.hex()));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&tmp)
            .map_err(ImageError::io("cannot open", &tmp))?;
        // SAFETY: flock on a file we own; released when it is closed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(ImageError::io("cannot lock", &tmp)(
                std::io::Error::last_os_error(),
            ));
        }
        let mut hasher = sha2::Sha256::default();
        let offset = std::io::copy(&mut (&mut file).take(MAX_BLOB), &mut HashWrite(&mut hasher))
            .map_err(ImageError::io("cannot read", &tmp))?;
        Ok(BlobWriter {
            store: self.clone(),
            expected: expected.clone(),
            tmp,
            file,
            hasher,
            offset,
        })
    }

    /// Stores what `reader` gives under the digest of its bytes (for formats that name no
    /// digest, as a docker-archive's files); returns the digest and the size.
    pub fn put_blob_computed(&self, reader: impl Read) -> Result<(Digest, u64), ImageError> {
        self.store_verified(reader, "computed", None)
    }

    /// The blob `d`, verified against its digest (a blob changed on disk is an error).
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, ImageError> {
        let p = self.blob_path(d);
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ImageError::MissingBlob(d.clone()))
            }
            Err(e) => return Err(ImageError::io("cannot read", &p)(e)),
        };
        let actual = Digest::of(&bytes);
        if &actual != d {
            return Err(ImageError::DigestMismatch {
                expected: d.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// The layer blob `d` unpacked (once: later calls return the same directory). The
    /// blob is hashed while it is unpacked into a temporary directory, which is renamed
    /// into place only when the whole archive unpacked and its digest matched.
    pub fn unpack_layer(&self, d: &Digest, opts: &UnpackOptions) -> Result<PathBuf, ImageError> {
        let dest = self.layer_path(d);
        if dest.is_dir() {
            return Ok(dest);
        }
        let blob = self.blob_path(d);
        let f = match std::fs::File::open(&blob) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ImageError::MissingBlob(d.clone()))
            }
            Err(e) => return Err(ImageError::io("cannot open", &blob)(e)),
        };
        let tmp = self.tmp(&format!("layer-{}", d.hex()));
        std::fs::create_dir(&tmp).map_err(ImageError::io("cannot create", &tmp))?;
        let result = (|| {
            let stats: UnpackStats = unpack(f, &tmp, opts)?;
            if &stats.digest != d {
                return Err(ImageError::DigestMismatch {
                    expected: d.clone(),
                    actual: stats.digest,
                });
            }
            match std::fs::rename(&tmp, &dest) {
                Ok(()) => Ok(dest.clone()),
                // Another unpack of the same layer won the race: keep theirs.
                Err(_) if dest.is_dir() => {
                    let _ = std::fs::remove_dir_all(&tmp);
                    Ok(dest.clone())
                }
                Err(e) => Err(ImageError::io("cannot rename into", &dest)(e)),
            }
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Every blob in the store.
    pub fn blobs(&self) -> Result<Vec<Digest>, ImageError> {
        let dir = self.root.join("blobs/sha256");
        let mut v: Vec<Digest> = std::fs::read_dir(&dir)
            .map_err(ImageError::io("cannot list", &dir))?
            .flatten()
            .filter_map(|e| {
                format!("sha256:{}", e.file_name().to_string_lossy())
                    .parse()
                    .ok()
            })
            .collect();
        v.sort();
        Ok(v)
    }

    /// Removes every blob and unpacked layer not in `keep`, and leftovers of interrupted
    /// work; returns the blobs removed.
    pub fn prune(&self, keep: &HashSet<Digest>) -> Result<Vec<Digest>, ImageError> {
        let mut removed = Vec::new();
        for d in self.blobs()? {
            if !keep.contains(&d) {
                let p = self.blob_path(&d);
                std::fs::remove_file(&p).map_err(ImageError::io("cannot remove", &p))?;
                removed.push(d);
            }
        }
        let layers = self.root.join("layers/sha256");
        for e in std::fs::read_dir(&layers)
            .map_err(ImageError::io("cannot list", &layers))?
            .flatten()
        {
            let d: Option<Digest> = format!("sha256:{}", e.file_name().to_string_lossy())
                .parse()
                .ok();
            if d.is_none_or(|d| !keep.contains(&d)) {
                std::fs::remove_dir_all(e.path())
                    .map_err(ImageError::io("cannot remove", e.path()))?;
            }
        }
        let tmp = self.root.join("tmp");
        for e in std::fs::read_dir(&tmp)
            .map_err(ImageError::io("cannot list", &tmp))?
            .flatten()
        {
            // Names are WHAT-PID-N: the work of a live process is left alone.
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.rsplit('-').nth(1).and_then(|p| p.parse::<i32>().ok());
            if pid.is_some_and(alive) || locked(&e.path()) {
                continue;
            }
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
        Ok(removed)
    }
}

/// Whether another process holds the `flock` of `path` (a blob being pulled).
fn locked(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    // SAFETY: flock on a file we own; released when it is closed.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}

/// Whether process `pid` exists.
fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// `io::Write` into a hasher.
struct HashWrite<'a>(&'a mut sha2::Sha256);

impl Write for HashWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        sha2::Digest::update(self.0, buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A blob being written into the store ([`Store::blob_writer`]).
#[derive(Debug)]
pub struct BlobWriter {
    store: Store,
    expected: Digest,
    tmp: PathBuf,
    file: std::fs::File,
    hasher: sha2::Sha256,
    offset: u64,
}

impl BlobWriter {
    /// Bytes already written (by this writer or an interrupted one).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether the blob is already in the store (another writer finished it).
    pub fn done(&self) -> bool {
        self.store.has_blob(&self.expected)
    }

    /// Starts again from nothing (the source could not resume).
    pub fn restart(&mut self) -> Result<(), ImageError> {
        self.file
            .set_len(0)
            .map_err(ImageError::io("cannot truncate", &self.tmp))?;
        std::io::Seek::seek(&mut self.file, std::io::SeekFrom::Start(0))
            .map_err(ImageError::io("cannot seek", &self.tmp))?;
        self.hasher = sha2::Sha256::default();
        self.offset = 0;
        Ok(())
    }

    /// Appends `bytes`.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        self.offset = self.offset.saturating_add(bytes.len() as u64);
        if self.offset > MAX_BLOB {
            return Err(ImageError::TooLarge {
                what: "a blob",
                limit: MAX_BLOB,
            });
        }
        sha2::Digest::update(&mut self.hasher, bytes);
        self.file
            .write_all(bytes)
            .map_err(ImageError::io("cannot write", &self.tmp))
    }

    /// Checks the digest of everything written and moves the blob into place; a
    /// mismatch discards the partial file (a later pull starts over).
    pub fn commit(self) -> Result<u64, ImageError> {
        let actual = crate::digest::Digest::from_sha256(self.hasher);
        if actual != self.expected {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(ImageError::DigestMismatch {
                expected: self.expected,
                actual,
            });
        }
        self.file
            .sync_all()
            .map_err(ImageError::io("cannot sync", &self.tmp))?;
        let dest = self.store.blob_path(&self.expected);
        std::fs::rename(&self.tmp, &dest).map_err(ImageError::io("cannot rename into", &dest))?;
        Ok(self.offset)
    }
}
