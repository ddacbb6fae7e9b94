//! Unpacking one layer (a tar archive, plain, gzip or zstd) into a directory, never
//! outside it: every entry's parent is resolved inside the directory
//! (`openat2(RESOLVE_IN_ROOT)`), the entry itself is made with `*at` calls that never
//! follow a link, and `..` in a name or a hard link's target is refused.
//!
//! OCI whiteouts become overlayfs' ([`Whiteouts::Overlay`]: a `0:0` character device for
//! `.wh.NAME`, `trusted.overlay.opaque=y` for `.wh..wh..opq`), for a layer that will be
//! an overlay lower directory; or are applied to what lower layers unpacked in the same
//! directory ([`Whiteouts::Apply`], for a flat root).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use crate::digest::HashingReader;
use crate::fsops;
use crate::{Digest, ImageError};

/// What to do with OCI whiteout entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Whiteouts {
    /// Write overlayfs whiteouts (the layer is a lower directory of an overlay).
    #[default]
    Overlay,
    /// Delete what they name from the directory (layers unpacked one over the other).
    Apply,
}

/// How to unpack.
#[derive(Clone, Copy, Debug)]
pub struct UnpackOptions {
    /// Whiteout handling.
    pub whiteouts: Whiteouts,
    /// The most bytes read, compressed or not (a decompression bomb stops there).
    pub max_bytes: u64,
    /// Give entries their archive owner (root only; else the unpacking user owns all).
    pub same_owner: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            whiteouts: Whiteouts::Overlay,
            max_bytes: 64 << 30,
            // SAFETY: geteuid has no arguments.
            same_owner: unsafe { libc::geteuid() } == 0,
        }
    }
}

/// What an unpack read and made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries unpacked.
    pub entries: u64,
    /// The digest of the archive as read (compressed): the layer's blob digest.
    pub digest: Digest,
    /// The digest of the uncompressed tar: the layer's diff id.
    pub diff_id: Digest,
}

const OPAQUE: &str = ".wh..wh..opq";
const WHITEOUT: &str = ".wh.";

/// An entry's path as a clean relative path: `./` and `/` prefixes and `.` components
/// dropped, `..` refused. `None` for the root itself.
fn clean(raw: &[u8]) -> Result<Option<PathBuf>, ImageError> {
    let p = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(ImageError::BadEntry {
                    path: String::from_utf8_lossy(raw).into_owned(),
                    why: "'..' leaves the layer".into(),
                })
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// The compression of a stream, from its first bytes.
fn decoder<'a, R: BufRead + 'a>(mut r: R) -> Result<Box<dyn Read + 'a>, ImageError> {
    let head = r.fill_buf().map_err(ImageError::Archive)?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(r))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(r).map_err(ImageError::Archive)?)
    } else {
        Box::new(r)
    })
}

/// Unpacks the layer read from `reader` into `dest` (an existing directory; with
/// [`Whiteouts::Overlay`] it should be empty). Stops at the first refused entry or
/// archive error: the caller removes `dest` then (see [`crate::Store::unpack_layer`]).
pub fn unpack(
    reader: impl Read,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, ImageError> {
    let root: OwnedFd = std::fs::File::open(dest)
        .map_err(ImageError::io("cannot open layer directory", dest))?
        .into();
    let (tx, rx) = std::sync::mpsc::channel();
    let compressed = HashingReader::new(reader, opts.max_bytes).on_finish(tx);
    let dec = decoder(BufReader::new(compressed))?;
    let tar_stream = HashingReader::new(dec, opts.max_bytes);
    let mut archive = tar::Archive::new(tar_stream);
    let mut u = Unpacker {
        root: root.as_fd(),
        opts,
        made: HashSet::new(),
    };
    let mut entries = 0u64;
    for entry in archive.entries().map_err(ImageError::Archive)? {
        let mut entry = entry.map_err(ImageError::Archive)?;
        u.entry(&mut entry)?;
        entries += 1;
    }
    let diff_id = archive.into_inner().finish().map_err(ImageError::Archive)?;
    let digest = rx.try_recv().map_err(|_| {
        ImageError::Archive(std::io::Error::other("compressed stream not finished"))
    })?;
    Ok(UnpackStats {
        entries,
        digest,
        diff_id,
    })
}

struct Unpacker<'a> {
    root: BorrowedFd<'a>,
    opts: &'a UnpackOptions,
    /// What this layer made (for an opaque directory under `Whiteouts::Apply`).
    made: HashSet<PathBuf>,
}

/// A numeric header field; an empty one (only NULs and spaces) reads as 0, as Go's
/// archive/tar (Docker, podman) reads it.
fn numeric(parsed: std::io::Result<u64>, raw: &[u8]) -> Result<u64, ImageError> {
    match parsed {
        Ok(v) => Ok(v),
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        Err(e) => Err(ImageError::Archive(e)),
    }
}

fn bad(path: &Path, why: impl Into<String>) -> ImageError {
    ImageError::BadEntry {
        path: path.display().to_string(),
        why: why.into(),
    }
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, e: &mut tar::Entry<'_, R>) -> Result<(), ImageError> {
        let raw = e.path_bytes().into_owned();
        let Some(rel) = clean(&raw)? else {
            return Ok(()); // the layer's root directory itself
        };
        let name = rel
            .file_name()
            .map(OsStr::to_os_string)
            .ok_or_else(|| bad(&rel, "no name"))?;
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let parent = fsops::dir_in_root(self.root, parent_rel)?;
        let name_str = name.to_string_lossy();
        if name_str == OPAQUE {
            return self.opaque(parent.as_fd(), parent_rel);
        }
        if let Some(hidden) = name_str.strip_prefix(WHITEOUT) {
            if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.contains('/') {
                return Err(bad(&rel, "a whiteout without a name"));
            }
            return self.whiteout(parent.as_fd(), OsStr::new(hidden));
        }
        let h = e.header();
        let old = h.as_old();
        let owner = if self.opts.same_owner {
            Some((
                u32::try_from(numeric(h.uid(), &old.uid)?)
                    .map_err(|_| bad(&rel, "uid out of range"))?,
                u32::try_from(numeric(h.gid(), &old.gid)?)
                    .map_err(|_| bad(&rel, "gid out of range"))?,
            ))
        } else {
            None
        };
        let mode = u32::try_from(numeric(h.mode().map(u64::from), &old.mode)?)
            .map_err(|_| bad(&rel, "mode out of range"))?;
        let mtime = h.mtime().ok();
        let kind = h.entry_type();
        let p = parent.as_fd();
        match kind {
            EntryType::Directory => {
                if fsops::kind_at(p, &name)?.is_some_and(|k| k != libc::S_IFDIR) {
                    fsops::remove_at(p, &name)?;
                }
                let d = fsops::make_dir(p, &name)?;
                fsops::set_meta(p, &name, owner, Some(mode), None)?;
                // After the owner: chown clears security.capability.
                self.xattrs(e, d.as_fd(), &rel)?;
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                fsops::remove_at(p, &name)?;
                let mut f = fsops::create_file(p, &name)?;
                std::io::copy(e, &mut f).map_err(ImageError::Archive)?;
                fsops::set_meta(p, &name, owner, Some(mode), mtime)?;
                // After the owner: chown clears security.capability.
                self.xattrs(e, f.as_fd(), &rel)?;
                drop(f);
            }
            EntryType::Symlink => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| bad(&rel, "a symbolic link without a target"))?
                    .into_owned();
                fsops::remove_at(p, &name)?;
                // The target is data: nothing here ever follows it.
                fsops::symlink(p, &name, OsStr::from_bytes(&target))?;
                fsops::set_meta(p, &name, owner, None, mtime)?;
            }
            EntryType::Link => {
                let raw_target = e
                    .link_name_bytes()
                    .ok_or_else(|| bad(&rel, "a hard link without a target"))?
                    .into_owned();
                let target =
                    clean(&raw_target)?.ok_or_else(|| bad(&rel, "a hard link to the root"))?;
                let t = virtkit_namespaces::syscalls::openat2_in_root(
                    self.root,
                    &target,
                    libc::O_PATH | libc::O_NOFOLLOW,
                    0,
                )
                .map_err(|e| bad(&rel, format!("hard link target {}: {e}", target.display())))?;
                if fsops::kind_of(t.as_fd(), &target)? == libc::S_IFDIR {
                    return Err(bad(&rel, "a hard link to a directory"));
                }
                if target == rel {
                    return Ok(());
                }
                fsops::remove_at(p, &name)?;
                fsops::hard_link(t.as_fd(), p, &name)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let ty = match kind {
                    EntryType::Char => libc::S_IFCHR,
                    EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                // A FIFO has no device number (some writers leave the fields empty).
                let (major, minor) = if ty == libc::S_IFIFO {
                    (0, 0)
                } else {
                    (
                        h.device_major().map_err(ImageError::Archive)?.unwrap_or(0),
                        h.device_minor().map_err(ImageError::Archive)?.unwrap_or(0),
                    )
                };
                fsops::remove_at(p, &name)?;
                match fsops::mknod(p, &name, ty | (mode & 0o7777), libc::makedev(major, minor)) {
                    Ok(()) => fsops::set_meta(p, &name, owner, Some(mode), mtime)?,
                    // Without privileges a device cannot be made: skipped, as rootless
                    // engines do.
                    Err(err) if !self.opts.same_owner && ty != libc::S_IFIFO => {
                        log::warn!("skipping device {}: {err}", rel.display());
                        return Ok(());
                    }
                    Err(err) => return Err(err),
                }
            }
            EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink => {
                return Ok(());
            }
            other => {
                return Err(bad(
                    &rel,
                    format!("entry type {other:?} cannot be unpacked"),
                ))
            }
        }
        self.made.insert(rel);
        Ok(())
    }

    /// PAX `SCHILY.xattr.*` records onto the file or directory behind `fd`.
    fn xattrs<R: Read>(
        &self,
        e: &mut tar::Entry<'_, R>,
        fd: BorrowedFd<'_>,
        rel: &Path,
    ) -> Result<(), ImageError> {
        let Some(exts) = e.pax_extensions().map_err(ImageError::Archive)? else {
            return Ok(());
        };
        for ext in exts {
            let ext = ext.map_err(ImageError::Archive)?;
            let Ok(key) = ext.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                // Only the namespaces an image may carry; trusted.* and security.* other
                // than capabilities could change how overlayfs or an LSM sees the file.
                if name.starts_with("user.") || name == "security.capability" {
                    fsops::set_xattr(fd, name, ext.value_bytes())
                        .map_err(|err| bad(rel, format!("xattr {name}: {err}")))?;
                }
            }
        }
        Ok(())
    }

    fn whiteout(&mut self, parent: BorrowedFd<'_>, hidden: &OsStr) -> Result<(), ImageError> {
        fsops::remove_at(parent, hidden)?;
        if self.opts.whiteouts == Whiteouts::Overlay {
            fsops::mknod(parent, hidden, libc::S_IFCHR, 0)?;
        }
        Ok(())
    }

    fn opaque(&mut self, parent: BorrowedFd<'_>, parent_rel: &Path) -> Result<(), ImageError> {
        match self.opts.whiteouts {
            Whiteouts::Overlay => fsops::set_xattr(parent, "trusted.overlay.opaque", b"y"),
            Whiteouts::Apply => {
                // Everything below that this layer did not put there goes.
                let listing = std::fs::read_dir(fsops::fd_path(parent))
                    .map_err(ImageError::io("cannot list", parent_rel))?;
                for ent in listing.flatten() {
                    let n = ent.file_name();
                    if !self.made.contains(&parent_rel.join(&n)) {
                        fsops::remove_at(parent, &n)?;
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned_and_parent_components_refused() {
        assert_eq!(clean(b"./a/b").unwrap(), Some(PathBuf::from("a/b")));
        assert_eq!(
            clean(b"/etc/passwd").unwrap(),
            Some(PathBuf::from("etc/passwd"))
        );
        assert_eq!(clean(b"./").unwrap(), None);
        assert_eq!(clean(b"a/./b/").unwrap(), Some(PathBuf::from("a/b")));
        assert!(clean(b"../x").is_err());
        assert!(clean(b"a/../../x").is_err());
    }
}
