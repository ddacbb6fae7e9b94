//! Image names in a store: `ROOT/refs.json`, name → manifest digest, updated under an
//! exclusive `flock` and replaced atomically (a temporary file renamed over it).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::AsRawFd;

use crate::{Digest, ImageError, Store};

/// Reads the names (empty when the file does not exist yet).
fn read(store: &Store) -> Result<BTreeMap<String, String>, ImageError> {
    let p = store.root().join("refs.json");
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| ImageError::BadConfig(format!("{}: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(ImageError::io("cannot read", &p)(e)),
    }
}

/// Runs `f` on the names with the store's lock held, writing them back when it changed.
fn update<T>(
    store: &Store,
    f: impl FnOnce(&mut BTreeMap<String, String>) -> Result<T, ImageError>,
) -> Result<T, ImageError> {
    let lock_path = store.root().join("refs.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(ImageError::io("cannot open", &lock_path))?;
    // SAFETY: flock on a file we own; released when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(ImageError::io("cannot lock", &lock_path)(
            std::io::Error::last_os_error(),
        ));
    }
    let mut refs = read(store)?;
    let before = refs.clone();
    let out = f(&mut refs)?;
    if refs != before {
        let p = store.root().join("refs.json");
        let tmp = store
            .root()
            .join(format!("refs.json.{}", std::process::id()));
        let mut file =
            std::fs::File::create(&tmp).map_err(ImageError::io("cannot create", &tmp))?;
        let text =
            serde_json::to_vec_pretty(&refs).map_err(|e| ImageError::BadConfig(e.to_string()))?;
        file.write_all(&text)
            .and_then(|()| file.sync_all())
            .map_err(ImageError::io("cannot write", &tmp))?;
        std::fs::rename(&tmp, &p).map_err(ImageError::io("cannot rename into", &p))?;
    }
    Ok(out)
}

impl Store {
    /// Names `manifest` as `name` (replacing what the name pointed at).
    pub fn tag(&self, name: &str, manifest: &Digest) -> Result<(), ImageError> {
        if name.is_empty()
            || name.len() > 255
            || name.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ImageError::BadConfig(format!("image name {name:?}")));
        }
        update(self, |r| {
            r.insert(name.to_string(), manifest.to_string());
            Ok(())
        })
    }

    /// The manifest digest named `name`.
    pub fn resolve(&self, name: &str) -> Result<Digest, ImageError> {
        read(self)?
            .get(name)
            .ok_or_else(|| ImageError::BadConfig(format!("no image named {name:?}")))?
            .parse()
    }

    /// Every name and its manifest digest.
    pub fn images(&self) -> Result<Vec<(String, Digest)>, ImageError> {
        read(self)?
            .into_iter()
            .map(|(n, d)| Ok((n, d.parse()?)))
            .collect()
    }

    /// Removes the name `name`; its blobs stay until [`Store::prune`].
    pub fn untag(&self, name: &str) -> Result<Digest, ImageError> {
        update(self, |r| {
            r.remove(name)
                .ok_or_else(|| ImageError::BadConfig(format!("no image named {name:?}")))?
                .parse()
        })
    }
}

impl Store {
    /// Every blob a named image needs: its manifest, config and layers.
    pub fn referenced(&self) -> Result<std::collections::HashSet<Digest>, ImageError> {
        let mut keep = std::collections::HashSet::new();
        for (_, m) in self.images()? {
            let manifest = self.manifest(&m)?;
            keep.insert(m);
            for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
                keep.insert(d.digest.parse()?);
            }
        }
        Ok(keep)
    }
}
