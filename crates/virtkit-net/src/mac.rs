//! [`MacAddr`]: a 48-bit Ethernet address.

use std::fmt;
use std::str::FromStr;

/// Errors from parsing or generating a [`MacAddr`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MacError {
    /// The text is not six `:`-separated pairs of hex digits.
    #[error("invalid MAC address {0:?}: expected six hex pairs like aa:bb:cc:dd:ee:ff")]
    Parse(String),
    /// The kernel's random source failed.
    #[error("reading random bytes for a MAC address: {0}")]
    Random(String),
}

/// A 48-bit Ethernet (MAC) address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    /// Length of an Ethernet address in bytes.
    pub const LEN: usize = 6;

    /// The address made of `bytes`.
    pub const fn from_bytes(bytes: [u8; 6]) -> Self {
        MacAddr(bytes)
    }

    /// The six bytes of the address.
    pub const fn bytes(&self) -> [u8; 6] {
        self.0
    }

    /// A random unicast address with the locally administered bit set
    /// (`x2:`, `x6:`, `xa:` or `xe:` first byte), as virtual NICs use.
    pub fn random_local() -> Result<Self, MacError> {
        let mut b = [0u8; 6];
        let mut filled = 0;
        while filled < b.len() {
            let rest = &mut b[filled..];
            // SAFETY: getrandom writes at most `rest.len()` bytes into the
            // valid, exclusively borrowed buffer `rest`.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(MacError::Random(e.to_string()));
            }
            filled += n as usize;
        }
        // Clear the multicast bit, set the locally administered bit.
        b[0] = (b[0] & !0x01) | 0x02;
        Ok(MacAddr(b))
    }

    /// Whether the multicast (group) bit is set.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// Whether the locally administered bit is set.
    pub const fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// Whether this is the broadcast address ff:ff:ff:ff:ff:ff.
    pub fn is_broadcast(&self) -> bool {
        self.0 == [0xff; 6]
    }
}

impl FromStr for MacAddr {
    type Err = MacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacError::Parse(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(b: [u8; 6]) -> Self {
        MacAddr(b)
    }
}

impl From<MacAddr> for [u8; 6] {
    fn from(m: MacAddr) -> Self {
        m.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_and_display() {
        let m: MacAddr = "aa:BB:0c:dd:ee:ff".parse().unwrap();
        assert_eq!(m.bytes(), [0xaa, 0xbb, 0x0c, 0xdd, 0xee, 0xff]);
        assert_eq!(m.to_string(), "aa:bb:0c:dd:ee:ff");
        assert_eq!(format!("{m:?}"), "MacAddr(aa:bb:0c:dd:ee:ff)");
    }

    #[test]
    fn parse_rejects_bad_text() {
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aa:bb:cc:dd:ee:f",
            "aa:bb:cc:dd:ee:fff",
            "aa-bb-cc-dd-ee-ff",
            "gg:bb:cc:dd:ee:ff",
            "+a:bb:cc:dd:ee:ff",
            "aa:bb:cc:dd:ee:ff:",
            " aa:bb:cc:dd:ee:ff",
        ] {
            let e = bad.parse::<MacAddr>().unwrap_err();
            assert_eq!(e, MacError::Parse(bad.to_string()), "{bad:?}");
            assert!(e.to_string().contains("aa:bb:cc:dd:ee:ff"));
        }
    }

    #[test]
    fn random_is_local_unicast_and_varies() {
        let a = MacAddr::random_local().unwrap();
        let b = MacAddr::random_local().unwrap();
        for m in [a, b] {
            assert!(m.is_local());
            assert!(!m.is_multicast());
            assert!(!m.is_broadcast());
        }
        // 46 random bits: a collision here means the generator is broken.
        assert_ne!(a, b);
    }

    #[test]
    fn flags() {
        assert!(MacAddr::from([0xff; 6]).is_broadcast());
        assert!(MacAddr::from([0x01, 0, 0x5e, 0, 0, 1]).is_multicast());
        assert!(!MacAddr::from([0x52, 0x54, 0, 0x12, 0x34, 0x56]).is_multicast());
    }

    proptest! {
        #[test]
        fn display_parse_roundtrip(b in any::<[u8; 6]>()) {
            let m = MacAddr::from(b);
            prop_assert_eq!(m.to_string().parse::<MacAddr>().unwrap(), m);
            prop_assert_eq!(<[u8; 6]>::from(m), b);
        }
    }
}
