//! The proxy's footprint over the soak, read from `/proc`: resident memory,
//! open file descriptors and CPU time, every few seconds; and the verdict on
//! whether memory and descriptors stayed flat once warm.

use std::time::Duration;

/// One reading of the proxy process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Since the traffic started.
    pub at: Duration,
    pub rss_kib: u64,
    pub fds: u64,
    /// User and system CPU time so far.
    pub cpu: Duration,
    /// Exchanges answered so far, all kinds.
    pub answered: u64,
}

/// Reads `pid`'s RSS, descriptors and CPU time; `clk_tck` is the kernel's
/// clock ticks per second (`getconf CLK_TCK`).
pub fn read(pid: u32, clk_tck: u64, at: Duration, answered: u64) -> std::io::Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no VmRSS in /proc/PID/status"))?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks =
        cpu_ticks(&stat).ok_or_else(|| std::io::Error::other("unreadable /proc/PID/stat"))?;
    Ok(Sample {
        at,
        rss_kib,
        fds,
        cpu: Duration::from_millis(ticks * 1000 / clk_tck.max(1)),
        answered,
    })
}

/// utime + stime, fields 14 and 15 of `/proc/PID/stat` (proc(5)), counted
/// after the command name, which may itself hold spaces and parentheses.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    // Fields 3.. follow the name; utime is field 14, the 12th of them.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// How one quantity behaved after warm-up.
#[derive(Debug, Clone, Copy)]
pub struct Flatness {
    /// The highest reading of the first window after warm-up: the
    /// reference.
    pub reference: u64,
    /// The highest reading after that window.
    pub highest_after: u64,
    /// The mean of the last window.
    pub last_mean: f64,
    /// Whether every reading after the reference window stayed within
    /// `tolerance_pct` percent of the reference.
    pub flat: bool,
}

/// Judges `values` (one per sample, in order) after `warmup` samples: the
/// next `window` samples give the reference, and every later one must stay
/// within `tolerance_pct` percent above it. `None` if there are too few
/// samples for a verdict.
pub fn flatness(
    values: &[u64],
    warmup: usize,
    window: usize,
    tolerance_pct: u64,
) -> Option<Flatness> {
    let window = window.max(1);
    let reference_window = values.get(warmup..warmup + window)?;
    let after = values.get(warmup + window..).filter(|a| !a.is_empty())?;
    let reference = *reference_window.iter().max()?;
    let highest_after = *after.iter().max()?;
    let last = &after[after.len().saturating_sub(window)..];
    let last_mean = last.iter().sum::<u64>() as f64 / last.len() as f64;
    Some(Flatness {
        reference,
        highest_after,
        last_mean,
        flat: highest_after * 100 <= reference * (100 + tolerance_pct),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_past_a_name_with_spaces_and_parentheses() {
        let stat =
            "42 (divert (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 1000 1000000 200";
        assert_eq!(cpu_ticks(stat), Some(10));
        assert_eq!(cpu_ticks("42 (cut"), None);
    }

    #[test]
    fn growth_past_the_tolerance_is_not_flat_and_noise_within_it_is() {
        // Two warm-up readings, a reference window of two, then the rest.
        let flat = flatness(&[1, 50, 100, 98, 105, 109, 101], 2, 2, 10).expect("a verdict");
        assert!(flat.flat, "{flat:?}");
        assert_eq!((flat.reference, flat.highest_after), (100, 109));
        let leak = flatness(&[1, 50, 100, 98, 105, 111], 2, 2, 10).expect("a verdict");
        assert!(!leak.flat, "{leak:?}");
        assert!(flatness(&[1, 2, 3], 2, 2, 10).is_none(), "too few samples");
    }
}
