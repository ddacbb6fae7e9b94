//! A token server for Docker's registry token authentication, so tests run the real
//! `docker-registry` with `auth: token`: the registry answers 401 with a `Bearer`
//! challenge naming this server; a client fetches a JWT here with its basic-auth
//! credentials and presents it. Tokens are RS256, signed with `openssl dgst` by a key
//! whose self-signed certificate is the registry's `rootcertbundle` and travels in the
//! token's `x5c` header.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;

use super::openssl;
use crate::error::{LabError, Result};

/// The issuer and service names in the registry's config and the tokens.
pub const ISSUER: &str = "virtkit-token";
/// The service (the token's audience).
pub const SERVICE: &str = "virtkit-registry";

/// A running token server; stops when dropped.
#[derive(Debug)]
pub struct TokenServer {
    /// `http://127.0.0.1:PORT/token`.
    pub realm: String,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    /// Tokens issued (to check that a client used the token flow).
    pub issued: Arc<AtomicUsize>,
    addr: String,
}

struct Signer {
    key: PathBuf,
    x5c: String,
    basic: String,
}

impl Signer {
    fn token(&self, user: &str, scope: &str) -> Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // `repository:NAME:pull,push`; the name may itself hold no ':'.
        let access: Vec<serde_json::Value> = scope
            .split(' ')
            .filter_map(|s| {
                let mut p = s.splitn(3, ':');
                let (t, n, a) = (p.next()?, p.next()?, p.next()?);
                Some(serde_json::json!({"type": t, "name": n, "actions": a.split(',').collect::<Vec<_>>()}))
            })
            .collect();
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [self.x5c]});
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": user, "aud": SERVICE, "exp": now + 600, "nbf": now - 60,
            "iat": now, "jti": format!("{now}-{}", std::process::id()), "access": access
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let key = self.key.to_string_lossy().into_owned();
        let sig = openssl(
            &["dgst", "-sha256", "-sign", &key],
            Some(signing_input.as_bytes()),
        )?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }
}

fn query_param<'a>(path: &'a str, name: &str) -> Vec<&'a str> {
    path.split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn serve(mut s: TcpStream, signer: &Signer, user: &str, issued: &AtomicUsize) -> Result<()> {
    let mut r = BufReader::new(s.try_clone().map_err(LabError::io("cloning", "a socket"))?);
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(LabError::io("reading", "a request"))?;
    let path = line.split(' ').nth(1).unwrap_or("/").to_string();
    let mut auth = String::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)
            .map_err(LabError::io("reading", "a request"))?
            == 0
            || h.trim().is_empty()
        {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                auth = v.trim().to_string();
            }
        }
    }
    let reply = if auth == signer.basic {
        let scopes: Vec<String> = query_param(&path, "scope")
            .into_iter()
            .map(unescape)
            .collect();
        let tok = signer.token(user, &scopes.join(" "))?;
        issued.fetch_add(1, Ordering::SeqCst);
        let body =
            serde_json::json!({"token": tok, "access_token": tok, "expires_in": 600}).to_string();
        format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
    } else {
        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"virtkit-token\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
    };
    s.write_all(reply.as_bytes())
        .map_err(LabError::io("writing", "a reply"))
}

impl TokenServer {
    /// Makes a key and certificate under `dir` and serves tokens to `user`/`password`.
    pub fn start(dir: &Path, user: &str, password: &str) -> Result<TokenServer> {
        std::fs::create_dir_all(dir).map_err(LabError::io("creating", dir))?;
        let (key, cert) = (dir.join("token-key.pem"), dir.join("token-cert.pem"));
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=virtkit-token",
                "-keyout",
                &key.to_string_lossy(),
                "-out",
                &cert.to_string_lossy(),
            ],
            None,
        )?;
        let der = openssl(
            &["x509", "-in", &cert.to_string_lossy(), "-outform", "der"],
            None,
        )?;
        let signer = Signer {
            key,
            x5c: STANDARD.encode(der),
            basic: format!("Basic {}", STANDARD.encode(format!("{user}:{password}"))),
        };
        let l = TcpListener::bind("127.0.0.1:0").map_err(LabError::io("binding", "127.0.0.1:0"))?;
        let addr = l
            .local_addr()
            .map_err(LabError::io("binding", "127.0.0.1:0"))?
            .to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let issued = Arc::new(AtomicUsize::new(0));
        let (st, iss, user) = (stop.clone(), issued.clone(), user.to_string());
        std::thread::spawn(move || {
            for s in l.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(s) = s {
                    if let Err(e) = serve(s, &signer, &user, &iss) {
                        eprintln!("virtkit-lab token server: {e}");
                    }
                }
            }
        });
        Ok(TokenServer {
            realm: format!("http://{addr}/token"),
            dir: dir.to_path_buf(),
            stop,
            issued,
            addr,
        })
    }

    /// The `auth:` section of a registry config trusting this server.
    pub fn registry_config(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.realm,
            self.dir.join("token-cert.pem").display()
        )
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(&self.addr);
    }
}
