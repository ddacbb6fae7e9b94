//! The seed's scenario with a real server (root, `nft`, debootstrap on first use): a
//! Debian 12 image with apache2 (`virtkit_lab::apache::apache2_layout`, cached under
//! `target/apache2/`) pushed into a real registry, `virtkit pull`, `virtkit run -d -p
//! PORT:80 ... apache2ctl -D FOREGROUND` with container-runner, Apache's default page
//! from the host's loopback and from another "host" (a network namespace behind a veth,
//! routed through this one), `stop`, `start`, `logs`, `rm -f`, and nothing left behind:
//! no rule, no container veth, no mount under the state directory.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::{http_get as get, nothing_left, text, Vk};
use virtkit_lab::apache::{apache2_layout, APACHE2_REFERENCE};
use virtkit_lab::registry::TestRegistry;
use virtkit_net::bridge::RtNetlink;
use virtkit_net::netns::NetNs;

/// Apache's default page, within 30 s.
fn default_page(to: SocketAddr) -> Result<String, String> {
    let t0 = Instant::now();
    loop {
        match get(to) {
            Ok(r) if r.starts_with("HTTP/1.1 200") => {
                return if r.contains("Apache2 Debian Default Page") || r.contains("It works") {
                    Ok(r)
                } else {
                    Err(format!("not Apache's default page: {r}"))
                };
            }
            r if t0.elapsed() > Duration::from_secs(30) => {
                return Err(format!("no HTTP 200 from {to}: {r:?}"))
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// 8080 as in the issue, else a free port.
fn host_port() -> u16 {
    if std::net::TcpListener::bind("0.0.0.0:8080").is_ok() {
        return 8080;
    }
    common::free_port()
}

/// "Another host": a namespace behind a veth with its own /30, its default route
/// through this host. Removed (namespace and veth) when dropped.
struct Outside {
    ns: NetNs,
    host_if: String,
    host_ip: Ipv4Addr,
}

impl Outside {
    fn new(dir: &Path) -> Outside {
        let tag = (std::process::id() % 200) as u8;
        let ns = NetNs::create(&dir.join("ns-outside")).unwrap();
        let (host_if, peer_if) = (format!("vkao{tag}"), format!("vkai{tag}"));
        let (host_ip, peer_ip) = (
            Ipv4Addr::new(10, 233, tag, 1),
            Ipv4Addr::new(10, 233, tag, 2),
        );
        let mut nl = RtNetlink::new().unwrap();
        nl.delete_link(&host_if).unwrap();
        nl.create_veth(&host_if, &peer_if).unwrap();
        nl.add_address(&host_if, IpAddr::V4(host_ip), 30).unwrap();
        nl.set_up(&host_if, true).unwrap();
        nl.move_to_netns(&peer_if, std::os::fd::AsFd::as_fd(&ns.open().unwrap()))
            .unwrap();
        ns.run(move || {
            let mut n = RtNetlink::new().unwrap();
            n.add_address(&peer_if, IpAddr::V4(peer_ip), 30).unwrap();
            n.set_up(&peer_if, true).unwrap();
            n.set_up("lo", true).unwrap();
            n.add_default_route(host_ip).unwrap();
        })
        .unwrap();
        Outside {
            ns,
            host_if,
            host_ip,
        }
    }

    /// Apache's default page at this host's end of the veth, fetched from outside.
    fn default_page(&self, port: u16) -> Result<String, String> {
        let to = SocketAddr::from((self.host_ip, port));
        self.ns.run(move || default_page(to)).unwrap()
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        if let Ok(mut nl) = RtNetlink::new() {
            let _ = nl.delete_link(&self.host_if);
        }
        let _ = NetNs::remove(self.ns.path());
    }
}

#[test]
fn root_apache2_image_pulled_run_published_stopped_started_removed() {
    let layout = apache2_layout().unwrap();
    let d = tempfile::tempdir().unwrap();
    let reg = TestRegistry::start(d.path(), None).unwrap();
    reg.push(&layout, APACHE2_REFERENCE, "vk/apache2:12", None)
        .unwrap();
    let image = format!("{}/vk/apache2:12", reg.addr);
    let vk = Vk::new(d.path().join("state"));
    vk.ok(&["pull", &image]);
    assert!(vk.ok(&["images"]).contains(&image));

    let port = host_port();
    let publish = format!("{port}:80");
    let id = vk.ok(&[
        "run",
        "-d",
        "--name",
        "webserver",
        "-p",
        &publish,
        &image,
        "apache2ctl",
        "-D",
        "FOREGROUND",
    ]);
    assert_eq!(id.trim().len(), 64, "{id}");
    let local = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let logs = |vk: &Vk| text(&vk.run(&["logs", "webserver"]));
    default_page(local).unwrap_or_else(|e| panic!("{e}\nlogs: {}", logs(&vk)));
    let ps = vk.ok(&["ps"]);
    assert!(
        ps.contains("webserver") && ps.contains("Up") && ps.contains(&format!("{port}->80/tcp")),
        "{ps}"
    );
    let outside = Outside::new(d.path());
    outside
        .default_page(port)
        .unwrap_or_else(|e| panic!("from another host: {e}"));

    vk.ok(&["stop", "-t", "5", "webserver"]);
    let ps = vk.ok(&["ps", "-a"]);
    assert!(ps.contains("Exited"), "{ps}");
    assert!(get(local).is_err(), "still answering after stop");
    vk.ok(&["start", "webserver"]);
    default_page(local).unwrap_or_else(|e| panic!("after start: {e}\nlogs: {}", logs(&vk)));
    outside
        .default_page(port)
        .unwrap_or_else(|e| panic!("from another host after start: {e}"));
    // Apache's start-up complaint (no ServerName in the image), once per start.
    let o = vk.run(&["logs", "webserver"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let all = text(&o);
    assert_eq!(all.matches("AH00558").count(), 2, "{all}");

    vk.ok(&["rm", "-f", "webserver"]);
    assert_eq!(vk.ok(&["ps", "-a", "-q"]), "");
    assert!(get(local).is_err(), "still answering after rm");
    drop(outside);
    nothing_left(&vk.root);
}
