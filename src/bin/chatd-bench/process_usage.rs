//! A server's CPU time and resident memory, read from /proc/PID. The same reading serves a
//! server this bench started and one it was pointed at with `--pid`, so the figures mean the
//! same thing either way.

use anyhow::Context;

pub struct ProcessUsage {
    pid: u32,
}

impl ProcessUsage {
    /// Fails when /proc/PID does not read as a process: a wrong `--pid` is refused before the
    /// load starts rather than showing up afterwards as figures that are missing.
    pub fn watch(pid: u32) -> anyhow::Result<Self> {
        let usage = Self { pid };
        let stat = std::fs::read_to_string(usage.path("stat"))
            .with_context(|| format!("reading /proc/{pid}/stat: is {pid} a running process?"))?;
        anyhow::ensure!(
            cpu_ticks(&stat).is_some(),
            "/proc/{pid}/stat does not read as a process's stat"
        );
        Ok(usage)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// CPU time so far, user and system, of all the process's threads.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let ticks = cpu_ticks(&std::fs::read_to_string(self.path("stat")).ok()?)?;
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (per_second > 0).then(|| ticks as f64 / per_second as f64)
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        vm_rss_kib(&std::fs::read_to_string(self.path("status")).ok()?)
    }

    fn path(&self, file: &str) -> String {
        format!("/proc/{}/{file}", self.pid)
    }
}

/// utime + stime from the text of /proc/PID/stat, in clock ticks.
fn cpu_ticks(stat: &str) -> Option<u64> {
    // The fields after the command name, which is in parentheses and may itself contain spaces
    // and parentheses; utime and stime are the 14th and 15th fields of the whole line.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS from the text of /proc/PID/status, in KiB.
fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_utime_plus_stime_even_when_the_name_has_spaces_and_parentheses() {
        let stat = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 1302 0 0 0 \
                    170 33 0 0 20 0 9 0 123456 98765432 2500 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(203));
    }

    #[test]
    fn a_truncated_stat_has_no_cpu_ticks() {
        assert_eq!(cpu_ticks("4242 (chatd) S 1 4242"), None);
        assert_eq!(cpu_ticks("no parentheses at all"), None);
    }

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tchatd\nVmPeak:\t  200000 kB\nVmRSS:\t   10536 kB\nThreads:\t9\n";
        assert_eq!(vm_rss_kib(status), Some(10_536));
        assert_eq!(vm_rss_kib("Name:\tkthreadd\nThreads:\t1\n"), None);
    }
}
