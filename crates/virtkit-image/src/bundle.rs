//! An OCI runtime bundle made from a stored image: `DIR/config.json` (the image config
//! merged with the user's flags, [`crate::runtime_spec`]) and `DIR/rootfs`, an overlayfs
//! over the image's unpacked layers with the container's own upper directory, so the
//! layers are shared by every container of the image and never written.

use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::Spec;

use crate::config::{runtime_spec, RunOptions};
use crate::layout::Descriptor;
use crate::unpack::{UnpackOptions, Whiteouts};
use crate::{Digest, ImageError, Store};

/// The longest overlayfs option string the kernel takes (one page).
const MAX_MOUNT_DATA: usize = 4095;

/// A bundle on disk with its root mounted; [`Bundle::remove`] unmounts and deletes it.
#[derive(Debug)]
pub struct Bundle {
    /// The bundle directory (`config.json`, `rootfs`, `upper`, `work`).
    pub dir: PathBuf,
    /// The mounted root.
    pub rootfs: PathBuf,
}

fn cpath(p: &Path) -> Result<std::ffi::CString, ImageError> {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| ImageError::BadConfig(format!("{}: a NUL byte in the path", p.display())))
}

/// Mounts an overlayfs at `target`: `lowers` top first, `upper` and `work` its own.
fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), ImageError> {
    let join = |p: &Path| {
        let s = p.display().to_string();
        if s.contains([',', ':']) {
            Err(ImageError::BadConfig(format!(
                "{s}: ',' or ':' in a layer path"
            )))
        } else {
            Ok(s)
        }
    };
    let lower = lowers
        .iter()
        .map(|l| join(l))
        .collect::<Result<Vec<_>, _>>()?
        .join(":");
    let data = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        join(upper)?,
        join(work)?
    );
    if data.len() > MAX_MOUNT_DATA {
        return Err(ImageError::BadConfig(format!(
            "{} layers make an overlayfs option string of {} bytes (the kernel takes {MAX_MOUNT_DATA})",
            lowers.len(),
            data.len()
        )));
    }
    let (src, tgt, ty, d) = (
        cpath(Path::new("overlay"))?,
        cpath(target)?,
        cpath(Path::new("overlay"))?,
        cpath(Path::new(&data))?,
    );
    // SAFETY: mount with valid C strings; the kernel copies them.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            ty.as_ptr(),
            0,
            d.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(ImageError::io("cannot mount overlayfs at", target)(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

impl Store {
    /// Makes the bundle `dir` (which must not exist) for a container of the image `name`:
    /// its layers unpacked (once per store), an overlayfs root, and a `config.json` from
    /// `base` (the runtime's defaults) merged with the image config and `run`. Nothing is
    /// left when it fails.
    pub fn create_bundle(
        &self,
        name: &str,
        dir: &Path,
        base: Spec,
        run: &RunOptions,
    ) -> Result<Bundle, ImageError> {
        let manifest = self.manifest(&self.resolve(name)?)?;
        let config: ImageConfiguration = {
            let d: Digest = manifest.config.digest.parse()?;
            serde_json::from_slice(&self.read_blob(&d)?)
                .map_err(|e| ImageError::BadConfig(format!("image config {d}: {e}")))?
        };
        if manifest.layers.is_empty() {
            return Err(ImageError::BadConfig(format!("image {name} has no layers")));
        }
        self.bundle_from_parts(&manifest.layers, &config, dir, base, run)
    }

    /// [`Store::create_bundle`] for an image given by its layers and config (an image
    /// being built). With no layers the root starts empty.
    pub(crate) fn bundle_from_parts(
        &self,
        layers: &[Descriptor],
        config: &ImageConfiguration,
        dir: &Path,
        base: Spec,
        run: &RunOptions,
    ) -> Result<Bundle, ImageError> {
        let opts = UnpackOptions {
            whiteouts: Whiteouts::Overlay,
            ..UnpackOptions::default()
        };
        let mut lowers = Vec::new();
        for l in layers.iter().rev() {
            lowers.push(self.unpack_layer(&l.digest.parse()?, &opts)?);
        }
        std::fs::create_dir(dir).map_err(ImageError::io("cannot create the bundle", dir))?;
        let bundle = Bundle {
            dir: dir.to_path_buf(),
            rootfs: dir.join("rootfs"),
        };
        let made = (|| {
            for d in ["rootfs", "upper", "work"] {
                std::fs::create_dir(dir.join(d))
                    .map_err(ImageError::io("cannot create", dir.join(d)))?;
            }
            if lowers.is_empty() {
                // overlayfs needs a lower directory: an empty one.
                let empty = dir.join("empty");
                std::fs::create_dir(&empty).map_err(ImageError::io("cannot create", &empty))?;
                lowers.push(empty);
            }
            mount_overlay(
                &lowers,
                &dir.join("upper"),
                &dir.join("work"),
                &bundle.rootfs,
            )?;
            let mut spec = runtime_spec(base, config, &bundle.rootfs, run)?;
            if let Some(mut root) = spec.root().clone() {
                root.set_path(PathBuf::from("rootfs"));
                root.set_readonly(Some(run.read_only));
                spec.set_root(Some(root));
            }
            let text = serde_json::to_vec_pretty(&spec)
                .map_err(|e| ImageError::BadConfig(e.to_string()))?;
            let p = dir.join("config.json");
            std::fs::write(&p, text).map_err(ImageError::io("cannot write", &p))
        })();
        match made {
            Ok(()) => Ok(bundle),
            Err(e) => {
                let _ = bundle.remove();
                Err(e)
            }
        }
    }
}

impl Bundle {
    /// Unmounts the root and deletes the bundle (the container's changes with it).
    pub fn remove(self) -> Result<(), ImageError> {
        self.unmount()?;
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ImageError::io("cannot remove", &self.dir)(e)),
        }
    }

    /// Unmounts the root (if mounted), leaving the directories: `upper` then holds
    /// the container's changes, still.
    pub(crate) fn unmount(&self) -> Result<(), ImageError> {
        let c = cpath(&self.rootfs)?;
        // SAFETY: umount2 with a valid C string; EINVAL means it was not mounted.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOENT) {
                return Err(ImageError::io("cannot unmount", &self.rootfs)(e));
            }
        }
        Ok(())
    }
}
