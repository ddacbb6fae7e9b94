//! `--log` and `--log-format`: errors and warnings as runc writes them.
//!
//! JSON lines are `{"level":"error","msg":"...","time":"..."}`, which podman (conmon)
//! and containerd parse.

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Where and how to log.
#[derive(Debug, Clone, Default)]
pub struct LogConfig {
    /// `--log` file (stderr when absent).
    pub file: Option<PathBuf>,
    /// `--log-format json`.
    pub json: bool,
}

static CONFIG: OnceLock<LogConfig> = OnceLock::new();

/// Sets the configuration once, at startup, and routes the library's `log` records
/// (virtkit-runtime's warnings) through it.
pub fn init(c: LogConfig) {
    let _ = CONFIG.set(c);
    if ::log::set_logger(&Logger).is_ok() {
        ::log::set_max_level(::log::LevelFilter::Warn);
    }
}

/// The `log` facade's end: warnings and errors as runc's log lines.
struct Logger;

impl ::log::Log for Logger {
    fn enabled(&self, m: &::log::Metadata<'_>) -> bool {
        m.level() <= ::log::Level::Warn
    }

    fn log(&self, r: &::log::Record<'_>) {
        match r.level() {
            ::log::Level::Error => error(&r.args().to_string()),
            ::log::Level::Warn => warn(&r.args().to_string()),
            _ => {}
        }
    }

    fn flush(&self) {}
}

/// Formats one log line.
pub fn format_line(json: bool, level: &str, msg: &str) -> String {
    if json {
        let v = serde_json::json!({
            "level": level,
            "msg": msg,
            "time": virtkit_runtime::rfc3339_now(),
        });
        format!("{v}\n")
    } else {
        format!(
            "time=\"{}\" level={level} msg={:?}\n",
            virtkit_runtime::rfc3339_now(),
            msg
        )
    }
}

fn emit(level: &str, msg: &str) {
    let c = CONFIG.get().cloned().unwrap_or_default();
    let line = format_line(c.json, level, msg);
    match &c.file {
        Some(f) => {
            if let Ok(mut fh) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(f)
            {
                let _ = fh.write_all(line.as_bytes());
            }
        }
        None => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

/// Logs an error; with a log file it also goes to stderr as plain text.
pub fn error(msg: &str) {
    emit("error", msg);
    if CONFIG.get().is_some_and(|c| c.file.is_some()) {
        let _ = writeln!(std::io::stderr(), "container-runner: {msg}");
    }
}

/// Logs a warning.
pub fn warn(msg: &str) {
    emit("warning", msg);
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_line_is_runc_shaped() {
        let l = super::format_line(true, "error", "container \"x\" does not exist");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "container \"x\" does not exist");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        assert!(l.ends_with('\n'));
    }
}
