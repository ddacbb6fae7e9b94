//! Pulling images from an OCI distribution registry (Docker Registry v2, the CNCF
//! distribution, a cloud registry) with the `oci-client` crate: by tag or digest, an
//! image index resolved to linux/amd64, OCI and Docker schema 2 manifests, every blob
//! streamed into the store, verified, resumed where an earlier pull stopped.
//!
//! HTTP or HTTPS as Docker and podman choose: a registry on the loopback (`localhost`,
//! `127.0.0.0/8`, `[::1]`) is spoken to in plain HTTP unless a CA or `tls_verify` is
//! given; any other needs HTTPS unless `tls_verify` is `Some(false)`.

use std::path::PathBuf;

use futures_util::StreamExt;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::layout::{media, Imported, Manifest};
use crate::{Digest, ImageError, Store};

/// How to reach a registry.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// `None`: HTTPS, except plain HTTP on the loopback; `Some(true)`: HTTPS with
    /// verification everywhere; `Some(false)`: plain HTTP (podman's `--tls-verify=false`).
    pub tls_verify: Option<bool>,
    /// A PEM file with the CA that signed the registry's certificate.
    pub ca_file: Option<PathBuf>,
    /// User name and password (HTTP basic auth, or the token exchange that needs them).
    pub credentials: Option<(String, String)>,
}

pub(crate) fn registry_err(what: &str, e: impl std::fmt::Display) -> ImageError {
    ImageError::Registry(format!("{what}: {e}"))
}

/// Whether `host[:port]` is on the loopback.
fn loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A client for the registry of `reference`, HTTP or HTTPS as `opts` and the loopback rule say.
pub(crate) fn client(reference: &Reference, opts: &RegistryOptions) -> Result<Client, ImageError> {
    let registry = reference.resolve_registry().to_string();
    let http = match opts.tls_verify {
        Some(false) => true,
        Some(true) => false,
        None => loopback(&registry) && opts.ca_file.is_none(),
    };
    let mut cfg = ClientConfig {
        protocol: if http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        read_timeout: Some(std::time::Duration::from_secs(60)),
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        ..ClientConfig::default()
    };
    if let Some(ca) = &opts.ca_file {
        let data = std::fs::read(ca).map_err(ImageError::io("cannot read CA", ca))?;
        cfg.extra_root_certificates.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data,
        });
    }
    Ok(Client::new(cfg))
}

/// The credentials of `opts` for oci-client.
pub(crate) fn auth(opts: &RegistryOptions) -> RegistryAuth {
    match &opts.credentials {
        Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
        None => RegistryAuth::Anonymous,
    }
}

/// The single-threaded runtime a pull or push runs its requests on.
pub(crate) fn io_runtime() -> Result<tokio::runtime::Runtime, ImageError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| registry_err("cannot start the I/O runtime", e))
}

/// An image reference parsed (`registry/repository[:tag|@digest]`).
pub(crate) fn parse_reference(image: &str) -> Result<Reference, ImageError> {
    image
        .parse()
        .map_err(|e| ImageError::BadConfig(format!("image reference {image:?}: {e}")))
}

const ACCEPT: [&str; 4] = [
    media::MANIFEST,
    media::INDEX,
    media::DOCKER_MANIFEST,
    media::DOCKER_LIST,
];

#[derive(serde::Deserialize)]
struct Probe {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<crate::layout::Descriptor>>,
}

impl Store {
    /// Pulls `image` (`registry/repository[:tag|@digest]`) into the store and names it
    /// `image`. Blobs already stored are not fetched again.
    pub fn pull(&self, image: &str, opts: &RegistryOptions) -> Result<Imported, ImageError> {
        let reference = parse_reference(image)?;
        let client = client(&reference, opts)?;
        let auth = auth(opts);
        let rt = io_runtime()?;
        let imported = rt.block_on(self.pull_async(&client, &reference, &auth))?;
        self.tag(image, &imported.manifest)?;
        Ok(imported)
    }

    async fn manifest_bytes(
        &self,
        client: &Client,
        reference: &Reference,
        auth: &RegistryAuth,
        expected: Option<&Digest>,
    ) -> Result<(Vec<u8>, Digest), ImageError> {
        let (bytes, _) = client
            .pull_manifest_raw(reference, auth, &ACCEPT)
            .await
            .map_err(|e| registry_err(&format!("manifest of {reference}"), e))?;
        let bytes = bytes.to_vec();
        let actual = Digest::of(&bytes);
        let wanted = match (expected, reference.digest()) {
            (Some(d), _) => Some(d.clone()),
            (None, Some(d)) => Some(d.parse()?),
            (None, None) => None,
        };
        if let Some(w) = wanted.filter(|w| *w != actual) {
            return Err(ImageError::DigestMismatch {
                expected: w,
                actual,
            });
        }
        Ok((bytes, actual))
    }

    async fn pull_async(
        &self,
        client: &Client,
        reference: &Reference,
        auth: &RegistryAuth,
    ) -> Result<Imported, ImageError> {
        let (mut bytes, mut digest) = self.manifest_bytes(client, reference, auth, None).await?;
        let probe: Probe = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::BadConfig(format!("manifest of {reference}: {e}")))?;
        let is_index = probe.manifests.is_some()
            || matches!(
                probe.media_type.as_deref(),
                Some(media::INDEX | media::DOCKER_LIST)
            );
        if is_index {
            let pick = probe
                .manifests
                .unwrap_or_default()
                .into_iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
                })
                .ok_or_else(|| {
                    ImageError::BadConfig(format!("{reference} has no linux/amd64 image"))
                })?;
            let d: Digest = pick.digest.parse()?;
            let by_digest = Reference::with_digest(
                reference.registry().to_string(),
                reference.repository().to_string(),
                d.to_string(),
            );
            (bytes, digest) = self
                .manifest_bytes(client, &by_digest, auth, Some(&d))
                .await?;
        }
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::BadConfig(format!("manifest {digest}: {e}")))?;
        for b in std::iter::once(&manifest.config).chain(&manifest.layers) {
            let d: Digest = b.digest.parse()?;
            self.pull_blob(client, reference, &d, b.size).await?;
        }
        self.put_blob(&bytes[..], &digest)?;
        Ok(Imported {
            manifest: digest,
            parsed: manifest,
        })
    }

    /// Fetches the blob `d` of `size` bytes unless stored, resuming a partial one.
    async fn pull_blob(
        &self,
        client: &Client,
        reference: &Reference,
        d: &Digest,
        size: u64,
    ) -> Result<(), ImageError> {
        if self.has_blob(d) {
            return Ok(());
        }
        let mut w = self.blob_writer(d)?;
        if w.done() {
            return Ok(()); // another pull stored it while this one waited for the lock
        }
        if w.offset() > size {
            w.restart()?;
        }
        let digest = d.to_string();
        let mut stream = if w.offset() > 0 && w.offset() < size {
            match client
                .pull_blob_stream_partial(reference, &digest.as_str(), w.offset(), None)
                .await
                .map_err(|e| registry_err(&format!("blob {d}"), e))?
            {
                oci_client::client::BlobResponse::Partial(s) => s.stream,
                oci_client::client::BlobResponse::Full(s) => {
                    w.restart()?;
                    s.stream
                }
            }
        } else if w.offset() == size {
            // Everything is there already: only the check is left.
            futures_util::stream::empty().boxed()
        } else {
            client
                .pull_blob_stream(reference, &digest.as_str())
                .await
                .map_err(|e| registry_err(&format!("blob {d}"), e))?
                .stream
        };
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| registry_err(&format!("blob {d}"), e))?;
            w.write(&chunk)?;
            if w.offset() > size {
                return Err(ImageError::BadConfig(format!(
                    "blob {d} is larger than the {size} bytes its descriptor says"
                )));
            }
        }
        if w.offset() != size {
            return Err(ImageError::BadConfig(format!(
                "blob {d} ended after {} of its {size} bytes (the next pull resumes it)",
                w.offset()
            )));
        }
        w.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_recognised() {
        for r in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(loopback(r), "{r}");
        }
        for r in [
            "registry.example:5000",
            "10.0.0.1:5000",
            "docker.io",
            "[2001:db8::1]:443",
        ] {
            assert!(!loopback(r), "{r}");
        }
    }
}
