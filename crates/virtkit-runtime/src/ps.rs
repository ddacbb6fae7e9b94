//! `ps`: the processes of a container.

use crate::error::{Context, Result};
use crate::Runtime;

impl Runtime {
    /// `ps`: the pids in container `id`'s cgroup (its init alone without a cgroup).
    pub fn pids(&self, id: &str) -> Result<Vec<i32>> {
        let c = self.load(id)?;
        if c.saved.cgroup_path.is_empty() {
            return Ok(vec![c.saved.pid]);
        }
        Ok(self.host().cgroup(&c.saved.cgroup_path)?.pids()?)
    }
}

/// Keeps, of `ps(1)` output `text`, the header and the lines whose PID column is one of
/// `pids` (what runc's `ps` prints).
pub fn filter_ps_table(text: &str, pids: &[i32]) -> Result<String> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .context("ps output has no PID column")?;
    let mut out = format!("{header}\n");
    for l in lines {
        let pid: Option<i32> = l.split_whitespace().nth(col).and_then(|p| p.parse().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            out.push_str(l);
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::filter_ps_table;

    #[test]
    fn keeps_the_header_and_the_containers_pids() {
        let text = "UID PID PPID CMD\nroot 1 0 init\nroot 42 1 sh\nroot 420 1 x\n";
        assert_eq!(
            filter_ps_table(text, &[42]).unwrap(),
            "UID PID PPID CMD\nroot 42 1 sh\n"
        );
        assert!(filter_ps_table("UID CMD\n", &[1]).is_err());
    }
}
