//! New images from old ones: [`Store::commit`] (a container's changes as a layer on top
//! of its image, `docker commit`), and the image being made by a build
//! ([`ImageDraft`]): a config kept as JSON (so fields this crate does not know survive),
//! the layers' descriptors, a new history entry for every step.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::diff::{NewLayer, LAYER_GZIP};
use crate::layout::{media, Descriptor, Imported};
use crate::{Digest, ImageError, Store};

/// What `docker commit --change`/`-m`/`-a` set on the new image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitChanges {
    /// A new Cmd.
    pub cmd: Option<Vec<String>>,
    /// A new Entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=VALUE` entries added to Env (a key already there is replaced).
    pub env: Vec<String>,
    /// The history entry's comment (`-m`).
    pub comment: Option<String>,
    /// The image's author (`-a`).
    pub author: Option<String>,
}

/// An image being made: its config (JSON) and its layers' descriptors.
#[derive(Clone, Debug)]
pub struct ImageDraft {
    config: Value,
    layers: Vec<Descriptor>,
}

fn bad(why: String) -> ImageError {
    ImageError::BadConfig(why)
}

/// Docker's media types for layers and configs, named as OCI's (same bytes, same
/// digests), so one OCI manifest can list them.
fn oci_media_type(t: &str) -> String {
    match t {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => LAYER_GZIP.into(),
        "application/vnd.docker.image.rootfs.diff.tar" => media::LAYER_TAR.into(),
        "application/vnd.docker.container.image.v1+json" => media::CONFIG.into(),
        other => other.into(),
    }
}

/// Now, as RFC 3339 in UTC (what `created` holds).
pub(crate) fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Sets `KEY=VALUE` in an Env list, replacing the key's old entry.
pub(crate) fn set_env(env: &mut Vec<String>, kv: &str) {
    let key = kv.split_once('=').map_or(kv, |(k, _)| k);
    env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
    env.push(kv.to_string());
}

impl ImageDraft {
    /// An empty image (`FROM scratch`).
    pub fn scratch() -> ImageDraft {
        ImageDraft {
            config: json!({"architecture": "amd64", "os": "linux", "config": {},
                "rootfs": {"type": "layers", "diff_ids": []}, "history": []}),
            layers: Vec::new(),
        }
    }

    /// The stored image `name`, to build on.
    pub fn from_image(store: &Store, name: &str) -> Result<ImageDraft, ImageError> {
        let manifest = store.manifest(&store.resolve(name)?)?;
        let cd: Digest = manifest.config.digest.parse()?;
        let config: Value = serde_json::from_slice(&store.read_blob(&cd)?)
            .map_err(|e| bad(format!("image config {cd}: {e}")))?;
        if !config.is_object() {
            return Err(bad(format!("image config {cd} is not a JSON object")));
        }
        let layers = manifest
            .layers
            .into_iter()
            .map(|mut l| {
                l.media_type = oci_media_type(&l.media_type);
                l
            })
            .collect();
        Ok(ImageDraft { config, layers })
    }

    /// The layers, lowest first.
    pub fn layers(&self) -> &[Descriptor] {
        &self.layers
    }

    /// The config as JSON.
    pub fn config_json(&self) -> &Value {
        &self.config
    }

    /// The config, typed (for a runtime spec).
    pub fn config(&self) -> Result<oci_spec::image::ImageConfiguration, ImageError> {
        serde_json::from_value(self.config.clone()).map_err(|e| bad(format!("image config: {e}")))
    }

    fn object<'v>(v: &'v mut Value, key: &str) -> Result<&'v mut Map<String, Value>, ImageError> {
        let obj = v
            .as_object_mut()
            .ok_or_else(|| bad(format!("image config: {key}'s parent is not an object")))?;
        let e = obj
            .entry(key.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if e.is_null() {
            *e = Value::Object(Map::new());
        }
        e.as_object_mut()
            .ok_or_else(|| bad(format!("image config: {key} is not an object")))
    }

    /// The `config` section (Cmd, Env, ...), made when missing.
    pub fn run_config(&mut self) -> Result<&mut Map<String, Value>, ImageError> {
        Self::object(&mut self.config, "config")
    }

    /// The Env list.
    pub fn env(&self) -> Vec<String> {
        self.config
            .pointer("/config/Env")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sets `KEY=VALUE` in Env.
    pub fn set_env(&mut self, kv: &str) -> Result<(), ImageError> {
        let mut env = self.env();
        set_env(&mut env, kv);
        self.run_config()?.insert("Env".into(), json!(env));
        Ok(())
    }

    fn push_history(&mut self, created_by: &str, empty: bool, comment: Option<&str>) {
        let mut h = json!({"created": now_rfc3339(), "created_by": created_by});
        if empty {
            h["empty_layer"] = json!(true);
        }
        if let Some(c) = comment {
            h["comment"] = json!(c);
        }
        if let Some(obj) = self.config.as_object_mut() {
            let hist = obj
                .entry("history".to_string())
                .or_insert_with(|| json!([]));
            if !hist.is_array() {
                *hist = json!([]);
            }
            if let Some(a) = hist.as_array_mut() {
                a.push(h);
            }
        }
    }

    /// A step that changed only the config, recorded in the history.
    pub fn note(&mut self, created_by: &str) {
        self.push_history(created_by, true, None);
    }

    /// Appends `layer` (its diff id to `rootfs.diff_ids`, a history entry).
    pub fn add_layer(
        &mut self,
        layer: &NewLayer,
        created_by: &str,
        comment: Option<&str>,
    ) -> Result<(), ImageError> {
        let rootfs = Self::object(&mut self.config, "rootfs")?;
        rootfs.insert("type".into(), json!("layers"));
        let ids = rootfs
            .entry("diff_ids".to_string())
            .or_insert_with(|| json!([]));
        ids.as_array_mut()
            .ok_or_else(|| bad("image config: rootfs.diff_ids is not a list".into()))?
            .push(json!(layer.diff_id.to_string()));
        self.layers
            .push(Descriptor::new(LAYER_GZIP, &layer.digest, layer.size));
        self.push_history(created_by, false, comment);
        Ok(())
    }

    /// Stores the config and an OCI manifest, names the image `name`.
    pub fn save(mut self, store: &Store, name: &str) -> Result<Imported, ImageError> {
        if let Some(obj) = self.config.as_object_mut() {
            obj.insert("created".into(), json!(now_rfc3339()));
        }
        let config = serde_json::to_vec(&self.config).map_err(|e| bad(e.to_string()))?;
        let cd = Digest::of(&config);
        store.put_blob(&config[..], &cd)?;
        store.put_manifest(
            Descriptor::new(media::CONFIG, &cd, config.len() as u64),
            self.layers,
            name,
        )
    }
}

impl Store {
    /// `docker commit`: the overlayfs upper directory `upper` (a container's changes
    /// over the image `base_image`) becomes a new layer on top of that image's, with a
    /// config that adds its diff id and a history entry and applies `changes`; the new
    /// image is named `new_name`.
    pub fn commit(
        &self,
        upper: &Path,
        base_image: &str,
        new_name: &str,
        changes: &CommitChanges,
    ) -> Result<Imported, ImageError> {
        let mut draft = ImageDraft::from_image(self, base_image)?;
        let layer = self.layer_from_dir(upper, &[])?;
        {
            let rc = draft.run_config()?;
            if let Some(c) = &changes.cmd {
                rc.insert("Cmd".into(), json!(c));
            }
            if let Some(e) = &changes.entrypoint {
                rc.insert("Entrypoint".into(), json!(e));
            }
        }
        for kv in &changes.env {
            if kv.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
                return Err(bad(format!("environment entry {kv:?} is not KEY=VALUE")));
            }
            draft.set_env(kv)?;
        }
        if let (Some(a), Some(obj)) = (&changes.author, draft.config.as_object_mut()) {
            obj.insert("author".into(), json!(a));
        }
        draft.add_layer(&layer, "virtkit commit", changes.comment.as_deref())?;
        draft.save(self, new_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339() {
        let s = now_rfc3339();
        assert_eq!(s.len(), 20, "{s}");
        assert!(s.starts_with("20") && s.ends_with('Z'), "{s}");
    }

    #[test]
    fn env_keys_are_replaced() {
        let mut env = vec!["A=1".to_string(), "B=2".into()];
        set_env(&mut env, "A=3");
        assert_eq!(env, ["B=2", "A=3"]);
    }
}
