//! `build` and `commit`: images from a Dockerfile (each `RUN` in a container of this
//! engine's runtime, on the host's network as a build needs its package mirrors) and
//! from a container's changes.

use std::path::Path;
use std::process::Stdio;

use virtkit_image::layout::Imported;
use virtkit_image::{BuildOptions, CommitChanges, StepRunner};

use crate::{Engine, EngineError};

/// Runs build steps with the engine's runtime, their output on this process's stderr.
struct Runner<'a>(&'a Engine);

impl StepRunner for Runner<'_> {
    fn run(&self, bundle: &Path, id: &str) -> Result<i32, String> {
        let status = self
            .0
            .runtime_command()
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(std::io::stderr())
            .status()
            .map_err(|e| format!("cannot run {}: {e}", self.0.runtime.display()))?;
        use std::os::unix::process::ExitStatusExt;
        Ok(status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(255))
    }
}

/// The spec build steps start from: the runtime's defaults on the host's network.
pub fn build_spec() -> Result<oci_spec::runtime::Spec, EngineError> {
    let mut v = serde_json::to_value(virtkit_runtime::example_spec())
        .map_err(|e| EngineError::BadOption(format!("runtime spec: {e}")))?;
    if let Some(ns) = v["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| n["type"] != "network");
    }
    serde_json::from_value(v).map_err(|e| EngineError::BadOption(format!("runtime spec: {e}")))
}

impl Engine {
    /// Builds `CONTEXT/Dockerfile` (or `dockerfile`) into the image `tag`.
    pub fn build(
        &self,
        context: &Path,
        dockerfile: Option<&Path>,
        tag: &str,
        build_args: Vec<(String, String)>,
    ) -> Result<Imported, EngineError> {
        let mut opts = BuildOptions::new(context, tag);
        opts.dockerfile = dockerfile.map(Path::to_path_buf);
        opts.build_args = build_args;
        opts.base_spec = build_spec()?;
        Ok(self.store.build(&opts, &Runner(self))?)
    }

    /// Makes the image `new_name` from container `name`'s changes over its image.
    pub fn commit(
        &self,
        name: &str,
        new_name: &str,
        changes: &CommitChanges,
    ) -> Result<Imported, EngineError> {
        let r = self.lookup(name)?;
        let upper = self.dir(&r.id).join("bundle").join("upper");
        Ok(self.store.commit(&upper, &r.image, new_name, changes)?)
    }
}
