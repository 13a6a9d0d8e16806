//! What the load generator reads about the server process from /proc: memory, Redis connections,
//! CPU time. Linux only, like the machines it runs on.

use std::collections::HashSet;

/// Resident and proportional set size of a process, in bytes.
pub fn memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    Ok((field("Rss:"), field("Pss:")))
}

/// CPU time (user + system) a process has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(ticks as f64 / 100.0) // USER_HZ is 100 on Linux
}

/// TCP connections the process holds to `port` (e.g. its Redis connections).
pub fn connections_to(pid: u32, port: u16) -> anyhow::Result<usize> {
    let mut inodes = HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let target = std::fs::read_link(fd?.path()).unwrap_or_default();
        if let Some(inode) = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
        {
            inodes.insert(inode.to_owned());
        }
    }
    let mut count = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let remote_port = cols
                .get(2)
                .and_then(|r| r.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            let established = cols.get(3) == Some(&"01");
            if established
                && remote_port == Some(port)
                && cols.get(9).is_some_and(|i| inodes.contains(*i))
            {
                count += 1;
            }
        }
    }
    Ok(count)
}

/// CPU used by the server, Redis and this load generator from `start` on, as % of one core.
pub struct CpuMeter {
    pids: [Option<u32>; 3],
    start: [Option<f64>; 3],
}

impl CpuMeter {
    pub fn start(server: Option<u32>, redis: Option<u32>) -> Self {
        let pids = [server, redis, Some(std::process::id())];
        Self {
            pids,
            start: pids.map(|pid| pid.and_then(|p| cpu_seconds(p).ok())),
        }
    }

    /// `[server, redis, load generator]`, CPU time so far over `secs` of wall time, in %.
    pub fn percent(&self, secs: f64) -> [Option<f64>; 3] {
        std::array::from_fn(|i| {
            let now = self.pids[i].and_then(|p| cpu_seconds(p).ok());
            self.start[i]
                .zip(now)
                .map(|(a, b)| ((b - a) / secs * 100.0).round())
        })
    }
}
