//! The image verbs that go beyond the store's own calls: push, save, commit, build.

use std::path::PathBuf;

use anyhow::{bail, Context};
use virtkit_engine::Engine;
use virtkit_image::build::dockerfile::{parse, Instruction};
use virtkit_image::registry::RegistryOptions;
use virtkit_image::CommitChanges;

/// `push IMAGE [DEST]`: to DEST, or to where IMAGE's own name points.
pub fn push(
    engine: &Engine,
    image: &str,
    dest: Option<&str>,
    opts: &RegistryOptions,
) -> anyhow::Result<i32> {
    let got = engine.store().push(image, dest.unwrap_or(image), opts)?;
    println!(
        "{} ({} blobs sent, {} already there)",
        got.manifest,
        got.uploaded.len(),
        got.skipped.len()
    );
    Ok(0)
}

/// `save -o OUT [--format docker-archive|oci-dir] IMAGE`.
pub fn save(
    engine: &Engine,
    image: &str,
    output: &std::path::Path,
    format: &str,
) -> anyhow::Result<i32> {
    let s = engine.store();
    match format {
        "docker-archive" => s.export_docker_archive(image, output)?,
        "oci-dir" => s.export_oci_layout(image, output)?,
        f => bail!("--format {f}: docker-archive or oci-dir"),
    };
    Ok(0)
}

/// `commit [-c INSTRUCTION]... [-m MSG] [-a AUTHOR] CONTAINER NAME`; `-c` takes CMD,
/// ENTRYPOINT and ENV lines in Dockerfile syntax, as `docker commit --change`.
pub fn commit(
    engine: &Engine,
    container: &str,
    name: &str,
    change: &[String],
    message: Option<String>,
    author: Option<String>,
) -> anyhow::Result<i32> {
    let mut changes = CommitChanges {
        comment: message,
        author,
        ..CommitChanges::default()
    };
    for c in change {
        // The parser wants a FROM first.
        let steps =
            parse(&format!("FROM scratch\n{c}")).with_context(|| format!("--change {c:?}"))?;
        for step in steps.into_iter().skip(1) {
            match step.instruction {
                Instruction::Cmd(cmd) => changes.cmd = Some(cmd.argv()),
                Instruction::Entrypoint(cmd) => changes.entrypoint = Some(cmd.argv()),
                Instruction::Env(kvs) => changes
                    .env
                    .extend(kvs.into_iter().map(|(k, v)| format!("{k}={v}"))),
                _ => bail!("--change {c:?}: only CMD, ENTRYPOINT and ENV are taken"),
            }
        }
    }
    let got = engine.commit(container, name, &changes)?;
    println!("{}", got.manifest);
    Ok(0)
}

/// `build -t NAME [-f DOCKERFILE] [--build-arg K=V]... CONTEXT`.
pub fn build(
    engine: &Engine,
    context: PathBuf,
    file: Option<PathBuf>,
    tag: &str,
    build_args: &[String],
) -> anyhow::Result<i32> {
    let args = build_args
        .iter()
        .map(|a| match a.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => bail!("--build-arg {a}: expected NAME=VALUE"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let got = engine.build(&context, file.as_deref(), tag, args)?;
    println!("{}", got.manifest);
    Ok(0)
}
