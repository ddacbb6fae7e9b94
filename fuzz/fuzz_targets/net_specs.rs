//! Fuzz the container-network specs a user or a state file hands us: `-p` port specs and
//! subnets. Errors are fine; a panic is a finding, and so is a spec that parses but does
//! not print back to something that parses to the same value.
//!
//! Run: `cargo xtask fuzz net_specs --time 600`
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtkit_net::ipam::Subnet;
use virtkit_net::ports::PortMapping;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = s.parse::<PortMapping>() {
        // Display is `IP:HOST->CTR/PROTO`; the spec form parses back to the same mapping.
        let spec = format!(
            "{}:{}:{}/{}",
            p.host_ip.map(|i| i.to_string()).unwrap_or_default(),
            if p.host_port == 0 { String::new() } else { p.host_port.to_string() },
            p.container_port,
            p.proto.as_str()
        );
        assert_eq!(spec.parse::<PortMapping>(), Ok(p), "{s:?} -> {spec:?}");
        assert!(p.container_port != 0);
    }
    if let Ok(n) = s.parse::<Subnet>() {
        assert_eq!(n.to_string().parse::<Subnet>().ok(), Some(n), "{s:?}");
        assert!(n.contains(n.gateway()));
        let _ = virtkit_net::ipam::validate_name(s);
    }
});
