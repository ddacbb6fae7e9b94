//! Tests with real tap devices and bridges. They need root (CAP_NET_ADMIN
//! and CAP_SYS_ADMIN for `unshare(CLONE_NEWNET)`); each runs in a thread
//! with its own network namespace, so they touch nothing on the host and
//! can run in parallel.
#![allow(clippy::unwrap_used)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtkit_net::bridge::{self, BridgeError, RtNetlink};
use virtkit_net::features::*;
use virtkit_net::net::Net;
use virtkit_net::tap::{Tap, TapError, TapOptions};
use virtkit_net::testing::DriverQueue;
use virtkit_net::MacAddr;
use virtkit_virtio::{ActiveQueue, Interrupt, InterruptReason, VirtioDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Run `f` on a thread inside a fresh network namespace (with IPv6 off, so
/// the kernel sends no autoconfiguration frames on our interfaces).
fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare has no memory arguments; CLONE_NEWNET only moves
        // this thread to a new network namespace.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            r,
            0,
            "unshare(CLONE_NEWNET) failed: root tests need root: {}",
            io::Error::last_os_error()
        );
        // A private mount namespace with a sysfs of this network namespace: sysfs shows
        // the namespace it was mounted in (virtkit_net::tap_share reads it).
        // SAFETY: unshare and mount take no memory but the C strings built here, which
        // live across the calls; they only change this thread's mount namespace.
        unsafe {
            assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare(CLONE_NEWNS)");
            let root = std::ffi::CString::new("/").unwrap();
            let sys = std::ffi::CString::new("/sys").unwrap();
            let sysfs = std::ffi::CString::new("sysfs").unwrap();
            let flags = libc::MS_REC | libc::MS_PRIVATE;
            assert_eq!(
                libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    flags,
                    std::ptr::null()
                ),
                0
            );
            assert_eq!(
                libc::mount(
                    sysfs.as_ptr(),
                    sys.as_ptr(),
                    sysfs.as_ptr(),
                    0,
                    std::ptr::null()
                ),
                0,
                "mounting a sysfs: {}",
                io::Error::last_os_error()
            );
        }
        let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
        let _ = std::fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1");
        f()
    })
    .join()
    .unwrap()
}

#[test]
fn root_tap_lifecycle_mtu_up_persist() {
    in_netns(|| {
        let opts = TapOptions {
            mtu: Some(9000),
            ..TapOptions::default()
        };
        let tap = Tap::open("vk%d", &opts).unwrap();
        assert_eq!(tap.name(), "vk0");
        let mut nl = RtNetlink::new().unwrap();
        let l = nl.link("vk0").unwrap().expect("tap exists");
        assert_eq!(l.kind.as_deref(), Some("tun"));
        assert!(l.up);
        assert_eq!(l.mtu, Some(9000));
        assert_eq!(tap.mtu().unwrap(), 9000);
        tap.set_up(false).unwrap();
        assert!(!tap.is_up().unwrap());
        assert!(!nl.link("vk0").unwrap().unwrap().up);
        let host_mac: MacAddr = "02:aa:bb:cc:dd:ee".parse().unwrap();
        tap.set_host_mac(host_mac).unwrap();
        assert_eq!(nl.link("vk0").unwrap().unwrap().mac, Some(host_mac));
        tap.set_mtu(1400).unwrap();
        assert_eq!(tap.mtu().unwrap(), 1400);
        assert!(matches!(
            tap.set_mtu(70_000),
            Err(TapError::InvalidMtu { mtu: 70_000, .. })
        ));
        // A second open of a busy (non-multiqueue) tap is refused clearly.
        let e = Tap::open("vk0", &TapOptions::default()).unwrap_err();
        assert!(matches!(e, TapError::Busy { .. }), "{e}");
        drop(tap);
        assert!(nl.link("vk0").unwrap().is_none(), "transient tap removed");

        let persistent = TapOptions {
            persistent: true,
            up: false,
            ..TapOptions::default()
        };
        let tap = Tap::open("vkp", &persistent).unwrap();
        drop(tap);
        assert!(nl.link("vkp").unwrap().is_some(), "persistent tap kept");
        let tap = Tap::open("vkp", &TapOptions::default()).unwrap();
        tap.set_persistent(false).unwrap();
        drop(tap);
        assert!(nl.link("vkp").unwrap().is_none());
    });
}

/// Issue #13: a migration's destination on the same host joins the tap its source holds
/// (`TapOptions::shared`), and the tap goes on to the bridge it is already on; any other
/// second open of a tap in use is still refused.
#[test]
fn root_tap_is_shared_only_when_asked() {
    in_netns(|| {
        let mut nl = RtNetlink::new().unwrap();
        nl.create_bridge("vkbr").unwrap();
        let a = Tap::open("vkmq", &TapOptions::default()).unwrap();
        bridge::attach("vkbr", "vkmq").unwrap();
        let e = Tap::open("vkmq", &TapOptions::default()).unwrap_err();
        assert!(matches!(e, TapError::Busy { .. }), "{e}");
        let shared = TapOptions {
            shared: true,
            ..TapOptions::default()
        };
        let b = Tap::open("vkmq", &shared).unwrap();
        // Already a port of that bridge: fine. Of another one: refused.
        bridge::attach("vkbr", "vkmq").unwrap();
        nl.create_bridge("vkbr2").unwrap();
        assert!(bridge::attach("vkbr2", "vkmq").is_err());
        // The source goes; the destination's queue keeps the tap, on its bridge.
        drop(a);
        let l = nl
            .link("vkmq")
            .unwrap()
            .expect("the tap outlives its first holder");
        assert!(l.up);
        drop(b);
        assert!(nl.link("vkmq").unwrap().is_none(), "transient tap removed");
        // A single-queue tap made by someone else is opened as it is, and not shared.
        let sq = std::process::Command::new("ip")
            .args(["tuntap", "add", "vksq", "mode", "tap"])
            .status()
            .unwrap();
        assert!(sq.success());
        let c = Tap::open("vksq", &TapOptions::default()).unwrap();
        let e = Tap::open("vksq", &shared).unwrap_err();
        assert!(matches!(e, TapError::Busy { .. }), "{e}");
        drop(c);
    });
}

#[test]
fn root_bad_input_gives_clear_errors() {
    in_netns(|| {
        // Too long a name.
        let e = Tap::open("a-name-longer-than-15", &TapOptions::default()).unwrap_err();
        assert!(matches!(e, TapError::InvalidName { .. }));
        assert!(e.to_string().contains("longer than 15"), "{e}");
        // Missing bridge.
        let _tap = Tap::open("vkt", &TapOptions::default()).unwrap();
        let e = bridge::attach("nosuchbr", "vkt").unwrap_err();
        assert!(matches!(e, BridgeError::BridgeNotFound(ref n) if n == "nosuchbr"));
        assert!(e.to_string().contains("\"nosuchbr\" does not exist"), "{e}");
        // Not a bridge.
        let e = bridge::attach("lo", "vkt").unwrap_err();
        assert!(matches!(e, BridgeError::NotABridge(_)), "{e}");
        assert!(matches!(
            bridge::delete("lo").unwrap_err(),
            BridgeError::NotABridge(_)
        ));
        // Missing interface.
        bridge::create("vkbr").unwrap();
        let e = bridge::attach("vkbr", "nosuchtap").unwrap_err();
        assert!(matches!(e, BridgeError::InterfaceNotFound(_)), "{e}");
        // A port of one bridge cannot join a second one.
        bridge::create("vkbr2").unwrap();
        bridge::attach("vkbr", "vkt").unwrap();
        let e = bridge::attach("vkbr2", "vkt").unwrap_err();
        assert!(matches!(e, BridgeError::AlreadyExists(_)), "{e}");
        assert!(e.to_string().contains("detach it first"), "{e}");
        // Existing bridge.
        assert!(matches!(
            bridge::create("vkbr").unwrap_err(),
            BridgeError::AlreadyExists(_)
        ));
        assert!(matches!(
            bridge::add_address("vkbr", IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 33).unwrap_err(),
            BridgeError::InvalidPrefix { .. }
        ));
    });
}

#[test]
fn root_no_permission_gives_clear_errors() {
    in_netns(|| {
        bridge::create("vkbr").unwrap();
        let tap = Tap::open("vkt0", &TapOptions::default()).unwrap();
        // Capabilities are per thread: drop CAP_NET_ADMIN from this one.
        caps::drop(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_NET_ADMIN,
        )
        .unwrap();
        let e = Tap::open("vkt", &TapOptions::default()).unwrap_err();
        assert!(matches!(e, TapError::PermissionDenied { .. }), "{e}");
        assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");
        let e = bridge::create("vkbr2").unwrap_err();
        assert!(matches!(e, BridgeError::PermissionDenied { .. }), "{e}");
        let e = bridge::delete("vkbr").unwrap_err();
        assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");
        // The bridge ioctl path says the same.
        let e = bridge::attach("vkbr", tap.name()).unwrap_err();
        assert!(matches!(e, BridgeError::PermissionDenied { .. }), "{e}");
        assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");
    });
}

#[test]
fn root_net_spec_builds_a_device_on_a_bridge() {
    in_netns(|| {
        let spec: virtkit_net::NetSpec = "tap=vkspec,bridge=vkbr,mtu=4000".parse().unwrap();
        // Missing bridge: a clear error, and no tap left behind.
        let e = spec.build().unwrap_err();
        assert!(
            e.to_string().contains("bridge \"vkbr\" does not exist"),
            "{e}"
        );
        let mut nl = RtNetlink::new().unwrap();
        assert!(nl.link("vkspec").unwrap().is_none());
        bridge::create("vkbr").unwrap();
        let net = spec.build().unwrap();
        assert!(net.mac().is_local());
        assert_eq!(net.backend().mtu().unwrap(), 4000);
        let br = nl.link("vkbr").unwrap().unwrap();
        let tap = nl.link("vkspec").unwrap().unwrap();
        assert_eq!(tap.controller, Some(br.index));
        let mut cfg = [0u8; 2];
        net.read_config(10, &mut cfg);
        assert_eq!(u16::from_le_bytes(cfg), 4000);
    });
}

#[test]
fn root_bridge_attach_detach_up_address() {
    in_netns(|| {
        let mut nl = RtNetlink::new().unwrap();
        bridge::create("vkbr").unwrap();
        let br = nl.link("vkbr").unwrap().unwrap();
        assert_eq!(br.kind.as_deref(), Some("bridge"));
        assert!(br.up);
        let tap = Tap::open("vkt", &TapOptions::default()).unwrap();
        bridge::attach("vkbr", tap.name()).unwrap();
        assert_eq!(nl.link("vkt").unwrap().unwrap().controller, Some(br.index));
        bridge::detach("vkt").unwrap();
        assert_eq!(nl.link("vkt").unwrap().unwrap().controller, None);
        bridge::set_up("vkbr", false).unwrap();
        assert!(!nl.link("vkbr").unwrap().unwrap().up);
        bridge::set_up("vkbr", true).unwrap();
        let ip = Ipv4Addr::new(10, 99, 0, 1);
        bridge::add_address("vkbr", IpAddr::V4(ip), 24).unwrap();
        // The address is usable: a socket binds to it.
        UdpSocket::bind((ip, 0)).unwrap();
        assert!(matches!(
            bridge::add_address("vkbr", IpAddr::V4(ip), 24).unwrap_err(),
            BridgeError::AlreadyExists(_)
        ));
        bridge::delete("vkbr").unwrap();
        assert!(nl.link("vkbr").unwrap().is_none());
        assert!(matches!(
            bridge::delete("vkbr").unwrap_err(),
            BridgeError::BridgeNotFound(_)
        ));
    });
}

// ---- virtio-net over a real tap ----

const ETH_P_TEST: u16 = 0x88b5; // IEEE local experimental ethertype
const PACKET_VNET_HDR: libc::c_int = 15;

/// An AF_PACKET socket bound to `ifname`, for `proto` frames.
fn packet_socket(ifname: &str, proto: u16, vnet_hdr: bool) -> OwnedFd {
    // SAFETY: socket(2) has no memory arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto.to_be()),
        )
    };
    assert!(fd >= 0, "{}", io::Error::last_os_error());
    // SAFETY: fd is a fresh socket we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if vnet_hdr {
        let one: libc::c_int = 1;
        // SAFETY: the option value is a live c_int of the given size.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_VNET_HDR,
                (&one as *const libc::c_int).cast(),
                4,
            )
        };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
    }
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: name is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(index, 0);
    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto.to_be();
    sll.sll_ifindex = index as i32;
    // SAFETY: sll is a valid sockaddr_ll of the given size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(r, 0, "{}", io::Error::last_os_error());
    // A receive timeout so that a missing frame fails instead of hanging.
    let tv = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: the option value is a live timeval of the given size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    fd
}

fn psend(fd: &OwnedFd, data: &[u8]) {
    // SAFETY: data is a valid buffer of the given length.
    let n = unsafe { libc::send(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), 0) };
    assert_eq!(n as usize, data.len(), "{}", io::Error::last_os_error());
}

fn precv(fd: &OwnedFd) -> Vec<u8> {
    let mut buf = vec![0u8; 70_000];
    // SAFETY: buf is a valid writable buffer of the given length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    assert!(
        n >= 0,
        "recv on the packet socket: {}",
        io::Error::last_os_error()
    );
    buf.truncate(n as usize);
    buf
}

#[derive(Debug, Default)]
struct CountIrq(AtomicUsize);
impl Interrupt for CountIrq {
    fn signal(&self, _: InterruptReason) -> io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

type Dev = Arc<Mutex<Net<Tap>>>;

struct Rig {
    mem: virtkit_virtio::GuestMem,
    em: EventManager<Dev>,
    net: Dev,
    rxq: DriverQueue,
    txq: DriverQueue,
    rx_kick: EventFd,
    tx_kick: EventFd,
    guest_mac: MacAddr,
}

const BUF: u64 = 0x10_0000;

impl Rig {
    fn new(tap_name: &str, acked: u64) -> Rig {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
        let tap = Tap::open(tap_name, &TapOptions::default()).unwrap();
        let guest_mac: MacAddr = "52:54:00:00:00:02".parse().unwrap();
        let net = Arc::new(Mutex::new(Net::new(tap, guest_mac, None).unwrap()));
        let mut em = EventManager::<Dev>::new().unwrap();
        em.add_subscriber(net.clone());
        let rxq = DriverQueue::new(&mem, GuestAddress(0), 256);
        let txq = DriverQueue::new(&mem, GuestAddress(0x1_0000), 256);
        let rx_kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let tx_kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        {
            let mut n = net.lock().unwrap();
            n.set_acked_features(acked);
            n.activate(
                mem.clone(),
                Arc::new(CountIrq::default()),
                vec![
                    ActiveQueue {
                        queue: rxq.queue(),
                        notify: rx_kick.try_clone().unwrap(),
                    },
                    ActiveQueue {
                        queue: txq.queue(),
                        notify: tx_kick.try_clone().unwrap(),
                    },
                ],
            )
            .unwrap();
        }
        let mut r = Rig {
            mem,
            em,
            net,
            rxq,
            txq,
            rx_kick,
            tx_kick,
            guest_mac,
        };
        r.run(0);
        r
    }

    fn run(&mut self, timeout_ms: i32) {
        while self.em.run_with_timeout(timeout_ms).unwrap() > 0 {}
    }

    fn transmit(&mut self, vnet_hdr: &[u8; 12], frame: &[u8]) {
        let at = BUF + 0x80_0000;
        self.mem.write_slice(vnet_hdr, GuestAddress(at)).unwrap();
        self.mem.write_slice(frame, GuestAddress(at + 12)).unwrap();
        self.txq
            .add_chain(&[(GuestAddress(at), 12 + frame.len() as u32, false)])
            .unwrap();
        self.tx_kick.write(1).unwrap();
        self.run(0);
    }

    /// Post `n` receive buffers of `size` bytes.
    fn post_rx(&mut self, n: u64, size: u32) {
        for i in 0..n {
            let at = BUF + i * 0x1_0000;
            if self
                .rxq
                .add_chain(&[(GuestAddress(at), size, true)])
                .is_none()
            {
                break;
            }
        }
        self.rx_kick.write(1).unwrap();
    }

    /// Wait for a received frame whose ethertype is `ethertype`; returns
    /// (vnet header, frame).
    fn receive(&mut self, ethertype: u16) -> (Vec<u8>, Vec<u8>) {
        for _ in 0..50 {
            self.run(100);
            // Other frames may arrive too: find ours by its ethertype.
            if let Some(found) = self.scan(ethertype) {
                return found;
            }
        }
        panic!("no frame of ethertype {ethertype:#x} reached the guest");
    }

    fn scan(&self, ethertype: u16) -> Option<(Vec<u8>, Vec<u8>)> {
        for i in 0..16u64 {
            let at = BUF + i * 0x1_0000;
            let mut head = [0u8; 26];
            self.mem.read_slice(&mut head, GuestAddress(at)).unwrap();
            if u16::from_be_bytes([head[24], head[25]]) == ethertype {
                let mut all = vec![0u8; 0x1_0000];
                self.mem.read_slice(&mut all, GuestAddress(at)).unwrap();
                return Some((all[..12].to_vec(), all[12..].to_vec()));
            }
        }
        None
    }
}

fn test_frame(dst: [u8; 6], src: MacAddr, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src.bytes());
    f.extend_from_slice(&ETH_P_TEST.to_be_bytes());
    f.extend((0..len - 14).map(|i| (i * 13 + 7) as u8));
    f
}

#[test]
fn root_virtio_net_frames_both_ways_through_a_tap() {
    in_netns(|| {
        let mut r = Rig::new("vknet0", bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MAC));
        let sock = packet_socket("vknet0", ETH_P_TEST, false);

        // Guest → tap: the frame comes out of the tap unchanged.
        let out = test_frame([0xff; 6], r.guest_mac, 1000);
        r.transmit(&[0; 12], &out);
        assert_eq!(precv(&sock), out);
        assert_eq!(r.txq.take_used().len(), 1);
        assert_eq!(r.net.lock().unwrap().stats().tx_frames, 1);

        // Tap → guest: a frame sent out of the host side lands in a
        // receive buffer, with num_buffers = 1.
        r.post_rx(8, 0x1_0000);
        r.run(0);
        let host_mac: MacAddr = "02:00:00:00:00:99".parse().unwrap();
        let inbound = test_frame(r.guest_mac.bytes(), host_mac, 1400);
        psend(&sock, &inbound);
        let (hdr, got) = r.receive(ETH_P_TEST);
        assert_eq!(&got[..inbound.len()], &inbound[..]);
        assert_eq!(hdr[0], 0, "no checksum flags without offloads");
        assert_eq!(hdr[1], VIRTIO_NET_HDR_GSO_NONE);
        assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 1);
    });
}

/// A TCP/IPv4 frame of `payload` bytes with a partial checksum setup.
fn tcp4_frame(src: MacAddr, dst: MacAddr, payload: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst.bytes());
    f.extend_from_slice(&src.bytes());
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 20 + payload) as u16;
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
    ];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    let mut sum: u32 = 0;
    for c in ip.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    let tcp = [
        0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0,
    ];
    f.extend_from_slice(&tcp);
    f.extend((0..payload).map(|i| i as u8));
    f
}

#[test]
fn root_virtio_net_offload_headers_round_trip() {
    in_netns(|| {
        let acked = bit(VIRTIO_F_VERSION_1)
            | bit(VIRTIO_NET_F_MAC)
            | bit(VIRTIO_NET_F_CSUM)
            | bit(VIRTIO_NET_F_HOST_TSO4)
            | bit(VIRTIO_NET_F_GUEST_CSUM)
            | bit(VIRTIO_NET_F_GUEST_TSO4)
            | bit(VIRTIO_NET_F_MRG_RXBUF);
        let mut r = Rig::new("vknet1", acked);
        let sock = packet_socket("vknet1", 0x0800, true);
        let host_mac: MacAddr = "02:00:00:00:00:99".parse().unwrap();

        // Guest → host: a TSO frame with a partial checksum keeps its
        // offload header all the way to the host stack.
        let out = tcp4_frame(r.guest_mac, host_mac, 4000);
        let mut h = [0u8; 12];
        h[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        h[1] = VIRTIO_NET_HDR_GSO_TCPV4;
        h[2..4].copy_from_slice(&54u16.to_le_bytes()); // hdr_len
        h[4..6].copy_from_slice(&1448u16.to_le_bytes()); // gso_size
        h[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start
        h[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset
        r.transmit(&h, &out);
        assert_eq!(r.net.lock().unwrap().stats().tx_dropped, 0);
        let got = precv(&sock);
        // PACKET_VNET_HDR prefixes the 10-byte virtio_net_hdr.
        assert_eq!(&got[10..], &out[..]);
        assert_eq!(
            got[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM,
            VIRTIO_NET_HDR_F_NEEDS_CSUM
        );
        assert_eq!(got[1], VIRTIO_NET_HDR_GSO_TCPV4);
        assert_eq!(u16::from_le_bytes([got[4], got[5]]), 1448, "gso_size");
        assert_eq!(u16::from_le_bytes([got[6], got[7]]), 34, "csum_start");
        assert_eq!(u16::from_le_bytes([got[8], got[9]]), 16, "csum_offset");

        // Host → guest: with GUEST_TSO4 acked the tap hands over the large
        // segment unsplit, with its GSO header.
        r.post_rx(24, 4096); // 96 KiB: room for a 64 KiB segment
        r.run(0);
        let inbound = tcp4_frame(host_mac, r.guest_mac, 3000);
        let mut ph = vec![0u8; 10];
        ph[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        ph[1] = VIRTIO_NET_HDR_GSO_TCPV4;
        ph[2..4].copy_from_slice(&54u16.to_le_bytes());
        ph[4..6].copy_from_slice(&1000u16.to_le_bytes());
        ph[6..8].copy_from_slice(&34u16.to_le_bytes());
        ph[8..10].copy_from_slice(&16u16.to_le_bytes());
        psend(&sock, &[ph, inbound.clone()].concat());
        // With MRG_RXBUF the frame spans 4 KiB buffers; reassemble it.
        let mut used = Vec::new();
        for _ in 0..50 {
            r.run(100);
            used.extend(r.rxq.take_used());
            if used.iter().map(|u| u.1 as usize).sum::<usize>() >= 12 + inbound.len() {
                break;
            }
        }
        let mut bytes = Vec::new();
        for (id, len) in &used {
            // Buffer i was posted at BUF + i * 64 KiB as descriptor i.
            let i = u64::from(*id);
            let mut b = vec![0u8; *len as usize];
            r.mem
                .read_slice(&mut b, GuestAddress(BUF + i * 0x1_0000))
                .unwrap();
            bytes.extend(b);
        }
        assert!(bytes.len() >= 12, "nothing received");
        let hdr = &bytes[..12];
        assert_eq!(hdr[1], VIRTIO_NET_HDR_GSO_TCPV4, "GSO kept: {hdr:?}");
        assert_eq!(u16::from_le_bytes([hdr[4], hdr[5]]), 1000, "gso_size");
        assert_eq!(
            hdr[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM,
            VIRTIO_NET_HDR_F_NEEDS_CSUM
        );
        let nbuf = u16::from_le_bytes([hdr[10], hdr[11]]);
        assert_eq!(usize::from(nbuf), used.len());
        assert_eq!(&bytes[12..], &inbound[..]);
    });
}
