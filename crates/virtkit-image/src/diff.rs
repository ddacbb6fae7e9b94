//! A layer made from a directory: an overlayfs upper directory (what a container or a
//! build step changed) or a directory of new files, written as a gzip-compressed tar and
//! stored in the [`Store`] under its digest.
//!
//! Overlayfs' own markers become OCI's: a whiteout (a `0:0` character device) becomes a
//! `.wh.NAME` entry, an opaque directory (`trusted.overlay.opaque=y`, or
//! `user.overlay.opaque=y` for a user-namespace overlay) becomes `DIR/.wh..wh..opq`.
//! Entries keep their mode, owner, modification time and `user.*` and
//! `security.capability` extended attributes (PAX `SCHILY.xattr.*` records); a file seen
//! twice (same inode) becomes a hard link to its first name; symbolic links are stored,
//! never followed; device nodes and FIFOs keep their numbers. Entries are sorted, so the
//! same tree gives the same layer.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::Digest as _;
use tar::{EntryType, Header};

use crate::{Digest, ImageError, Store};

/// The media type of the layers this module writes.
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A layer written into the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewLayer {
    /// The compressed blob's digest (the manifest's layer digest).
    pub digest: Digest,
    /// The uncompressed tar's digest (the config's diff id).
    pub diff_id: Digest,
    /// The compressed blob's size.
    pub size: u64,
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: sha2::Sha256,
    count: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count = self.count.saturating_add(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn hashing<W: Write>(inner: W) -> Hashing<W> {
    Hashing {
        inner,
        hasher: sha2::Sha256::new(),
        count: 0,
    }
}

/// The names in the directory `dir`, sorted.
pub(crate) fn sorted_names(dir: &Path) -> Result<Vec<OsString>, ImageError> {
    let mut names: Vec<OsString> = std::fs::read_dir(dir)
        .map_err(ImageError::io("cannot list", dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(ImageError::io("cannot list", dir))?;
    names.sort();
    Ok(names)
}

/// The stored blob `d` opened for reading (not yet verified).
pub(crate) fn open_blob(store: &Store, d: &Digest) -> Result<std::fs::File, ImageError> {
    let p = store.blob_path(d);
    match std::fs::File::open(&p) {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(ImageError::MissingBlob(d.clone()))
        }
        Err(e) => Err(ImageError::io("cannot open", &p)(e)),
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A fresh `WHAT-PID-N` name under the store's `tmp/` (the form [`Store::prune`] leaves
/// alone while the process lives).
pub(crate) fn tmp_path(store: &Store, what: &str) -> PathBuf {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    store
        .root()
        .join("tmp")
        .join(format!("{what}-{}-{n}", std::process::id()))
}

/// Writes the tree under `dir` as an uncompressed tar to `out`; entries whose relative
/// path is in `skip` are left out (their contents are not). Returns the entry count.
pub fn write_tar(dir: &Path, skip: &[PathBuf], out: impl Write) -> Result<u64, ImageError> {
    let mut w = TreeWriter {
        tar: tar::Builder::new(out),
        links: HashMap::new(),
        skip,
        entries: 0,
    };
    let top = std::fs::symlink_metadata(dir).map_err(ImageError::io("cannot inspect", dir))?;
    if !top.is_dir() {
        return Err(ImageError::BadConfig(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    w.dir(dir, Path::new(""))?;
    w.tar
        .into_inner()
        .and_then(|mut o| o.flush())
        .map_err(ImageError::io("cannot write the layer of", dir))?;
    Ok(w.entries)
}

impl Store {
    /// Makes a gzip-compressed layer of the tree under `dir` (an overlayfs upper
    /// directory, or new files) and stores it; entries whose relative path is in `skip`
    /// are left out. Written to a temporary file renamed into place once complete.
    pub fn layer_from_dir(&self, dir: &Path, skip: &[PathBuf]) -> Result<NewLayer, ImageError> {
        let tmp = tmp_path(self, "diff");
        let result = (|| {
            let file =
                std::fs::File::create_new(&tmp).map_err(ImageError::io("cannot create", &tmp))?;
            let mut compressed = hashing(file);
            let mut gz =
                flate2::write::GzEncoder::new(&mut compressed, flate2::Compression::fast());
            let mut plain = hashing(&mut gz);
            write_tar(dir, skip, &mut plain)?;
            let diff_id = Digest::from_sha256(plain.hasher);
            gz.finish().map_err(ImageError::io("cannot write", &tmp))?;
            compressed
                .inner
                .sync_all()
                .map_err(ImageError::io("cannot sync", &tmp))?;
            let digest = Digest::from_sha256(compressed.hasher);
            let dest = self.blob_path(&digest);
            std::fs::rename(&tmp, &dest).map_err(ImageError::io("cannot rename into", &dest))?;
            Ok(NewLayer {
                digest,
                diff_id,
                size: compressed.count,
            })
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

struct TreeWriter<'a, W: Write> {
    tar: tar::Builder<W>,
    /// (device, inode) of files with more than one link → the first name written.
    links: HashMap<(u64, u64), PathBuf>,
    skip: &'a [PathBuf],
    entries: u64,
}

fn cstr(p: &Path) -> Result<CString, ImageError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| ImageError::BadConfig(format!("{}: a NUL byte in the path", p.display())))
}

/// The extended attributes of `path` (not following a link) a layer may carry.
fn xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>, ImageError> {
    let c = cstr(path)?;
    let err = |what| ImageError::io(what, path)(std::io::Error::last_os_error());
    // SAFETY: llistxattr with a C string and no buffer asks for the size only.
    let n = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if n < 0 {
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOTSUP) {
            return Ok(Vec::new());
        }
        return Err(err("cannot list the extended attributes of"));
    }
    let mut names = vec![0u8; usize::try_from(n).unwrap_or(0)];
    // SAFETY: the buffer is ours and as long as the length passed.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        return Err(err("cannot list the extended attributes of"));
    }
    names.truncate(usize::try_from(n).unwrap_or(0));
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(key) = std::str::from_utf8(name) else {
            continue;
        };
        if !(key.starts_with("user.") || key == "security.capability")
            || key == "user.overlay.opaque"
            || key.starts_with("user.overlay.")
        {
            continue;
        }
        if let Some(v) = get_xattr(path, key)? {
            out.push((key.to_string(), v));
        }
    }
    out.sort();
    Ok(out)
}

/// The extended attribute `key` of `path` (not following a link), if it has one.
fn get_xattr(path: &Path, key: &str) -> Result<Option<Vec<u8>>, ImageError> {
    let c = cstr(path)?;
    let k = cstr(Path::new(key))?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: lgetxattr with C strings and a buffer we own of the length passed.
        let n =
            unsafe { libc::lgetxattr(c.as_ptr(), k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(usize::try_from(n).unwrap_or(0));
            return Ok(Some(buf));
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => return Ok(None),
            Some(libc::ERANGE) if buf.len() < 1 << 16 => buf.resize(buf.len() * 4, 0),
            _ => {
                return Err(
                    ImageError::io("cannot read an extended attribute of", path)(
                        std::io::Error::last_os_error(),
                    ),
                )
            }
        }
    }
}

/// Whether the directory `path` is an overlayfs opaque directory.
fn opaque(path: &Path) -> Result<bool, ImageError> {
    for key in ["trusted.overlay.opaque", "user.overlay.opaque"] {
        if get_xattr(path, key)?.as_deref() == Some(b"y") {
            return Ok(true);
        }
    }
    Ok(false)
}

fn werr(rel: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
    ImageError::io("cannot write the layer entry", rel.to_path_buf())
}

/// One PAX record: `LEN KEY=VALUE\n`, LEN counting itself.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + body.to_string().len();
    if len.to_string().len() != body.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

impl<W: Write> TreeWriter<'_, W> {
    fn dir(&mut self, abs: &Path, rel: &Path) -> Result<(), ImageError> {
        for name in sorted_names(abs)? {
            self.entry(&abs.join(&name), &rel.join(&name), &name)?;
        }
        Ok(())
    }

    fn header(meta: &std::fs::Metadata, kind: EntryType) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(u64::from(meta.uid()));
        h.set_gid(u64::from(meta.gid()));
        h.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
        h.set_size(0);
        h
    }

    /// The PAX header carrying `attrs` for the entry `rel`.
    fn pax(&mut self, rel: &Path, attrs: &[(String, Vec<u8>)]) -> Result<(), ImageError> {
        if attrs.is_empty() {
            return Ok(());
        }
        let mut data = Vec::new();
        for (k, v) in attrs {
            pax_record(&mut data, &format!("SCHILY.xattr.{k}"), v);
        }
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        let short: Vec<u8> = rel
            .as_os_str()
            .as_bytes()
            .iter()
            .take(80)
            .copied()
            .collect();
        let mut name = b"PaxHeaders/".to_vec();
        name.extend(short);
        h.as_old_mut().name[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
        h.set_cksum();
        self.tar.append(&h, &data[..]).map_err(werr(rel))
    }

    fn entry(&mut self, abs: &Path, rel: &Path, name: &OsStr) -> Result<(), ImageError> {
        let meta = std::fs::symlink_metadata(abs).map_err(ImageError::io("cannot inspect", abs))?;
        let ft = meta.file_type();
        self.entries = self.entries.saturating_add(1);
        if ft.is_char_device() && meta.rdev() == 0 {
            let mut wh = OsString::from(".wh.");
            wh.push(name);
            let p = rel.with_file_name(wh);
            let mut h = Self::header(&meta, EntryType::Regular);
            h.set_mode(0o600);
            return self
                .tar
                .append_data(&mut h, &p, std::io::empty())
                .map_err(werr(rel));
        }
        let skipped = self.skip.iter().any(|s| s == rel);
        if ft.is_dir() {
            if !skipped {
                let attrs = xattrs(abs)?;
                self.pax(rel, &attrs)?;
                let mut h = Self::header(&meta, EntryType::Directory);
                self.tar
                    .append_data(&mut h, rel, std::io::empty())
                    .map_err(werr(rel))?;
                if opaque(abs)? {
                    let mut h = Self::header(&meta, EntryType::Regular);
                    h.set_mode(0o600);
                    self.tar
                        .append_data(&mut h, rel.join(".wh..wh..opq"), std::io::empty())
                        .map_err(werr(rel))?;
                }
            }
            return self.dir(abs, rel);
        }
        if skipped {
            return Ok(());
        }
        if !ft.is_dir() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key).cloned() {
                let mut h = Self::header(&meta, EntryType::Link);
                return self.tar.append_link(&mut h, rel, first).map_err(werr(rel));
            }
            self.links.insert(key, rel.to_path_buf());
        }
        if ft.is_symlink() {
            let target = std::fs::read_link(abs).map_err(ImageError::io("cannot read", abs))?;
            let mut h = Self::header(&meta, EntryType::Symlink);
            h.set_mode(0o777);
            return self.tar.append_link(&mut h, rel, target).map_err(werr(rel));
        }
        if ft.is_socket() {
            log::warn!("{}: a socket is not kept in a layer", rel.display());
            return Ok(());
        }
        let attrs = xattrs(abs)?;
        self.pax(rel, &attrs)?;
        if ft.is_file() {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(abs)
                .map_err(ImageError::io("cannot open", abs))?;
            let mut h = Self::header(&meta, EntryType::Regular);
            h.set_size(meta.len());
            // A file that changes size while it is read would make a corrupt archive.
            let mut limited = std::io::Read::take(f, meta.len());
            return self
                .tar
                .append_data(&mut h, rel, &mut limited)
                .map_err(werr(rel));
        }
        let kind = if ft.is_char_device() {
            EntryType::Char
        } else if ft.is_block_device() {
            EntryType::Block
        } else {
            EntryType::Fifo
        };
        let mut h = Self::header(&meta, kind);
        if kind != EntryType::Fifo {
            let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
            h.set_device_major(major).map_err(werr(rel))?;
            h.set_device_minor(minor).map_err(werr(rel))?;
        }
        self.tar
            .append_data(&mut h, rel, std::io::empty())
            .map_err(werr(rel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_count_their_own_length() {
        for (k, v) in [("a", &b"b"[..]), ("SCHILY.xattr.user.x", &[7u8; 95][..])] {
            let mut out = Vec::new();
            pax_record(&mut out, k, v);
            let s = String::from_utf8_lossy(&out).into_owned();
            let (len, _) = s.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), out.len(), "{s:?}");
        }
    }
}
