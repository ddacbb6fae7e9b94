//! An image's config (Entrypoint, Cmd, Env, WorkingDir, User, StopSignal, ExposedPorts,
//! Volumes) made into an OCI runtime spec, then merged with what the user asked for, as
//! Docker and podman do:
//! - the process is Entrypoint + Cmd; `--entrypoint` replaces Entrypoint and drops the
//!   image's Cmd; arguments after the image replace Cmd;
//! - Env is the image's, then the user's (a key given again replaces it), with a default
//!   `PATH` when neither has one;
//! - the user (`name`, `uid`, `name:group`, `uid:gid`) is resolved in the image's own
//!   `/etc/passwd` and `/etc/group`, read inside the root (never the host's);
//! - StopSignal, ExposedPorts and Volumes become annotations for the engine.

use std::io::Read;
use std::path::Path;

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{Spec, User};

use crate::ImageError;

/// The `PATH` a container gets when neither the image nor the user sets one.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Annotation keys for what the runtime spec has no field for.
pub mod annotations {
    /// The image's StopSignal.
    pub const STOP_SIGNAL: &str = "org.opencontainers.image.stopSignal";
    /// The image's ExposedPorts, comma separated (`80/tcp,443/tcp`).
    pub const EXPOSED_PORTS: &str = "org.virtkit.image.exposedPorts";
    /// The image's Volumes, comma separated.
    pub const VOLUMES: &str = "org.virtkit.image.volumes";
}

/// What the user asked for on top of the image (`docker run` flags).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// `--entrypoint` (an empty vector clears the image's).
    pub entrypoint: Option<Vec<String>>,
    /// The arguments after the image name (replace Cmd when not empty).
    pub args: Vec<String>,
    /// `-e KEY=VALUE`.
    pub env: Vec<String>,
    /// `-w DIR`.
    pub workdir: Option<String>,
    /// `-u USER[:GROUP]`.
    pub user: Option<String>,
    /// `-t`.
    pub tty: bool,
    /// `--hostname`.
    pub hostname: Option<String>,
    /// `--read-only`: the root file system read-only.
    pub read_only: bool,
    /// `-v HOST:CONTAINER[:ro]`: host directories or files bound into the container (a
    /// named volume is its directory on the host).
    pub binds: Vec<Bind>,
    /// `--tmpfs DIR`: empty tmpfs mounts.
    pub tmpfs: Vec<String>,
}

/// A host path bound into the container (`-v`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bind {
    /// The host path (absolute).
    pub source: std::path::PathBuf,
    /// Where in the container (absolute).
    pub destination: String,
    /// Read-only.
    pub read_only: bool,
}

fn bad(why: String) -> ImageError {
    ImageError::BadConfig(why)
}

/// The runtime spec for a container of the image with `image` as its config, its root at
/// `rootfs` (the unpacked or overlaid layers), with `run`'s options; `base` is the spec to
/// start from (the runtime's defaults: namespaces, mounts, capabilities).
pub fn runtime_spec(
    mut base: Spec,
    image: &ImageConfiguration,
    rootfs: &Path,
    run: &RunOptions,
) -> Result<Spec, ImageError> {
    let cfg = image.config().clone().unwrap_or_default();
    let mut args: Vec<String> = match &run.entrypoint {
        Some(e) => e.clone(),
        None => cfg.entrypoint().clone().unwrap_or_default(),
    };
    if !run.args.is_empty() {
        args.extend(run.args.iter().cloned());
    } else if run.entrypoint.is_none() {
        args.extend(cfg.cmd().clone().unwrap_or_default());
    }
    if args.is_empty() {
        return Err(bad(
            "no command: the image has neither Entrypoint nor Cmd, and none was given".into(),
        ));
    }
    let mut env: Vec<String> = Vec::new();
    for kv in cfg.env().iter().flatten().chain(run.env.iter()) {
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        if key.is_empty() {
            return Err(bad(format!("environment entry {kv:?} has no name")));
        }
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        env.push(if kv.contains('=') {
            kv.clone()
        } else {
            format!("{kv}=")
        });
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    let cwd = run
        .workdir
        .clone()
        .or_else(|| cfg.working_dir().clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(bad(format!("working directory {cwd:?} is not absolute")));
    }
    let user_spec = run
        .user
        .clone()
        .or_else(|| cfg.user().clone())
        .filter(|u| !u.is_empty());
    let user = match user_spec {
        Some(u) => resolve_user(rootfs, &u)?,
        None => User::default(),
    };
    let mut process = base.process().clone().unwrap_or_default();
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_cwd(cwd.into());
    process.set_user(user);
    process.set_terminal(Some(run.tty));
    base.set_process(Some(process));
    let mut mounts = base.mounts().clone().unwrap_or_default();
    for b in &run.binds {
        if !b.source.is_absolute() || !b.destination.starts_with('/') {
            return Err(bad(format!(
                "volume {}:{}: both paths must be absolute",
                b.source.display(),
                b.destination
            )));
        }
        let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
        if b.read_only {
            options.push("ro".into());
        }
        let mut m = oci_spec::runtime::Mount::default();
        m.set_destination(b.destination.clone().into());
        m.set_source(Some(b.source.clone()));
        m.set_typ(Some("bind".into()));
        m.set_options(Some(options));
        mounts.push(m);
    }
    for t in &run.tmpfs {
        if !t.starts_with('/') {
            return Err(bad(format!("--tmpfs {t}: not an absolute path")));
        }
        let mut m = oci_spec::runtime::Mount::default();
        m.set_destination(t.into());
        m.set_source(Some("tmpfs".into()));
        m.set_typ(Some("tmpfs".into()));
        m.set_options(Some(vec![
            "nosuid".into(),
            "nodev".into(),
            "mode=1777".into(),
        ]));
        mounts.push(m);
    }
    base.set_mounts(Some(mounts));
    let mut root = base.root().clone().unwrap_or_default();
    root.set_path(rootfs.to_path_buf());
    base.set_root(Some(root));
    if let Some(h) = &run.hostname {
        base.set_hostname(Some(h.clone()));
    }
    let mut ann = base.annotations().clone().unwrap_or_default();
    if let Some(s) = cfg.stop_signal() {
        ann.insert(annotations::STOP_SIGNAL.into(), s.clone());
    }
    if let Some(p) = cfg.exposed_ports().as_ref().filter(|p| !p.is_empty()) {
        ann.insert(annotations::EXPOSED_PORTS.into(), p.join(","));
    }
    if let Some(v) = cfg.volumes().as_ref().filter(|v| !v.is_empty()) {
        ann.insert(annotations::VOLUMES.into(), v.join(","));
    }
    for (k, v) in cfg.labels().iter().flatten() {
        ann.entry(k.clone()).or_insert_with(|| v.clone());
    }
    base.set_annotations((!ann.is_empty()).then_some(ann));
    Ok(base)
}

/// Reads `rel` (like `etc/passwd`) inside `rootfs`, never leaving it; `None` if absent.
fn read_in_root(rootfs: &Path, rel: &str) -> Result<Option<String>, ImageError> {
    let root = std::fs::File::open(rootfs).map_err(ImageError::io("cannot open", rootfs))?;
    let fd = match virtkit_namespaces::syscalls::openat2_in_root(
        std::os::fd::AsFd::as_fd(&root),
        Path::new(rel),
        libc::O_RDONLY,
        0,
    ) {
        Ok(fd) => fd,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(4 << 20)
        .read_to_string(&mut text)
        .map_err(ImageError::io("cannot read", rootfs.join(rel)))?;
    Ok(Some(text))
}

/// (uid, gid) of `name` or a numeric uid in passwd-format `text`.
fn passwd_entry(text: &str, name: &str) -> Option<(u32, u32)> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let (uid, gid) = (f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?);
        (f.first() == Some(&name) || f.get(2) == Some(&name)).then_some((uid, gid))
    })
}

/// The gid of group `name` (or a number) in group-format `text`, and the groups `user`
/// is a member of.
fn group_entries(text: &str, name: Option<&str>, user: &str) -> (Option<u32>, Vec<u32>) {
    let mut gid = None;
    let mut extra = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split(':').collect();
        let Some(g) = f.get(2).and_then(|g| g.parse::<u32>().ok()) else {
            continue;
        };
        if name.is_some_and(|n| f.first() == Some(&n) || f.get(2) == Some(&n)) {
            gid = Some(g);
        }
        if f.get(3).is_some_and(|m| m.split(',').any(|m| m == user)) {
            extra.push(g);
        }
    }
    (gid, extra)
}

/// `name`, `uid`, `name:group` or `uid:gid`, resolved in the image.
fn resolve_user(rootfs: &Path, spec: &str) -> Result<User, ImageError> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_in_root(rootfs, "etc/passwd")?.unwrap_or_default();
    let group = read_in_root(rootfs, "etc/group")?.unwrap_or_default();
    let (uid, pgid) = match (passwd_entry(&passwd, u), u.parse::<u32>()) {
        (Some(e), _) => e,
        (None, Ok(n)) => (n, 0),
        (None, Err(_)) => return Err(bad(format!("user {u:?} is not in the image's /etc/passwd"))),
    };
    let name = passwd
        .lines()
        .find(|l| l.split(':').nth(2) == Some(&uid.to_string()))
        .and_then(|l| l.split(':').next())
        .unwrap_or(u);
    let (gid_named, extra) = group_entries(&group, g, name);
    let gid = match (g, gid_named) {
        (None, _) => pgid,
        (Some(_), Some(n)) => n,
        (Some(g), None) => g
            .parse()
            .map_err(|_| bad(format!("group {g:?} is not in the image's /etc/group")))?,
    };
    let mut user = User::default();
    user.set_uid(uid);
    user.set_gid(gid);
    if g.is_none() && !extra.is_empty() {
        user.set_additional_gids(Some(extra));
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(json: &str) -> ImageConfiguration {
        serde_json::from_str(json).unwrap()
    }

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www:/var/www:/usr/sbin/nologin\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nwww-data:x:33:\nadm:x:4:www-data\n",
        )
        .unwrap();
        d
    }

    const APACHE: &str = r#"{"architecture":"amd64","os":"linux",
        "config":{"Entrypoint":["/entry.sh"],"Cmd":["apache2ctl","-D","FOREGROUND"],
        "Env":["PATH=/usr/bin:/bin","LANG=C"],"WorkingDir":"/var/www","User":"www-data",
        "ExposedPorts":{"80/tcp":{}},"Volumes":{"/data":{}},"StopSignal":"SIGWINCH",
        "Labels":{"maintainer":"virtkit"}},
        "rootfs":{"type":"layers","diff_ids":[]}}"#;

    #[test]
    fn the_image_config_becomes_the_process_and_annotations() {
        let r = rootfs();
        let s = runtime_spec(
            Spec::default(),
            &image(APACHE),
            r.path(),
            &RunOptions::default(),
        )
        .unwrap();
        let p = s.process().as_ref().unwrap();
        assert_eq!(
            p.args().as_ref().unwrap(),
            &["/entry.sh", "apache2ctl", "-D", "FOREGROUND"]
        );
        assert_eq!(p.env().as_ref().unwrap(), &["PATH=/usr/bin:/bin", "LANG=C"]);
        assert_eq!(p.cwd(), Path::new("/var/www"));
        assert_eq!((p.user().uid(), p.user().gid()), (33, 33));
        assert_eq!(p.user().additional_gids().as_ref().unwrap(), &[4]);
        let a = s.annotations().as_ref().unwrap();
        assert_eq!(a[annotations::STOP_SIGNAL], "SIGWINCH");
        assert_eq!(a[annotations::EXPOSED_PORTS], "80/tcp");
        assert_eq!(a[annotations::VOLUMES], "/data");
        assert_eq!(a["maintainer"], "virtkit");
        assert_eq!(s.root().as_ref().unwrap().path(), r.path());
    }

    #[test]
    fn user_flags_override_as_docker_does() {
        let r = rootfs();
        let run = |o: RunOptions| runtime_spec(Spec::default(), &image(APACHE), r.path(), &o);
        // Arguments replace Cmd, not Entrypoint.
        let s = run(RunOptions {
            args: vec!["ls".into()],
            ..RunOptions::default()
        })
        .unwrap();
        assert_eq!(
            s.process().as_ref().unwrap().args().as_ref().unwrap(),
            &["/entry.sh", "ls"]
        );
        // --entrypoint drops the image's Cmd.
        let s = run(RunOptions {
            entrypoint: Some(vec!["/bin/sh".into()]),
            ..RunOptions::default()
        })
        .unwrap();
        assert_eq!(
            s.process().as_ref().unwrap().args().as_ref().unwrap(),
            &["/bin/sh"]
        );
        // -e replaces by key, -w, -u name:group and uid:gid.
        let s = run(RunOptions {
            env: vec!["LANG=en_US.UTF-8".into(), "EMPTY".into()],
            workdir: Some("/tmp".into()),
            user: Some("root:adm".into()),
            ..RunOptions::default()
        })
        .unwrap();
        let p = s.process().as_ref().unwrap();
        assert_eq!(
            p.env().as_ref().unwrap(),
            &["PATH=/usr/bin:/bin", "LANG=en_US.UTF-8", "EMPTY="]
        );
        assert_eq!(p.cwd(), Path::new("/tmp"));
        assert_eq!((p.user().uid(), p.user().gid()), (0, 4));
        let s = run(RunOptions {
            user: Some("1000:1000".into()),
            ..RunOptions::default()
        })
        .unwrap();
        assert_eq!(s.process().as_ref().unwrap().user().uid(), 1000);
    }

    #[test]
    fn volumes_and_tmpfs_become_mounts() {
        let r = rootfs();
        let o = RunOptions {
            binds: vec![Bind {
                source: "/srv/data".into(),
                destination: "/data".into(),
                read_only: true,
            }],
            tmpfs: vec!["/scratch".into()],
            ..RunOptions::default()
        };
        let s = runtime_spec(Spec::default(), &image(APACHE), r.path(), &o).unwrap();
        let m = s.mounts().as_ref().unwrap();
        let data = m
            .iter()
            .find(|m| m.destination() == Path::new("/data"))
            .unwrap();
        assert_eq!(data.source().as_deref(), Some(Path::new("/srv/data")));
        assert_eq!(
            data.options().as_ref().unwrap(),
            &["rbind", "rprivate", "ro"]
        );
        let t = m
            .iter()
            .find(|m| m.destination() == Path::new("/scratch"))
            .unwrap();
        assert_eq!(t.typ().as_deref(), Some("tmpfs"));
        let bad = RunOptions {
            binds: vec![Bind {
                source: "relative".into(),
                destination: "/x".into(),
                read_only: false,
            }],
            ..RunOptions::default()
        };
        let e = runtime_spec(Spec::default(), &image(APACHE), r.path(), &bad).unwrap_err();
        assert!(e.to_string().contains("must be absolute"), "{e}");
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let r = rootfs();
        let none = image(
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        );
        let e = runtime_spec(Spec::default(), &none, r.path(), &RunOptions::default()).unwrap_err();
        assert!(e.to_string().contains("no command"), "{e}");
        let run = |o: RunOptions| {
            runtime_spec(Spec::default(), &image(APACHE), r.path(), &o)
                .unwrap_err()
                .to_string()
        };
        assert!(run(RunOptions {
            user: Some("nobody-here".into()),
            ..RunOptions::default()
        })
        .contains("not in the image's /etc/passwd"));
        assert!(run(RunOptions {
            user: Some("root:nogroup".into()),
            ..RunOptions::default()
        })
        .contains("not in the image's /etc/group"));
        assert!(run(RunOptions {
            workdir: Some("relative".into()),
            ..RunOptions::default()
        })
        .contains("not absolute"));
        assert!(run(RunOptions {
            env: vec!["=x".into()],
            ..RunOptions::default()
        })
        .contains("no name"));
    }

    #[test]
    fn the_image_passwd_is_read_inside_the_root_not_through_a_link_out() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        // A hostile image whose passwd points at the host's.
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("etc/passwd")).unwrap();
        // Resolved inside the root, the link points at itself: an error, never the
        // host's www-data (uid 33 on Debian too).
        let r = runtime_spec(
            Spec::default(),
            &image(APACHE),
            d.path(),
            &RunOptions::default(),
        );
        assert!(r.is_err(), "{r:?}");
    }
}
