//! `logs [-f]`: the container's output as its monitor appended it.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use crate::record::{self, Status};
use crate::{Engine, EngineError};

impl Engine {
    /// Copies container `name`'s log to `out`; with `follow`, goes on until the
    /// container has exited and everything it wrote is copied.
    pub fn logs(&self, name: &str, follow: bool, out: &mut dyn Write) -> Result<(), EngineError> {
        let r = self.lookup(name)?;
        let path = self.log_path(&r.id);
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !follow => return Ok(()),
            Err(e) => return Err(EngineError::io("cannot open", &path)(e)),
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(EngineError::io("cannot read", &path))?;
            if n > 0 {
                out.write_all(&buf[..n])
                    .and_then(|()| out.flush())
                    .map_err(EngineError::io("cannot write", "stdout"))?;
                continue;
            }
            if !follow {
                return Ok(());
            }
            let now = record::load(&self.dir(&r.id))?;
            if now.status != Status::Running || !record::monitor_alive(&now) {
                // One last read for what came before the exit.
                let pos = f
                    .stream_position()
                    .map_err(EngineError::io("cannot read", &path))?;
                if f.metadata().map_or(0, |m| m.len()) <= pos {
                    return Ok(());
                }
                f.seek(SeekFrom::Start(pos))
                    .map_err(EngineError::io("cannot read", &path))?;
                continue;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
