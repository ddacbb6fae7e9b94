//! Pushing a stored image to an OCI distribution registry with `oci-client` (the client,
//! TLS and credentials of [`crate::registry`]): each layer and the config unless the
//! registry has it already, streamed from the store and checked against its digest
//! before the upload is committed, then the manifest, byte for byte as stored (so its
//! digest stays the same), under the destination's tag (or digest).

use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::Digest as _;

use crate::layout::{media, Manifest};
use crate::registry::{auth, client, io_runtime, parse_reference, registry_err, RegistryOptions};
use crate::{Digest, ImageError, Store};

/// The bytes read from the store per chunk sent.
const CHUNK: usize = 4 << 20;

/// What a push sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// The manifest's digest (as in the store).
    pub manifest: Digest,
    /// Blobs uploaded.
    pub uploaded: Vec<Digest>,
    /// Blobs the registry already had.
    pub skipped: Vec<Digest>,
}

/// The blob file `d` as a stream of chunks that ends in an error, not the end, when its
/// bytes do not hash to `d` (so the upload is never committed).
fn blob_stream(
    store: &Store,
    d: &Digest,
) -> Result<
    impl futures_util::Stream<Item = Result<bytes::Bytes, OciDistributionError>> + Send + 'static,
    ImageError,
> {
    let file = crate::diff::open_blob(store, d)?;
    let state = Some((file, sha2::Sha256::new(), d.clone()));
    Ok(futures_util::stream::unfold(state, |state| async move {
        let (mut file, mut hasher, want) = state?;
        let mut buf = vec![0u8; CHUNK];
        let n = match std::io::Read::read(&mut file, &mut buf) {
            Ok(n) => n,
            Err(e) => return Some((Err(OciDistributionError::IoError(e)), None)),
        };
        if n == 0 {
            let got = Digest::from_sha256(hasher);
            if got != want {
                let why = format!("blob {want} changed in the store: it hashes to {got}");
                return Some((Err(OciDistributionError::GenericError(Some(why))), None));
            }
            return None;
        }
        buf.truncate(n);
        hasher.update(&buf);
        Some((Ok(bytes::Bytes::from(buf)), Some((file, hasher, want))))
    }))
}

impl Store {
    /// Pushes the stored image `name` to `dest` (`registry/repository[:tag|@digest]`).
    /// HTTP or HTTPS as for [`Store::pull`]. Blobs the registry has are not sent again.
    pub fn push(
        &self,
        name: &str,
        dest: &str,
        opts: &RegistryOptions,
    ) -> Result<Pushed, ImageError> {
        let md = self.resolve(name)?;
        let bytes = self.read_blob(&md)?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::BadConfig(format!("manifest {md}: {e}")))?;
        let reference = parse_reference(dest)?;
        if let Some(d) = reference.digest() {
            if d != md.to_string() {
                return Err(ImageError::BadConfig(format!(
                    "{dest} names digest {d}, but {name} is {md}"
                )));
            }
        }
        let client = client(&reference, opts)?;
        let auth = auth(opts);
        let rt = io_runtime()?;
        rt.block_on(self.push_async(&client, &reference, &auth, md, bytes, &manifest))
    }

    async fn push_async(
        &self,
        client: &Client,
        reference: &Reference,
        auth: &RegistryAuth,
        md: Digest,
        bytes: Vec<u8>,
        manifest: &Manifest,
    ) -> Result<Pushed, ImageError> {
        client
            .auth(reference, auth, RegistryOperation::Push)
            .await
            .map_err(|e| registry_err(&format!("authenticating to push {reference}"), e))?;
        let mut pushed = Pushed {
            manifest: md.clone(),
            uploaded: Vec::new(),
            skipped: Vec::new(),
        };
        for b in manifest
            .layers
            .iter()
            .chain(std::iter::once(&manifest.config))
        {
            let d: Digest = b.digest.parse()?;
            if pushed.uploaded.contains(&d) || pushed.skipped.contains(&d) {
                continue;
            }
            let have = client
                .blob_exists(reference, &d.to_string())
                .await
                .map_err(|e| registry_err(&format!("checking blob {d}"), e))?;
            if have {
                pushed.skipped.push(d);
                continue;
            }
            let stream = blob_stream(self, &d)?;
            client
                .push_blob_stream(reference, stream, &d.to_string(), Some(b.size))
                .await
                .map_err(|e| registry_err(&format!("pushing blob {d}"), e))?;
            pushed.uploaded.push(d);
        }
        let content_type = manifest.media_type.as_deref().unwrap_or(media::MANIFEST);
        let ct = http::HeaderValue::from_str(content_type)
            .map_err(|e| registry_err(&format!("media type {content_type:?}"), e))?;
        client
            .push_manifest_raw(reference, bytes, ct)
            .await
            .map_err(|e| registry_err(&format!("pushing the manifest to {reference}"), e))?;
        Ok(pushed)
    }
}
