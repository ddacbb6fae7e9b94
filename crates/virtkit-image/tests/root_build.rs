//! `virtkit_image::build` end to end (root): a Dockerfile over a busybox image whose RUN
//! steps run in the static container-runner (`container-runner run --bundle B ID`),
//! COPY and ADD from the context, metadata instructions; the image's config and files are
//! checked through a bundle of it. A failing RUN fails the build, names nothing and
//! leaves nothing behind; a source outside the context is refused.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use virtkit_image::{BuildOptions, ImageError, RunOptions, StepRunner, Store};

struct ContainerRunner {
    bin: PathBuf,
    root: PathBuf,
}

impl StepRunner for ContainerRunner {
    fn run(&self, bundle: &Path, id: &str) -> Result<i32, String> {
        let st = Command::new(&self.bin)
            .arg("--root")
            .arg(&self.root)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(id)
            .status()
            .map_err(|e| e.to_string())?;
        st.code().ok_or_else(|| format!("killed: {st}"))
    }
}

fn setup(d: &Path) -> (Store, ContainerRunner, PathBuf) {
    let store = Store::open(d.join("store")).unwrap();
    let l = virtkit_lab::registry::busybox_layout(d, &["/bin/sh"], &["BASE=1"]).unwrap();
    store.import_oci_layout(&l, Some("v1"), "busybox").unwrap();
    let runner = ContainerRunner {
        bin: virtkit_lab::static_binary("container-runner", "container-runner").unwrap(),
        root: d.join("runtime"),
    };
    let ctx = d.join("ctx");
    std::fs::create_dir_all(ctx.join("sub")).unwrap();
    std::fs::write(ctx.join("hello.txt"), "hello file\n").unwrap();
    std::fs::write(ctx.join("sub/deep.txt"), "deep\n").unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(5);
    b.append_data(&mut h, "inside/file", &b"tar!\n"[..])
        .unwrap();
    std::fs::write(ctx.join("files.tar"), b.into_inner().unwrap()).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", ctx.join("link-out")).unwrap();
    (store, runner, ctx)
}

fn dockerfile(ctx: &Path, text: &str) -> BuildOptions {
    std::fs::write(ctx.join("Dockerfile"), text).unwrap();
    BuildOptions::new(ctx, "built:1")
}

#[test]
fn root_build_runs_copies_and_sets_the_config() {
    let d = tempfile::tempdir().unwrap();
    let (store, runner, ctx) = setup(d.path());
    let opts = dockerfile(
        &ctx,
        "# a test image\nFROM busybox\nARG GREETING=hello\nENV WHO=builder\nWORKDIR /work\n\
         RUN echo \"$GREETING from $WHO in $(pwd)\" > made.txt && \\\n    echo more >> made.txt\n\
         COPY hello.txt ./\nCOPY sub /work/sub/\nADD files.tar /opt/\n\
         ENV PATH=/bin\nEXPOSE 8080\nLABEL org.test=yes\nCMD [\"cat\", \"/work/made.txt\"]\n",
    );
    let got = store.build(&opts, &runner).unwrap();
    assert_eq!(store.resolve("built:1").unwrap(), got.manifest);
    // busybox's layer, then RUN, COPY, COPY, ADD.
    assert_eq!(got.parsed.layers.len(), 5);
    let cd = got.parsed.config.digest.parse().unwrap();
    let cfg: serde_json::Value = serde_json::from_slice(&store.read_blob(&cd).unwrap()).unwrap();
    let c = &cfg["config"];
    assert_eq!(
        c["Env"],
        serde_json::json!(["BASE=1", "WHO=builder", "PATH=/bin"])
    );
    assert_eq!(c["WorkingDir"], "/work");
    assert_eq!(c["Cmd"], serde_json::json!(["cat", "/work/made.txt"]));
    assert_eq!(c["ExposedPorts"], serde_json::json!({"8080/tcp": {}}));
    assert_eq!(c["Labels"]["org.test"], "yes");
    assert_eq!(cfg["rootfs"]["diff_ids"].as_array().unwrap().len(), 5);
    assert!(cfg["history"].as_array().unwrap().len() >= 10, "{cfg}");
    // The files, through a bundle of the new image.
    let b = store
        .create_bundle(
            "built:1",
            &d.path().join("check"),
            oci_spec::runtime::Spec::default(),
            &RunOptions::default(),
        )
        .unwrap();
    let read = |p: &str| std::fs::read_to_string(b.rootfs.join(p)).unwrap();
    assert_eq!(read("work/made.txt"), "hello from builder in /work\nmore\n");
    assert_eq!(read("work/hello.txt"), "hello file\n");
    assert_eq!(read("work/sub/deep.txt"), "deep\n");
    assert_eq!(read("opt/inside/file"), "tar!\n");
    b.remove().unwrap();
    // Every bundle and staging directory is gone.
    assert_eq!(
        std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
        0
    );
}

#[test]
fn root_build_failures_name_nothing_and_leave_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (store, runner, ctx) = setup(d.path());
    let opts = dockerfile(&ctx, "FROM busybox\nRUN echo ok\nRUN exit 3\nCMD x\n");
    match store.build(&opts, &runner) {
        Err(ImageError::StepFailed { step, status, .. }) => assert_eq!((step, status), (3, 3)),
        other => panic!("{other:?}"),
    }
    assert!(store.resolve("built:1").is_err());
    assert_eq!(
        std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
        0
    );
    for bad in [
        "COPY link-out /x",
        "COPY ../outside /x",
        "ADD http://example.com/a /a",
    ] {
        let opts = dockerfile(&ctx, &format!("FROM busybox\n{bad}\n"));
        let e = store.build(&opts, &runner).unwrap_err();
        assert!(
            matches!(e, ImageError::Dockerfile { line: 2, .. }),
            "{bad}: {e}"
        );
    }
    let opts = dockerfile(&ctx, "FROM no-such-image\n");
    assert!(store.build(&opts, &runner).is_err());
    // FROM scratch with a COPY alone is an image too.
    let opts = dockerfile(
        &ctx,
        "FROM scratch\nCOPY hello.txt /\nCMD [\"/hello.txt\"]\n",
    );
    let got = store.build(&opts, &runner).unwrap();
    assert_eq!(got.parsed.layers.len(), 1);
}
