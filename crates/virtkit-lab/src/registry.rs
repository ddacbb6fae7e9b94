//! A real OCI registry for tests: Debian's `docker-registry` (the CNCF distribution)
//! started on a free port of 127.0.0.1 with its storage in a directory of the test's,
//! plain HTTP or TLS with htpasswd basic auth; killed when dropped. And `skopeo` to push
//! an OCI layout into it.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};

pub mod token;

/// A running registry.
#[derive(Debug)]
pub struct TestRegistry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its storage directory.
    pub data: PathBuf,
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn failed(command: &str, out: &std::process::Output) -> LabError {
    LabError::Command {
        command: command.to_string(),
        status: out.status.to_string(),
        output: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(LabError::io("binding", "127.0.0.1:0"))?;
    Ok(l.local_addr()
        .map_err(LabError::io("binding", "127.0.0.1:0"))?
        .port())
}

/// An address nothing listens on (a registry that is down).
pub fn closed_addr() -> Result<String> {
    Ok(format!("127.0.0.1:{}", free_port()?))
}

/// TLS for [`TestRegistry::start`]: `cert.pem` and `key.pem` (self-signed for
/// 127.0.0.1) and `htpasswd` (bcrypt) in `dir`.
#[derive(Debug, Clone)]
pub struct TlsAuth {
    /// The directory holding the three files.
    pub dir: PathBuf,
}

impl TlsAuth {
    /// Makes a self-signed certificate for 127.0.0.1 (`openssl`) and an htpasswd file
    /// with `user:password` (`htpasswd` from apache2-utils) in `dir`.
    pub fn make(dir: &Path, user: &str, password: &str) -> Result<TlsAuth> {
        let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
                &key.to_string_lossy(),
                "-out",
                &cert.to_string_lossy(),
            ],
            None,
        )?;
        let h = Command::new("htpasswd")
            .args(["-Bbn", user, password])
            .output()
            .map_err(LabError::io(
                "running",
                "htpasswd (apt-get install apache2-utils)",
            ))?;
        std::fs::write(dir.join("htpasswd"), h.stdout)
            .map_err(LabError::io("writing", dir.join("htpasswd")))?;
        Ok(TlsAuth {
            dir: dir.to_path_buf(),
        })
    }

    /// The certificate (it is its own CA).
    pub fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
}

impl TestRegistry {
    /// Starts a registry with its storage and config under `dir`.
    pub fn start(dir: &Path, tls: Option<&TlsAuth>) -> Result<TestRegistry> {
        Self::start_with(dir, tls, "")
    }

    /// A plain-HTTP registry that wants tokens from `tokens` (Docker's token auth).
    pub fn start_token(dir: &Path, tokens: &token::TokenServer) -> Result<TestRegistry> {
        Self::start_with(dir, None, &tokens.registry_config())
    }

    fn start_with(dir: &Path, tls: Option<&TlsAuth>, extra: &str) -> Result<TestRegistry> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let data = dir.join("registry-data");
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            data.display()
        );
        if let Some(t) = tls {
            cfg.push_str(&format!(
                "  tls:\n    certificate: {0}/cert.pem\n    key: {0}/key.pem\nauth:\n  htpasswd:\n    realm: virtkit\n    path: {0}/htpasswd\n",
                t.dir.display()
            ));
        }
        cfg.push_str(extra);
        let cfg_path = dir.join("registry.yml");
        std::fs::write(&cfg_path, cfg).map_err(LabError::io("writing", &cfg_path))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(LabError::io(
                "running",
                "docker-registry (apt-get install docker-registry)",
            ))?;
        let reg = TestRegistry { child, addr, data };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&reg.addr).is_err() {
            if Instant::now() > deadline {
                return Err(LabError::BadInput(format!(
                    "the registry did not listen on {}",
                    reg.addr
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(reg)
    }

    /// Pushes the image `reference` of the OCI layout `layout` (every platform of an
    /// index) to `dest` (`repository:tag`) in this registry with `skopeo copy --all`.
    /// `tls` with credentials for a TLS registry.
    pub fn push(
        &self,
        layout: &Path,
        reference: &str,
        dest: &str,
        tls: Option<(&TlsAuth, &str)>,
    ) -> Result<()> {
        self.push_with(layout, reference, dest, tls, &[])
    }

    /// [`TestRegistry::push`] with more `skopeo copy` flags (`--format v2s2`: Docker
    /// schema 2 manifests and manifest lists instead of OCI ones).
    pub fn push_with(
        &self,
        layout: &Path,
        reference: &str,
        dest: &str,
        tls: Option<(&TlsAuth, &str)>,
        extra: &[&str],
    ) -> Result<()> {
        let mut c = Command::new("skopeo");
        c.args(["copy", "--all", "--quiet"]).args(extra);
        match tls {
            None => {
                c.arg("--dest-tls-verify=false");
            }
            Some((t, creds)) => {
                let certs = t.dir.join("certs.d");
                std::fs::create_dir_all(&certs).map_err(LabError::io("creating", &certs))?;
                std::fs::copy(t.cert(), certs.join("ca.crt"))
                    .map_err(LabError::io("copying", t.cert()))?;
                c.arg("--dest-cert-dir")
                    .arg(&certs)
                    .args(["--dest-creds", creds]);
            }
        }
        let out = c
            .arg(format!("oci:{}:{reference}", layout.display()))
            .arg(format!("docker://{}/{dest}", self.addr))
            .output()
            .map_err(LabError::io("running", "skopeo (apt-get install skopeo)"))?;
        if !out.status.success() {
            return Err(failed("skopeo copy", &out));
        }
        Ok(())
    }
}

/// Runs `openssl ARGS` with `input` on its stdin; its stdout, or an error with its stderr.
pub(crate) fn openssl(args: &[&str], input: Option<&[u8]>) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(LabError::io("running", "openssl (apt-get install openssl)"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.unwrap_or_default())
            .map_err(LabError::io("writing to", "openssl"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(LabError::io("running", "openssl"))?;
    if !out.status.success() {
        return Err(failed(&format!("openssl {}", args.join(" ")), &out));
    }
    Ok(out.stdout)
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let sum = sha2::Sha256::digest(bytes);
    let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// An OCI image layout being written (for tests and benchmarks that push images).
#[derive(Debug)]
pub struct OciLayout {
    dir: PathBuf,
}

impl OciLayout {
    /// Starts the layout at `dir`: `oci-layout` and an empty `blobs/sha256`.
    pub fn create(dir: &Path) -> Result<OciLayout> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(LabError::io("creating", &blobs))?;
        let p = dir.join("oci-layout");
        std::fs::write(&p, br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(LabError::io("writing", &p))?;
        Ok(OciLayout {
            dir: dir.to_path_buf(),
        })
    }

    /// Writes `bytes` as a blob; its descriptor (media type, digest, size).
    pub fn blob(&self, media_type: &str, bytes: &[u8]) -> Result<serde_json::Value> {
        let d = digest(bytes);
        let p = self.dir.join("blobs/sha256").join(&d[7..]);
        std::fs::write(&p, bytes).map_err(LabError::io("writing", &p))?;
        Ok(serde_json::json!({"mediaType": media_type, "digest": d, "size": bytes.len()}))
    }

    /// Writes `index.json` listing `manifests`; the layout's directory.
    pub fn finish(self, manifests: Vec<serde_json::Value>) -> Result<PathBuf> {
        let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
        let p = self.dir.join("index.json");
        std::fs::write(&p, index.to_string()).map_err(LabError::io("writing", &p))?;
        Ok(self.dir)
    }

    /// Writes a one-layer linux/amd64 image: `layer` as a blob of `media_type`, `diff_id`
    /// the digest of its uncompressed tar, `config` the image config's `config` object;
    /// then `index.json` naming it `reference`. The layout's directory.
    pub fn finish_image(
        self,
        media_type: &str,
        layer: &[u8],
        diff_id: &str,
        config: serde_json::Value,
        reference: &str,
    ) -> Result<PathBuf> {
        let ld = self.blob(media_type, layer)?;
        let config = serde_json::json!({"architecture": "amd64", "os": "linux",
            "config": config, "rootfs": {"type": "layers", "diff_ids": [diff_id]}});
        let cd = self.blob(
            "application/vnd.oci.image.config.v1+json",
            config.to_string().as_bytes(),
        )?;
        let manifest = serde_json::json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": cd, "layers": [ld]});
        let mut md = self.blob(
            "application/vnd.oci.image.manifest.v1+json",
            manifest.to_string().as_bytes(),
        )?;
        md["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": reference});
        self.finish(vec![md])
    }
}

/// An OCI image layout at `dir/layout` holding one image, reference `v1`: one
/// uncompressed layer with the host's static busybox as `/bin/busybox` and `sh`, `echo`,
/// `cat`, `id` linked to it; its config runs `cmd` with `env` in `/bin`.
pub fn busybox_layout(dir: &Path, cmd: &[&str], env: &[&str]) -> Result<PathBuf> {
    let l = OciLayout::create(&dir.join("layout"))?;
    let mut b = tar::Builder::new(Vec::new());
    b.append_path_with_name("/bin/busybox", "bin/busybox")
        .map_err(LabError::io(
            "adding",
            "/bin/busybox (apt-get install busybox-static)",
        ))?;
    for link in ["sh", "echo", "cat", "id"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        b.append_link(&mut h, format!("bin/{link}"), "busybox")
            .map_err(LabError::io("adding", link))?;
    }
    let layer = b
        .into_inner()
        .map_err(LabError::io("finishing", "the layer"))?;
    l.finish_image(
        "application/vnd.oci.image.layer.v1.tar",
        &layer,
        &digest(&layer),
        serde_json::json!({"Cmd": cmd, "Env": env, "WorkingDir": "/bin"}),
        "v1",
    )
}
