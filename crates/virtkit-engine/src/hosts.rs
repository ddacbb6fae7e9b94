//! Each container's `/etc/hosts` (itself and the other running containers of its
//! network, by name: how containers reach each other by name) and `/etc/resolv.conf`
//! (the host's, without loopback name servers a container cannot reach). The files are
//! bind-mounted read-only and rewritten in place, so the mounts see every change.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::record::NetworkMode;
use crate::{Engine, EngineError};

/// Rewrites `path` in place with the localhost lines and `entries` (address, names).
pub(crate) fn write_hosts(
    path: &Path,
    entries: &[(Ipv4Addr, Vec<String>)],
) -> Result<(), EngineError> {
    let mut text =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (ip, names) in entries {
        text.push_str(&format!("{ip}\t{}\n", names.join(" ")));
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(EngineError::io("cannot write", path))?;
    f.write_all(text.as_bytes())
        .map_err(EngineError::io("cannot write", path))
}

/// Writes the container's resolv.conf from the host's.
pub(crate) fn write_resolv_conf(path: &Path) -> Result<(), EngineError> {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let kept: String = host
        .lines()
        .filter(|l| {
            let mut w = l.split_whitespace();
            !(w.next() == Some("nameserver")
                && w.next()
                    .is_some_and(|a| a.starts_with("127.") || a == "::1"))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(path, kept).map_err(EngineError::io("cannot write", path))
}

impl Engine {
    /// Rewrites the hosts file of every container on `network` from those holding an
    /// address on it (recorded while their network is up, before their process starts).
    pub(crate) fn refresh_hosts(&self, network: &str) -> Result<(), EngineError> {
        let _l = crate::record::lock(&self.root.join("networks").join("hosts.lock"))?;
        let on: Vec<_> = self
            .list()?
            .into_iter()
            .filter(|r| r.network == NetworkMode::Bridge(network.to_string()))
            .collect();
        let entries: Vec<(Ipv4Addr, Vec<String>)> = on
            .iter()
            .filter_map(|r| {
                r.ip.map(|ip| (ip, vec![r.name.clone(), r.short_id().to_string()]))
            })
            .collect();
        for r in &on {
            write_hosts(&self.dir(&r.id).join("hosts"), &entries)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_files_are_rewritten_in_place() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("hosts");
        write_hosts(&p, &[]).unwrap();
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).unwrap());
        let entries = vec![(
            Ipv4Addr::new(10, 87, 0, 2),
            vec!["web".to_string(), "0123456789ab".to_string()],
        )];
        write_hosts(&p, &entries).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("127.0.0.1\tlocalhost\n"), "{text}");
        assert!(text.ends_with("10.87.0.2\tweb 0123456789ab\n"), "{text}");
        // The same inode: a bind mount of the file sees the change.
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).unwrap()),
            ino
        );
        write_hosts(&p, &[]).unwrap();
        assert!(!std::fs::read_to_string(&p).unwrap().contains("web"));
    }
}
