//! Demo part: the seed's `docker build` / `run -d -p` workflow with `virtkit`: an image
//! built from a Dockerfile (busybox httpd and a page), run detached with a published
//! port, fetched over HTTP from the host's loopback, listed, stopped and removed.

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

fn get(port: u16) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Builds, runs with `-d -p`, fetches the page, stops and removes.
pub fn demo_web() -> Result<()> {
    virtkit_lab::ensure_packages(&["busybox-static", "nftables"])?;
    let runner = virtkit_lab::static_binary("container-runner", "container-runner")?;
    super::cargo(&["build", "-q", "-p", "virtkit"])?;
    let virtkit = virtkit_lab::workspace_root()?.join("target/debug/virtkit");
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("state");
    let vk = |args: &[&str]| -> Result<String> {
        let out = Command::new(&virtkit)
            .arg("--root")
            .arg(&root)
            .arg("--runtime")
            .arg(&runner)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("virtkit {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let layout = virtkit_lab::registry::busybox_layout(dir.path(), &["/bin/sh"], &[])?;
    vk(&["load", "-i", &layout.to_string_lossy(), "busybox:demo"])?;
    let ctx = dir.path().join("ctx");
    std::fs::create_dir(&ctx)?;
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox:demo\n\
         RUN mkdir -p /www && echo '<h1>web: served by a virtkit container</h1>' > /www/index.html\n\
         EXPOSE 80\n\
         CMD [\"busybox\", \"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]\n",
    )?;
    vk(&["build", "-t", "web:demo", &ctx.to_string_lossy()])?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let published = format!("{port}:80");
    vk(&[
        "run",
        "-d",
        "--name",
        "webserver",
        "-p",
        &published,
        "web:demo",
    ])?;
    let result = (|| {
        eprint!("{}", vk(&["ps"])?);
        let t0 = Instant::now();
        let page = loop {
            match get(port) {
                Ok(p) if p.contains("200 OK") => break p,
                r if t0.elapsed() > Duration::from_secs(20) => {
                    bail!("no HTTP 200 from 127.0.0.1:{port}: {r:?}")
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let body = page.split("\r\n\r\n").nth(1).unwrap_or("");
        eprint!("GET http://127.0.0.1:{port}/ -> {body}");
        if !body.contains("web: served by a virtkit container") {
            bail!("unexpected page {page:?}");
        }
        vk(&["stop", "-t", "2", "webserver"])?;
        eprint!("{}", vk(&["ps", "-a"])?);
        Ok(())
    })();
    vk(&["rm", "-f", "webserver"])?;
    result
}
