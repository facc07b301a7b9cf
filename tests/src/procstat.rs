//! What a process has used, from `/proc`: CPU seconds, current and peak resident memory.

/// A process's resource use so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// User + system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// User + system CPU time of the children it has waited for (`cutime + cstime`), in
    /// seconds: short-lived helpers such as runc or CNI plugins count here.
    pub children_cpu_seconds: f64,
    /// Peak resident set size (`VmHWM`), in bytes.
    pub peak_rss_bytes: u64,
    /// Current resident set size (`VmRSS`), in bytes.
    pub rss_bytes: u64,
}

/// Reads `pid`'s usage; `None` once the process is gone.
pub fn usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime, stime, cutime and cstime are the
    // 14th to 17th fields overall, i.e. the 12th to 15th after it.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let cutime: f64 = fields.get(13)?.parse().ok()?;
    let cstime: f64 = fields.get(14)?.parse().ok()?;
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |field: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(Usage {
        cpu_seconds: (utime + stime) / ticks,
        children_cpu_seconds: (cutime + cstime) / ticks,
        peak_rss_bytes: kib("VmHWM:") * 1024,
        rss_bytes: kib("VmRSS:") * 1024,
    })
}

/// The PIDs of `pid`'s children (processes whose parent it is now).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    // The parent is the second field after the parenthesised command name.
                    let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
                    ppid.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let u = usage(std::process::id()).expect("own /proc entry");
        assert!(u.peak_rss_bytes > 1024 * 1024, "{u:?}");
        assert!(u.rss_bytes > 0 && u.rss_bytes <= u.peak_rss_bytes, "{u:?}");
        assert!(u.cpu_seconds >= 0.0);
        assert_eq!(usage(u32::MAX), None);
    }

    #[test]
    fn finds_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .expect("running sleep");
        let found = children(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&child.id()), "{found:?}");
        assert!(!children(child.id()).contains(&std::process::id()));
    }

    #[test]
    fn counts_waited_for_children() {
        let before = usage(std::process::id()).expect("own /proc entry");
        // A child that spends a few hundred ms of CPU, then is waited for.
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .status()
            .expect("running sh");
        assert!(status.success());
        let after = usage(std::process::id()).expect("own /proc entry");
        assert!(
            after.children_cpu_seconds >= before.children_cpu_seconds + 0.05,
            "{before:?} -> {after:?}"
        );
    }
}
