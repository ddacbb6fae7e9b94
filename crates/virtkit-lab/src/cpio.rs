//! A writer for `newc` cpio archives, the format of Linux initramfs images.
//!
//! Parent directories are added on demand, so `file("a/b/c", ..)` is enough.

use std::collections::HashSet;
use std::io::{self, Write};

/// Writes a `newc` (SVR4 without CRC) cpio archive.
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    offset: u64,
    next_ino: u32,
    dirs: HashSet<String>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl<W: Write> CpioWriter<W> {
    /// A new archive written to `out`.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            offset: 0,
            next_ino: 1,
            dirs: HashSet::new(),
        }
    }

    fn normalize(name: &str) -> io::Result<String> {
        let trimmed = name.trim_start_matches('/').trim_end_matches('/');
        if trimmed.is_empty()
            || trimmed
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
            || trimmed.contains('\0')
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad archive path {name:?}"),
            ));
        }
        Ok(trimmed.to_string())
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - (self.offset % 4) as usize) % 4;
        self.out.write_all(&[0u8; 3][..pad])?;
        self.offset += pad as u64;
        Ok(())
    }

    fn header(&mut self, name: &str, mode: u32, size: u32, rdev: (u32, u32)) -> io::Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let namesize = name.len() as u32 + 1;
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
            0, 0, 0, 0, 0, rdev.0, rdev.1, 0
        );
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.offset += header.len() as u64 + u64::from(namesize);
        self.pad()
    }

    fn parents(&mut self, name: &str) -> io::Result<()> {
        let mut end = 0;
        while let Some(pos) = name[end..].find('/') {
            let dir = name[..end + pos].to_string();
            if self.dirs.insert(dir.clone()) {
                self.header(&dir, S_IFDIR | 0o755, 0, (0, 0))?;
            }
            end += pos + 1;
        }
        Ok(())
    }

    /// Adds a directory (and its parents).
    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        let name = Self::normalize(name)?;
        self.parents(&name)?;
        if self.dirs.insert(name.clone()) {
            self.header(&name, S_IFDIR | (perm & 0o7777), 0, (0, 0))?;
        }
        Ok(())
    }

    /// Adds a regular file with the given contents.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        let name = Self::normalize(name)?;
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{name} is over 4 GiB"))
        })?;
        self.parents(&name)?;
        self.header(&name, S_IFREG | (perm & 0o7777), size, (0, 0))?;
        self.out.write_all(data)?;
        self.offset += u64::from(size);
        self.pad()
    }

    /// Adds a symbolic link `name` pointing at `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        let name = Self::normalize(name)?;
        self.parents(&name)?;
        self.header(&name, S_IFLNK | 0o777, target.len() as u32, (0, 0))?;
        self.out.write_all(target.as_bytes())?;
        self.offset += target.len() as u64;
        self.pad()
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        let name = Self::normalize(name)?;
        self.parents(&name)?;
        self.header(&name, S_IFCHR | (perm & 0o7777), 0, (major, minor))
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 0, (0, 0))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_newc_with_parents_and_padding() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("a/b", 0o644, b"hello").unwrap();
        let out = w.finish().unwrap();
        // Three entries (dir a, file a/b, trailer), each header 4-aligned.
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text.matches("070701").count(), 3);
        assert!(out.len() % 4 == 0);
        // The directory comes first.
        let first_name = &out[110..111];
        assert_eq!(first_name, b"a");
        let file_hdr = text
            .find("070701")
            .map(|_| text[1..].find("070701").unwrap() + 1)
            .unwrap();
        // File size field (7th field) is 5.
        let size = &text[file_hdr + 6 + 6 * 8..file_hdr + 6 + 7 * 8];
        assert_eq!(size, "00000005");
        assert!(text.contains("hello"));
        assert!(text.ends_with("TRAILER!!!\0\0\0\0") || text.contains("TRAILER!!!"));
    }

    #[test]
    fn bad_names_are_refused() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file("../x", 0o644, b"").is_err());
        assert!(w.file("", 0o644, b"").is_err());
        assert!(w.file("a//b", 0o644, b"").is_err());
    }

    #[test]
    fn cpio_tool_reads_it() {
        if crate::util::which("cpio").is_none() {
            panic!("the cpio tool is needed for this test (apt-get install cpio)");
        }
        let mut w = CpioWriter::new(Vec::new());
        w.file("d/e/f.txt", 0o600, b"data\n").unwrap();
        w.symlink("d/link", "e/f.txt").unwrap();
        let bytes = w.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-idm", "--quiet"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("d/link")).unwrap(),
            "data\n"
        );
    }
}
