//! The steps of a build over the store (see the module documentation of `build`).

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use serde_json::{json, Value};

use super::dockerfile::{substitute, Command, Instruction, Step};
use super::{BuildOptions, StepRunner};
use crate::commit::ImageDraft;
use crate::diff::{sorted_names, tmp_path};
use crate::layout::Imported;
use crate::unpack::{unpack, UnpackOptions, Whiteouts};
use crate::{fsops, ImageError, RunOptions, Store};

pub(crate) struct Builder<'a> {
    store: &'a Store,
    opts: &'a BuildOptions,
    runner: &'a dyn StepRunner,
    /// The context directory, canonical.
    context: PathBuf,
    draft: ImageDraft,
    /// ARG values in scope.
    args: HashMap<String, String>,
    /// Whether this build set CMD (ENTRYPOINT then keeps it).
    cmd_set: bool,
    step: usize,
}

fn err(step: &Step, why: impl Into<String>) -> ImageError {
    ImageError::Dockerfile {
        line: step.line,
        why: why.into(),
    }
}

/// `path` made absolute against `base` and cleaned lexically (`..` stops at `/`).
fn in_image(base: &str, path: &str) -> String {
    let full = if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        Path::new(base).join(path)
    };
    let mut out = PathBuf::from("/");
    for c in full.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out.display().to_string()
}

/// Whether the file at `path` is a tar archive (plain, gzip or zstd), from its start.
fn is_archive(path: &Path) -> Result<bool, ImageError> {
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(512).read_to_end(&mut head))
        .map_err(ImageError::io("cannot read", path))?;
    Ok(head.starts_with(&[0x1f, 0x8b])
        || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || head.get(257..262) == Some(b"ustar"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no arguments.
    unsafe { libc::geteuid() == 0 }
}

/// Copies the metadata of `meta` (owner root:root when we are root, as Docker's COPY;
/// mode unless a link; modification time) onto `dst`, never following a link.
fn copy_meta(dst: &Path, meta: &std::fs::Metadata) -> Result<(), ImageError> {
    let parent = dst.parent().unwrap_or(Path::new("/"));
    let name = dst.file_name().unwrap_or_default();
    let dir = std::fs::File::open(parent).map_err(ImageError::io("cannot open", parent))?;
    let mode = (!meta.file_type().is_symlink()).then_some(meta.mode());
    let owner = is_root().then_some((0, 0));
    let mtime = u64::try_from(meta.mtime()).ok();
    fsops::set_meta(dir.as_fd(), name, owner, mode, mtime)
}

/// Copies `src` (a file, link or directory tree; links are copied, never followed) to
/// `dst`, which must not exist unless both are directories.
fn copy_any(src: &Path, dst: &Path) -> Result<(), ImageError> {
    let meta = std::fs::symlink_metadata(src).map_err(ImageError::io("cannot inspect", src))?;
    let ft = meta.file_type();
    if ft.is_dir() {
        if !dst.is_dir() {
            std::fs::create_dir(dst).map_err(ImageError::io("cannot create", dst))?;
        }
        for n in sorted_names(src)? {
            copy_any(&src.join(&n), &dst.join(&n))?;
        }
    } else if ft.is_symlink() {
        let target = std::fs::read_link(src).map_err(ImageError::io("cannot read", src))?;
        std::os::unix::fs::symlink(&target, dst).map_err(ImageError::io("cannot create", dst))?;
    } else if ft.is_file() {
        let mut from = std::fs::File::open(src).map_err(ImageError::io("cannot open", src))?;
        let mut to =
            std::fs::File::create_new(dst).map_err(ImageError::io("cannot create", dst))?;
        std::io::copy(&mut from, &mut to).map_err(ImageError::io("cannot copy to", dst))?;
    } else {
        log::warn!(
            "{}: not a file, directory or link: not copied",
            src.display()
        );
        return Ok(());
    }
    copy_meta(dst, &meta)
}

impl<'a> Builder<'a> {
    pub(crate) fn new(
        store: &'a Store,
        opts: &'a BuildOptions,
        runner: &'a dyn StepRunner,
    ) -> Result<Builder<'a>, ImageError> {
        let context = std::fs::canonicalize(&opts.context)
            .map_err(ImageError::io("cannot open the context", &opts.context))?;
        Ok(Builder {
            store,
            opts,
            runner,
            context,
            draft: ImageDraft::scratch(),
            args: HashMap::new(),
            cmd_set: false,
            step: 0,
        })
    }

    /// `s` with `$VAR`s from Env, then ARGs.
    fn subst(&self, s: &str) -> String {
        let env = self.draft.env();
        let lookup = |name: &str| {
            env.iter()
                .find_map(|e| e.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
                .map(str::to_string)
                .or_else(|| self.args.get(name).cloned())
        };
        substitute(s, &lookup)
    }

    fn workdir(&self) -> String {
        self.draft
            .config_json()
            .pointer("/config/WorkingDir")
            .and_then(Value::as_str)
            .filter(|w| !w.is_empty())
            .unwrap_or("/")
            .to_string()
    }

    pub(crate) fn run(mut self, steps: &[Step]) -> Result<Imported, ImageError> {
        let total = steps.len();
        for (i, s) in steps.iter().enumerate() {
            self.step = i + 1;
            log::info!("STEP {}/{total}: {}", self.step, s.text);
            self.one(s)?;
        }
        self.draft.save(self.store, &self.opts.tag)
    }

    fn set(&mut self, key: &str, v: Value) -> Result<(), ImageError> {
        self.draft.run_config()?.insert(key.into(), v);
        Ok(())
    }

    fn one(&mut self, s: &Step) -> Result<(), ImageError> {
        let nop = format!("/bin/sh -c #(nop) {}", s.text);
        match &s.instruction {
            Instruction::From { image, .. } => {
                let image = self.subst(image);
                self.draft = if image == "scratch" {
                    ImageDraft::scratch()
                } else {
                    ImageDraft::from_image(self.store, &image)
                        .map_err(|e| err(s, format!("FROM {image}: {e}")))?
                };
                return Ok(());
            }
            Instruction::Arg { name, default } => {
                let v = self
                    .opts
                    .build_args
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .or_else(|| default.as_ref().map(|d| self.subst(d)));
                if let Some(v) = v {
                    self.args.insert(name.clone(), v);
                }
                return Ok(());
            }
            Instruction::Run(cmd) => return self.run_step(s, cmd),
            Instruction::Copy { sources, dest } => return self.copy(s, sources, dest, false),
            Instruction::Add { sources, dest } => return self.copy(s, sources, dest, true),
            Instruction::Env(pairs) => {
                for (k, v) in pairs {
                    let v = self.subst(v);
                    self.draft.set_env(&format!("{k}={v}"))?;
                }
            }
            Instruction::Workdir(w) => {
                let w = in_image(&self.workdir(), &self.subst(w));
                self.set("WorkingDir", json!(w))?;
            }
            Instruction::User(u) => {
                let u = self.subst(u);
                self.set("User", json!(u))?;
            }
            Instruction::Expose(ports) => {
                let rc = self.draft.run_config()?;
                let map = rc.entry("ExposedPorts").or_insert_with(|| json!({}));
                if !map.is_object() {
                    *map = json!({});
                }
                for p in ports {
                    let p = if p.contains('/') {
                        p.to_ascii_lowercase()
                    } else {
                        format!("{p}/tcp")
                    };
                    map[p] = json!({});
                }
            }
            Instruction::Cmd(c) => {
                self.set("Cmd", json!(c.argv()))?;
                self.cmd_set = true;
            }
            Instruction::Entrypoint(c) => {
                self.set("Entrypoint", json!(c.argv()))?;
                if !self.cmd_set {
                    self.draft.run_config()?.remove("Cmd");
                }
            }
            Instruction::Label(pairs) => {
                let vals: Vec<(String, String)> = pairs
                    .iter()
                    .map(|(k, v)| (k.clone(), self.subst(v)))
                    .collect();
                let rc = self.draft.run_config()?;
                let map = rc.entry("Labels").or_insert_with(|| json!({}));
                if !map.is_object() {
                    *map = json!({});
                }
                for (k, v) in vals {
                    map[k] = json!(v);
                }
            }
        }
        self.draft.note(&nop);
        Ok(())
    }

    fn run_step(&mut self, s: &Step, cmd: &Command) -> Result<(), ImageError> {
        let config = self.draft.config()?;
        let env = self.draft.env();
        // ARGs reach RUN as environment variables, below Env.
        let args_env: Vec<String> = self
            .args
            .iter()
            .filter(|(k, _)| {
                !env.iter()
                    .any(|e| e.split_once('=').map(|x| x.0) == Some(k))
            })
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let run = RunOptions {
            entrypoint: Some(cmd.argv()),
            env: args_env,
            ..RunOptions::default()
        };
        let dir = tmp_path(self.store, "build");
        let bundle = self.store.bundle_from_parts(
            self.draft.layers(),
            &config,
            &dir,
            self.opts.base_spec.clone(),
            &run,
        )?;
        let workdir = self.workdir();
        let id = dir
            .file_name()
            .map(|n| format!("virtkit-{}", n.to_string_lossy()))
            .unwrap_or_else(|| "virtkit-build".into());
        let result = (|| {
            // WORKDIR is made when missing, as Docker does, in this step's layer.
            let root = std::fs::File::open(&bundle.rootfs)
                .map_err(ImageError::io("cannot open", &bundle.rootfs))?;
            let rel = workdir.trim_start_matches('/');
            fsops::dir_in_root(root.as_fd(), Path::new(rel))?;
            drop(root);
            let status = self
                .runner
                .run(&bundle.dir, &id)
                .map_err(|why| ImageError::Runner {
                    step: self.step,
                    why,
                })?;
            if status != 0 {
                return Err(ImageError::StepFailed {
                    step: self.step,
                    instruction: s.text.clone(),
                    status,
                });
            }
            bundle.unmount()?;
            self.store.layer_from_dir(&bundle.dir.join("upper"), &[])
        })();
        let removed = bundle.remove();
        let layer = result?;
        removed?;
        let created_by = match cmd {
            Command::Shell(c) => format!("/bin/sh -c {c}"),
            Command::Exec(v) => v.join(" "),
        };
        self.draft.add_layer(&layer, &created_by, None)
    }

    /// A COPY/ADD source as a path inside the context (symbolic links resolved, and
    /// refused when they leave it).
    fn source(&self, s: &Step, src: &str) -> Result<PathBuf, ImageError> {
        if src.contains(['*', '?', '[']) {
            return Err(err(s, format!("{src}: wildcards are not supported")));
        }
        let mut rel = PathBuf::new();
        for c in Path::new(src).components() {
            match c {
                Component::Normal(n) => rel.push(n),
                Component::ParentDir if !rel.pop() => {
                    return Err(err(s, format!("{src} is outside the build context")))
                }
                _ => {}
            }
        }
        let p = self.context.join(&rel);
        let canon = std::fs::canonicalize(&p)
            .map_err(|e| err(s, format!("{src}: not in the build context ({e})")))?;
        if !canon.starts_with(&self.context) {
            return Err(err(
                s,
                format!("{src}: a symbolic link out of the build context"),
            ));
        }
        Ok(canon)
    }

    fn copy(
        &mut self,
        s: &Step,
        sources: &[String],
        dest: &str,
        add: bool,
    ) -> Result<(), ImageError> {
        let dest_raw = self.subst(dest);
        let dest_abs = in_image(&self.workdir(), &dest_raw);
        let into_dir = dest_raw.ends_with('/') || dest_raw == "." || sources.len() > 1;
        if sources.len() > 1 && !dest_raw.ends_with('/') {
            return Err(err(s, "with several sources the destination must end in /"));
        }
        let paths = sources
            .iter()
            .map(|src| self.source(s, &self.subst(src)))
            .collect::<Result<Vec<_>, _>>()?;
        let staging = tmp_path(self.store, "copy");
        std::fs::create_dir(&staging).map_err(ImageError::io("cannot create", &staging))?;
        let result = (|| {
            let target = staging.join(dest_abs.trim_start_matches('/'));
            for src in &paths {
                let meta = std::fs::metadata(src).map_err(ImageError::io("cannot inspect", src))?;
                if meta.is_dir() || (add && meta.is_file() && is_archive(src)?) {
                    std::fs::create_dir_all(&target)
                        .map_err(ImageError::io("cannot create", &target))?;
                    if meta.is_dir() {
                        copy_any(src, &target)?;
                    } else {
                        let f =
                            std::fs::File::open(src).map_err(ImageError::io("cannot open", src))?;
                        let o = UnpackOptions {
                            whiteouts: Whiteouts::Apply,
                            ..UnpackOptions::default()
                        };
                        unpack(f, &target, &o)
                            .map_err(|e| err(s, format!("ADD {}: {e}", src.display())))?;
                    }
                    continue;
                }
                let to = if into_dir {
                    target.join(src.file_name().unwrap_or_default())
                } else {
                    target.clone()
                };
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(ImageError::io("cannot create", parent))?;
                }
                copy_any(src, &to)?;
            }
            self.store.layer_from_dir(&staging, &[])
        })();
        let _ = std::fs::remove_dir_all(&staging);
        let layer = result?;
        let what = if add { "ADD" } else { "COPY" };
        let created_by = format!(
            "/bin/sh -c #(nop) {what} {} in {dest_abs}",
            sources.join(" ")
        );
        self.draft.add_layer(&layer, &created_by, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_paths_are_cleaned() {
        assert_eq!(in_image("/", "app"), "/app");
        assert_eq!(in_image("/app", "sub/../x"), "/app/x");
        assert_eq!(in_image("/app", "../../.."), "/");
        assert_eq!(in_image("/app", "/abs/"), "/abs");
    }
}
