//! Stored images written out in the formats other tools read: an OCI image layout
//! directory (`skopeo copy oci:DIR:TAG ...`, `podman load`) and a docker-archive tarball
//! (`docker load`, `podman load`). Every blob is verified against its digest on the way
//! out; the result is made under a temporary name beside its destination and renamed
//! into place whole.
//!
//! A docker-archive holds its layers as uncompressed tar, as `docker save` writes them
//! (`docker load` checks each against the config's diff ids): a compressed layer in the
//! store is decompressed, and checked against its diff id.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::digest::HashingReader;
use crate::layout::{media, Manifest};
use crate::store::MAX_BLOB;
use crate::{Digest, ImageError, Store};

fn bad(why: String) -> ImageError {
    ImageError::BadConfig(why)
}

/// The tag part of an image name (`latest` when it has none): the reference name an
/// OCI layout's index gives the image.
pub fn tag_of(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    let last = last.split('@').next().unwrap_or(last);
    match last.split_once(':') {
        Some((_, t)) if !t.is_empty() => t.to_string(),
        _ => "latest".into(),
    }
}

/// A name with a tag (`:latest` added when it has none), as a docker-archive's RepoTags
/// want; `None` for a name by digest.
fn repo_tag(name: &str) -> Option<String> {
    if name.contains('@') {
        return None;
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    Some(if last.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    })
}

/// A temporary name beside `dest`.
fn beside(dest: &Path) -> Result<PathBuf, ImageError> {
    let file = dest
        .file_name()
        .ok_or_else(|| bad(format!("{}: no file name", dest.display())))?;
    Ok(dest.with_file_name(format!(
        ".{}.tmp-{}",
        file.to_string_lossy(),
        std::process::id()
    )))
}

/// A reader of the stored blob `d` that fails at its end if the bytes do not hash to `d`.
struct Verified<R> {
    inner: Option<HashingReader<R>>,
    expected: Digest,
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(inner) = self.inner.as_mut() else {
            return Ok(0);
        };
        let n = inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            if let Some(done) = self.inner.take() {
                let actual = done.finish()?;
                if actual != self.expected {
                    return Err(std::io::Error::other(format!(
                        "blob {} changed in the store: it hashes to {actual}",
                        self.expected
                    )));
                }
            }
        }
        Ok(n)
    }
}

impl Store {
    fn open_verified(&self, d: &Digest) -> Result<Verified<std::fs::File>, ImageError> {
        let f = crate::diff::open_blob(self, d)?;
        Ok(Verified {
            inner: Some(HashingReader::new(f, MAX_BLOB)),
            expected: d.clone(),
        })
    }

    /// The manifest named `name`, its digest, bytes and the config's bytes.
    fn image_parts(&self, name: &str) -> Result<(Digest, Vec<u8>, Manifest, Vec<u8>), ImageError> {
        let md = self.resolve(name)?;
        let bytes = self.read_blob(&md)?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("manifest {md}: {e}")))?;
        let config = self.read_blob(&manifest.config.digest.parse()?)?;
        Ok((md, bytes, manifest, config))
    }

    /// Writes the image `name` as an OCI image layout at `dir` (which must not exist, or
    /// be an empty directory), its index naming it by its tag ([`tag_of`]). Returns the
    /// manifest's digest, the same as in the store.
    pub fn export_oci_layout(&self, name: &str, dir: &Path) -> Result<Digest, ImageError> {
        let (md, bytes, manifest, _) = self.image_parts(name)?;
        let tmp = beside(dir)?;
        let _ = std::fs::remove_dir_all(&tmp);
        let result = (|| {
            let blobs = tmp.join("blobs/sha256");
            std::fs::create_dir_all(&blobs).map_err(ImageError::io("cannot create", &blobs))?;
            let write = |p: &Path, b: &[u8]| {
                std::fs::write(p, b).map_err(ImageError::io("cannot write", p))
            };
            write(
                &tmp.join("oci-layout"),
                br#"{"imageLayoutVersion":"1.0.0"}"#,
            )?;
            for b in std::iter::once(&manifest.config).chain(&manifest.layers) {
                let d: Digest = b.digest.parse()?;
                let dest = blobs.join(d.hex());
                let mut out =
                    std::fs::File::create(&dest).map_err(ImageError::io("cannot create", &dest))?;
                let n = std::io::copy(&mut self.open_verified(&d)?, &mut out)
                    .map_err(ImageError::io("cannot write", &dest))?;
                if n != b.size {
                    return Err(bad(format!(
                        "blob {d} has {n} bytes, its descriptor {}",
                        b.size
                    )));
                }
                out.sync_all()
                    .map_err(ImageError::io("cannot sync", &dest))?;
            }
            write(&blobs.join(md.hex()), &bytes)?;
            let index = json!({"schemaVersion": 2, "mediaType": media::INDEX,
                "manifests": [{
                    "mediaType": manifest.media_type.as_deref().unwrap_or(media::MANIFEST),
                    "digest": md.to_string(), "size": bytes.len(),
                    "annotations": {"org.opencontainers.image.ref.name": tag_of(name)}}]});
            write(&tmp.join("index.json"), index.to_string().as_bytes())?;
            std::fs::rename(&tmp, dir).map_err(ImageError::io("cannot rename into", dir))
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result.map(|()| md)
    }

    /// Writes the image `name` as a docker-archive tarball at `tar_path` (replaced if
    /// there): `manifest.json` (Config, RepoTags, Layers), the config as `HEX.json` and
    /// each layer, uncompressed, as `DIFFID/layer.tar`. Returns the config's digest (the
    /// image id `docker load` prints).
    pub fn export_docker_archive(&self, name: &str, tar_path: &Path) -> Result<Digest, ImageError> {
        let (_, _, manifest, config) = self.image_parts(name)?;
        let cd = Digest::of(&config);
        let cfg: oci_spec::image::ImageConfiguration =
            serde_json::from_slice(&config).map_err(|e| bad(format!("image config {cd}: {e}")))?;
        let diff_ids = cfg.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers.len() {
            return Err(bad(format!(
                "image {name}: {} layers but {} diff ids",
                manifest.layers.len(),
                diff_ids.len()
            )));
        }
        let tmp = beside(tar_path)?;
        let scratch = beside(&tmp)?;
        let result = (|| {
            let file =
                std::fs::File::create(&tmp).map_err(ImageError::io("cannot create", &tmp))?;
            let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
            let terr = || ImageError::io("cannot write", tar_path);
            let header = |size: u64| {
                let mut h = tar::Header::new_ustar();
                h.set_mode(0o644);
                h.set_size(size);
                h.set_mtime(0);
                h
            };
            let mut layers = Vec::new();
            for (l, diff) in manifest.layers.iter().zip(diff_ids) {
                let d: Digest = l.digest.parse()?;
                let want: Digest = diff.parse()?;
                let path = format!("{}/layer.tar", want.hex());
                if layers.contains(&path) {
                    continue; // the same layer twice: stored once
                }
                let size = self.decompress_to(&d, &want, &scratch)?;
                let f = std::fs::File::open(&scratch)
                    .map_err(ImageError::io("cannot open", &scratch))?;
                tar.append_data(&mut header(size), &path, f)
                    .map_err(terr())?;
                layers.push(path);
            }
            let config_name = format!("{}.json", cd.hex());
            tar.append_data(&mut header(config.len() as u64), &config_name, &config[..])
                .map_err(terr())?;
            let entry = json!([{"Config": config_name,
                "RepoTags": repo_tag(name).into_iter().collect::<Vec<_>>(),
                "Layers": layers}]);
            let text = entry.to_string();
            tar.append_data(
                &mut header(text.len() as u64),
                "manifest.json",
                text.as_bytes(),
            )
            .map_err(terr())?;
            let mut w = tar.into_inner().map_err(terr())?;
            w.flush().map_err(terr())?;
            w.get_ref().sync_all().map_err(terr())?;
            drop(w);
            std::fs::rename(&tmp, tar_path).map_err(ImageError::io("cannot rename into", tar_path))
        })();
        let _ = std::fs::remove_file(&scratch);
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(|()| cd)
    }

    /// The layer blob `d` decompressed (gzip, zstd or plain tar) into `dest`, checked
    /// against its diff id `want`; returns the size.
    fn decompress_to(&self, d: &Digest, want: &Digest, dest: &Path) -> Result<u64, ImageError> {
        let mut src = BufReader::new(self.open_verified(d)?);
        let head = src.fill_buf().map_err(ImageError::Archive)?;
        let reader: Box<dyn Read + '_> = if head.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::bufread::MultiGzDecoder::new(src))
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Box::new(zstd::stream::read::Decoder::with_buffer(src).map_err(ImageError::Archive)?)
        } else {
            Box::new(src)
        };
        let mut plain = HashingReader::new(reader, MAX_BLOB);
        let mut out = std::fs::File::create(dest).map_err(ImageError::io("cannot create", dest))?;
        let n = std::io::copy(&mut plain, &mut out).map_err(ImageError::Archive)?;
        let actual = plain.finish().map_err(ImageError::Archive)?;
        if &actual != want {
            return Err(bad(format!(
                "layer {d} decompresses to {actual}, the config's diff id is {want}"
            )));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_repo_tags() {
        assert_eq!(tag_of("busybox"), "latest");
        assert_eq!(tag_of("localhost:5000/a/b:v1"), "v1");
        assert_eq!(tag_of("localhost:5000/a/b"), "latest");
        assert_eq!(
            repo_tag("localhost:5000/a/b").unwrap(),
            "localhost:5000/a/b:latest"
        );
        assert_eq!(repo_tag("a:v2").unwrap(), "a:v2");
        assert!(repo_tag("a@sha256:00").is_none());
    }
}
