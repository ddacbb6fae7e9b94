//! Container networking for real (root, `nft` installed): two network namespaces on a
//! network of their own reach each other, a published port answers from the host's
//! loopback and from another "host" (a namespace behind a veth, routed through this one),
//! and detaching and removing the network leaves no interface and no rule.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::time::Duration;

use virtkit_net::bridge::RtNetlink;
use virtkit_net::container::{attach, detach, host_ifname, publish, remove_network};
use virtkit_net::firewall;
use virtkit_net::ipam::Networks;
use virtkit_net::netns::NetNs;
use virtkit_net::ports::{reserve, PortMapping};

fn serve(l: TcpListener, reply: &'static str) {
    std::thread::spawn(move || {
        for s in l.incoming() {
            let mut s = s.unwrap();
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf);
            s.write_all(reply.as_bytes()).unwrap();
        }
    });
}

fn fetch(to: (Ipv4Addr, u16)) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"hi")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn root_containers_reach_each_other_and_published_ports_answer() {
    if std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("this test needs the nft tool (apt-get install nftables)");
    }
    let d = tempfile::tempdir().unwrap();
    let nets = Networks::open(d.path().join("net")).unwrap();
    let tag = std::process::id() % 200;
    let name = format!("t{}", std::process::id() % 100_000);
    let net = nets
        .create(&name, Some(format!("10.231.{tag}.0/24").parse().unwrap()))
        .unwrap();
    let (a, b) = (
        NetNs::create(&d.path().join("ns-a")).unwrap(),
        NetNs::create(&d.path().join("ns-b")).unwrap(),
    );
    let (ida, idb) = (format!("a{name}"), format!("b{name}"));
    let (_, ip_a) = nets.allocate(&name, &ida).unwrap();
    let (_, ip_b) = nets.allocate(&name, &idb).unwrap();
    attach(&net, ip_a, &a, &host_ifname(&ida)).unwrap();
    attach(&net, ip_b, &b, &host_ifname(&idb)).unwrap();
    // Attaching again (what a restart after a crash does) replaces the veth.
    attach(&net, ip_b, &b, &host_ifname(&idb)).unwrap();

    let l = b
        .run(move || TcpListener::bind((ip_b, 80)))
        .unwrap()
        .unwrap();
    serve(l, "from b");
    assert_eq!(a.run(move || fetch((ip_b, 80))).unwrap().unwrap(), "from b");

    // Published: the host's loopback and another host both reach b:80.
    let mut p: PortMapping = "80".parse().unwrap();
    reserve(&mut p).unwrap();
    publish(&idb, ip_b, &[p]).unwrap();
    assert_eq!(fetch((Ipv4Addr::LOCALHOST, p.host_port)).unwrap(), "from b");
    // UDP: an echo server in b, published on a host port of its own.
    let u = b
        .run(move || std::net::UdpSocket::bind((ip_b, 53)))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = u.recv_from(&mut buf) {
            let _ = u.send_to(&buf[..n], from);
        }
    });
    let mut pu: PortMapping = "127.0.0.1::53/udp".parse().unwrap();
    reserve(&mut pu).unwrap();
    publish(&format!("u{idb}"), ip_b, &[pu]).unwrap();
    let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.send_to(b"ping", ("127.0.0.1", pu.host_port)).unwrap();
    let mut buf = [0u8; 16];
    let (n, _) = c.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping");
    // The same host port and protocol cannot be published twice.
    assert!(publish("other", ip_a, &[pu]).is_err());
    firewall::remove_rules(&firewall::container_comment(&format!("u{idb}"))).unwrap();
    // "Another host": a namespace behind a veth with its own /30, routed here.
    let outside = NetNs::create(&d.path().join("ns-out")).unwrap();
    let (h_if, o_if) = (format!("vko{tag}"), format!("vki{tag}"));
    let (h_ip, o_ip) = (
        Ipv4Addr::new(10, 232, tag as u8, 1),
        Ipv4Addr::new(10, 232, tag as u8, 2),
    );
    let mut nl = RtNetlink::new().unwrap();
    nl.delete_link(&h_if).unwrap();
    nl.create_veth(&h_if, &o_if).unwrap();
    nl.add_address(&h_if, IpAddr::V4(h_ip), 30).unwrap();
    nl.set_up(&h_if, true).unwrap();
    nl.move_to_netns(&o_if, std::os::fd::AsFd::as_fd(&outside.open().unwrap()))
        .unwrap();
    let o = o_if.clone();
    outside
        .run(move || {
            let mut n = RtNetlink::new().unwrap();
            n.add_address(&o, IpAddr::V4(o_ip), 30).unwrap();
            n.set_up(&o, true).unwrap();
            n.set_up("lo", true).unwrap();
            n.add_default_route(h_ip).unwrap();
        })
        .unwrap();
    let port = p.host_port;
    assert_eq!(
        outside.run(move || fetch((h_ip, port))).unwrap().unwrap(),
        "from b"
    );
    // And a container of the network reaches it through the host (hairpin).
    assert_eq!(
        a.run(move || fetch((net_gw(ip_a), port))).unwrap().unwrap(),
        "from b"
    );

    // Undo: no rule, no veth, no bridge.
    detach(&ida, &host_ifname(&ida)).unwrap();
    detach(&idb, &host_ifname(&idb)).unwrap();
    assert!(firewall::rules_of(&firewall::container_comment(&idb))
        .unwrap()
        .is_empty());
    assert!(nl.link(&host_ifname(&ida)).unwrap().is_none());
    remove_network(&net).unwrap();
    assert!(nl.link(&net.bridge).unwrap().is_none());
    assert!(firewall::rules_of(&firewall::network_comment(&name))
        .unwrap()
        .is_empty());
    nl.delete_link(&h_if).unwrap();
    for ns in ["ns-a", "ns-b", "ns-out"] {
        NetNs::remove(&d.path().join(ns)).unwrap();
    }
    assert!(!std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(d.path().to_str().unwrap()));
}

fn net_gw(ip: Ipv4Addr) -> Ipv4Addr {
    let o = ip.octets();
    Ipv4Addr::new(o[0], o[1], o[2], 1)
}
