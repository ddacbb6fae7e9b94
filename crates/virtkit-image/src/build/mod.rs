//! `docker build` for one-stage Dockerfiles: [`dockerfile::parse`] reads the file,
//! [`build`] runs it over the store.
//!
//! - `FROM IMAGE` starts from a stored image (`FROM scratch`: an empty one);
//! - `RUN` makes a bundle (an overlayfs root over the layers so far, [`Store::create_bundle`]'s)
//!   whose process is `/bin/sh -c CMD` (or the JSON form's argv) with the build's Env,
//!   WorkingDir and User, runs it through the caller's [`StepRunner`] (an OCI runtime's
//!   `run --bundle B ID`), and makes its upper directory the next layer ([`crate::diff`]);
//!   a non-zero status fails the build ([`ImageError::StepFailed`]);
//! - `COPY` and `ADD` copy files of the context (never from outside it: `..` and
//!   symbolic links that leave it are refused) into a layer of their own; `ADD` of a
//!   local tar archive (plain, gzip, zstd) unpacks it; URLs are refused;
//! - `ENV`, `WORKDIR`, `USER`, `EXPOSE`, `CMD`, `ENTRYPOINT`, `LABEL`, `ARG` change only
//!   the config (with `$VAR` and `${VAR:-default}` substituted where Docker does).
//!
//! The image is named only when every step succeeded; each step's bundle is removed.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::layout::Imported;
use crate::{ImageError, Store};

mod builder;
pub mod dockerfile;
#[cfg(test)]
mod parse_tests;

/// Runs a `RUN` step's bundle to its end.
pub trait StepRunner {
    /// Runs the container `id` of the OCI bundle `bundle` (a `config.json` and a mounted
    /// `rootfs`) and returns its exit status; an `Err` is a runner that could not run it.
    fn run(&self, bundle: &Path, id: &str) -> Result<i32, String>;
}

/// What to build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// The context directory (COPY and ADD sources are relative to it).
    pub context: PathBuf,
    /// The Dockerfile (`CONTEXT/Dockerfile` when `None`).
    pub dockerfile: Option<PathBuf>,
    /// The name of the image made (`-t NAME`).
    pub tag: String,
    /// `--build-arg NAME=VALUE`s.
    pub build_args: Vec<(String, String)>,
    /// The runtime spec `RUN` steps start from (namespaces, mounts, capabilities), as
    /// for [`Store::create_bundle`].
    pub base_spec: Spec,
}

impl BuildOptions {
    /// Options for building `CONTEXT/Dockerfile` as `tag` from the default spec.
    pub fn new(context: impl Into<PathBuf>, tag: &str) -> BuildOptions {
        BuildOptions {
            context: context.into(),
            dockerfile: None,
            tag: tag.to_string(),
            build_args: Vec::new(),
            base_spec: Spec::default(),
        }
    }
}

/// Builds the Dockerfile of `opts` in `store`, `RUN` steps through `runner`; the image is
/// named `opts.tag`. Progress goes to the `log` facade (info), one line per step.
pub fn build(
    store: &Store,
    opts: &BuildOptions,
    runner: &dyn StepRunner,
) -> Result<Imported, ImageError> {
    let file = opts
        .dockerfile
        .clone()
        .unwrap_or_else(|| opts.context.join("Dockerfile"));
    let meta = std::fs::metadata(&file).map_err(ImageError::io("cannot read", &file))?;
    if meta.len() > dockerfile::MAX_DOCKERFILE as u64 {
        return Err(ImageError::TooLarge {
            what: "a Dockerfile",
            limit: dockerfile::MAX_DOCKERFILE as u64,
        });
    }
    let text = std::fs::read_to_string(&file).map_err(ImageError::io("cannot read", &file))?;
    let steps = dockerfile::parse(&text)?;
    builder::Builder::new(store, opts, runner)?.run(&steps)
}

impl Store {
    /// [`build`] as a method.
    pub fn build(
        &self,
        opts: &BuildOptions,
        runner: &dyn StepRunner,
    ) -> Result<Imported, ImageError> {
        build(self, opts, runner)
    }
}
