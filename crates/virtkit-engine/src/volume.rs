//! Named volumes (`volume create/ls/rm`, kept under `volumes/NAME/_data` and surviving
//! the containers that use them) and `-v` specs.

use std::path::PathBuf;

use crate::create::valid_name;
use crate::{Engine, EngineError};

impl Engine {
    fn volume_dir(&self, name: &str) -> Result<PathBuf, EngineError> {
        if !valid_name(name) {
            return Err(EngineError::BadOption(format!(
                "invalid volume name {name:?}: letters, digits, '_', '.', '-'"
            )));
        }
        Ok(self.root.join("volumes").join(name))
    }

    /// Creates the named volume `name`.
    pub fn volume_create(&self, name: &str) -> Result<PathBuf, EngineError> {
        let d = self.volume_dir(name)?;
        if d.exists() {
            return Err(EngineError::BadOption(format!(
                "volume {name:?} already exists"
            )));
        }
        let data = d.join("_data");
        std::fs::create_dir_all(&data).map_err(EngineError::io("cannot create", &data))?;
        Ok(data)
    }

    /// The named volumes, sorted.
    pub fn volumes(&self) -> Result<Vec<String>, EngineError> {
        let d = self.root.join("volumes");
        let mut names: Vec<String> = std::fs::read_dir(&d)
            .map_err(EngineError::io("cannot list", &d))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Removes the named volume `name` and its data; refused while a container uses it.
    pub fn volume_remove(&self, name: &str) -> Result<(), EngineError> {
        let d = self.volume_dir(name)?;
        if !d.exists() {
            return Err(EngineError::BadOption(format!("no such volume: {name}")));
        }
        let data = d.join("_data");
        for r in self.list()? {
            let cfg = self.dir(&r.id).join("bundle").join("config.json");
            let text = std::fs::read_to_string(&cfg).unwrap_or_default();
            if text.contains(&format!("\"{}\"", data.display())) {
                return Err(EngineError::BadOption(format!(
                    "volume {name} is in use by container {}",
                    r.name
                )));
            }
        }
        std::fs::remove_dir_all(&d).map_err(EngineError::io("cannot remove", &d))
    }

    /// `-v SPEC`: `HOST_PATH:DST[:ro|rw]` or `VOLUME:DST[:ro|rw]` (a named volume is made
    /// when missing, as Docker does).
    pub fn bind(&self, spec: &str) -> Result<virtkit_image::Bind, EngineError> {
        let parts: Vec<&str> = spec.split(':').collect();
        let (src, dst, ro) = match parts.as_slice() {
            [s, d] => (*s, *d, false),
            [s, d, "ro"] => (*s, *d, true),
            [s, d, "rw"] => (*s, *d, false),
            _ => {
                return Err(EngineError::BadOption(format!(
                    "-v {spec}: expected SOURCE:DESTINATION[:ro|rw]"
                )))
            }
        };
        if !dst.starts_with('/') {
            return Err(EngineError::BadOption(format!(
                "-v {spec}: the destination must be an absolute path"
            )));
        }
        let source = if src.starts_with('/') {
            let p = PathBuf::from(src);
            if !p.exists() {
                return Err(EngineError::BadOption(format!(
                    "-v {spec}: {src} does not exist"
                )));
            }
            p
        } else {
            let d = self.volume_dir(src)?.join("_data");
            std::fs::create_dir_all(&d).map_err(EngineError::io("cannot create", &d))?;
            d
        };
        Ok(virtkit_image::Bind {
            source,
            destination: dst.to_string(),
            read_only: ro,
        })
    }
}
