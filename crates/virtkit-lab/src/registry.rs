//! A real OCI registry for tests: Debian's `docker-registry` (the CNCF distribution)
//! started on a free port of 127.0.0.1 with its storage in a directory of the test's,
//! plain HTTP or TLS with htpasswd basic auth; killed when dropped. And `skopeo` to push
//! an OCI layout into it.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};

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
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
            ])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .output()
            .map_err(LabError::io("running", "openssl"))?;
        if !out.status.success() {
            return Err(failed("openssl req", &out));
        }
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
        let mut c = Command::new("skopeo");
        c.args(["copy", "--all", "--quiet"]);
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
