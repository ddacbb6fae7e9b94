//! The image formats a disk can be opened as.

use crate::error::Qcow2Error;

/// A disk image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// A plain file.
    Raw,
    /// qcow2.
    Qcow2,
}

impl ImageFormat {
    /// The name used by qemu-img.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

impl std::str::FromStr for ImageFormat {
    type Err = Qcow2Error;
    fn from_str(s: &str) -> Result<Self, Qcow2Error> {
        match s {
            "raw" => Ok(ImageFormat::Raw),
            "qcow2" => Ok(ImageFormat::Qcow2),
            other => Err(Qcow2Error::InvalidOption(format!(
                "unknown image format {other:?} (raw or qcow2)"
            ))),
        }
    }
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
