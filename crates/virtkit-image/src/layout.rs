//! Images in and out of the formats other tools write: an OCI image layout directory
//! (`skopeo copy ... oci:DIR`, `podman save --format oci-dir`) and a docker-archive
//! tarball (`docker save`, `podman save --format docker-archive`). Every blob goes
//! through [`Store::put_blob`], so each is verified against its digest (and size).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Digest, ImageError, Store};

/// The media types this crate writes and reads.
pub mod media {
    /// An OCI image manifest.
    pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// An OCI image index.
    pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// An OCI image config.
    pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// An uncompressed layer.
    pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    /// Docker's schema 2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker's manifest list.
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
}

/// A content descriptor (the fields this crate uses).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Descriptor {
    /// The media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// `sha256:...`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// The platform (in an index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations (`org.opencontainers.image.ref.name` in a layout's index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<HashMap<String, String>>,
}

impl Descriptor {
    /// A descriptor of `size` bytes at `digest`, no platform or annotations.
    pub fn new(media_type: &str, digest: &Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: digest.to_string(),
            size,
            platform: None,
            annotations: None,
        }
    }
}

/// An index entry's platform.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    /// `amd64`, ...
    pub architecture: String,
    /// `linux`, ...
    pub os: String,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// The manifest's media type, when it says.
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// The layers, lowest first.
    pub layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

fn bad(why: String) -> ImageError {
    ImageError::BadConfig(why)
}

fn digest_of(d: &Descriptor) -> Result<Digest, ImageError> {
    d.digest.parse()
}

/// What an import brought into the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imported {
    /// The manifest's digest (what the name points at).
    pub manifest: Digest,
    /// The manifest.
    pub parsed: Manifest,
}

impl Store {
    /// Stores an OCI manifest of `config` and `layers` (already in the store) and names
    /// it `name`.
    pub(crate) fn put_manifest(
        &self,
        config: Descriptor,
        layers: Vec<Descriptor>,
        name: &str,
    ) -> Result<Imported, ImageError> {
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media::MANIFEST.into()),
            config,
            layers,
        };
        let bytes = serde_json::to_vec(&manifest).map_err(|e| bad(e.to_string()))?;
        let md = Digest::of(&bytes);
        self.put_blob(&bytes[..], &md)?;
        self.tag(name, &md)?;
        Ok(Imported {
            manifest: md,
            parsed: manifest,
        })
    }

    /// The manifest `d`, parsed.
    pub fn manifest(&self, d: &Digest) -> Result<Manifest, ImageError> {
        serde_json::from_slice(&self.read_blob(d)?).map_err(|e| bad(format!("manifest {d}: {e}")))
    }

    /// Copies the blob `d` (of `size` bytes) from `src` into the store, verified.
    fn put_file(&self, src: &Path, d: &Digest, size: u64) -> Result<(), ImageError> {
        if self.has_blob(d) {
            return Ok(());
        }
        let f = std::fs::File::open(src).map_err(ImageError::io("cannot open", src))?;
        let got = self.put_blob(f.take(size.saturating_add(1)), d)?;
        if got != size {
            let _ = std::fs::remove_file(self.blob_path(d));
            return Err(bad(format!(
                "blob {d} has {got} bytes, its descriptor says {size}"
            )));
        }
        Ok(())
    }

    /// Imports the image `reference` (its `org.opencontainers.image.ref.name`; the only
    /// image when `None`) of the OCI image layout at `dir`, names it `name`. An index
    /// entry that is itself an index gives its linux/amd64 manifest.
    pub fn import_oci_layout(
        &self,
        dir: &Path,
        reference: Option<&str>,
        name: &str,
    ) -> Result<Imported, ImageError> {
        let layout = std::fs::read_to_string(dir.join("oci-layout")).map_err(ImageError::io(
            "not an OCI image layout (no oci-layout file)",
            dir,
        ))?;
        if !layout.contains("\"imageLayoutVersion\"") {
            return Err(bad(format!(
                "{}: oci-layout has no imageLayoutVersion",
                dir.display()
            )));
        }
        let blob_file = |d: &Digest| dir.join("blobs/sha256").join(d.hex());
        let index: Index = serde_json::from_slice(
            &std::fs::read(dir.join("index.json"))
                .map_err(ImageError::io("cannot read", dir.join("index.json")))?,
        )
        .map_err(|e| bad(format!("{}/index.json: {e}", dir.display())))?;
        let ref_of = |d: &Descriptor| {
            d.annotations
                .as_ref()
                .and_then(|a| a.get("org.opencontainers.image.ref.name"))
                .cloned()
        };
        let chosen = match reference {
            Some(r) => index
                .manifests
                .iter()
                .find(|d| ref_of(d).as_deref() == Some(r)),
            None if index.manifests.len() == 1 => index.manifests.first(),
            None => None,
        }
        .ok_or_else(|| {
            let refs: Vec<String> = index.manifests.iter().filter_map(ref_of).collect();
            bad(format!(
                "no image {reference:?} in {} (it has: {})",
                dir.display(),
                refs.join(", ")
            ))
        })?
        .clone();
        let mut desc = chosen;
        if desc.media_type == media::INDEX || desc.media_type == media::DOCKER_LIST {
            let d = digest_of(&desc)?;
            self.put_file(&blob_file(&d), &d, desc.size)?;
            let inner: Index = serde_json::from_slice(&self.read_blob(&d)?)
                .map_err(|e| bad(format!("index {d}: {e}")))?;
            desc = inner
                .manifests
                .into_iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
                })
                .ok_or_else(|| bad(format!("index {d} has no linux/amd64 image")))?;
        }
        let md = digest_of(&desc)?;
        self.put_file(&blob_file(&md), &md, desc.size)?;
        let manifest = self.manifest(&md)?;
        for b in std::iter::once(&manifest.config).chain(&manifest.layers) {
            let d = digest_of(b)?;
            self.put_file(&blob_file(&d), &d, b.size)?;
        }
        self.tag(name, &md)?;
        Ok(Imported {
            manifest: md,
            parsed: manifest,
        })
    }

    /// Imports the first image of the docker-archive tarball `archive` (what `docker save`
    /// writes), named `name` or, when `None`, by its first RepoTag. Its layers are stored
    /// as they are (uncompressed tar) under an OCI manifest made for them.
    pub fn import_docker_archive(
        &self,
        archive: &Path,
        name: Option<&str>,
    ) -> Result<Imported, ImageError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            layers: Vec<String>,
        }
        let open = || std::fs::File::open(archive).map_err(ImageError::io("cannot open", archive));
        // First pass: manifest.json.
        let mut entries: Option<Vec<Entry>> = None;
        let mut tar = tar::Archive::new(open()?);
        for e in tar.entries().map_err(ImageError::Archive)? {
            let mut e = e.map_err(ImageError::Archive)?;
            if e.path_bytes().as_ref() == b"manifest.json" {
                let mut text = Vec::new();
                (&mut e)
                    .take(16 << 20)
                    .read_to_end(&mut text)
                    .map_err(ImageError::Archive)?;
                entries = Some(
                    serde_json::from_slice(&text)
                        .map_err(|e| bad(format!("manifest.json: {e}")))?,
                );
                break;
            }
        }
        let entry = entries.and_then(|v| v.into_iter().next()).ok_or_else(|| {
            bad(format!(
                "{}: no manifest.json with an image (not a docker-archive)",
                archive.display()
            ))
        })?;
        // Second pass: the config and the layers, each stored under the digest of its bytes.
        let mut found: HashMap<String, (Digest, u64)> = HashMap::new();
        let wanted: Vec<&String> = std::iter::once(&entry.config)
            .chain(&entry.layers)
            .collect();
        let mut tar = tar::Archive::new(open()?);
        for e in tar.entries().map_err(ImageError::Archive)? {
            let e = e.map_err(ImageError::Archive)?;
            let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            if wanted.contains(&&path) && !found.contains_key(&path) {
                let (d, n) = self.put_blob_computed(e)?;
                found.insert(path, (d, n));
            }
        }
        let get = |p: &String| {
            found
                .get(p)
                .cloned()
                .ok_or_else(|| bad(format!("{}: {p} is missing", archive.display())))
        };
        let (cd, cs) = get(&entry.config)?;
        let mut layers = Vec::new();
        for l in &entry.layers {
            let (d, s) = get(l)?;
            layers.push(Descriptor::new(media::LAYER_TAR, &d, s));
        }
        let tag = name
            .map(str::to_string)
            .or_else(|| entry.repo_tags.and_then(|t| t.into_iter().next()))
            .ok_or_else(|| bad("the archive's image has no RepoTags: give it a name".into()))?;
        self.put_manifest(Descriptor::new(media::CONFIG, &cd, cs), layers, &tag)
    }
}
