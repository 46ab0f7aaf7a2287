//! Memory and CPU of processes, from `/proc`.

/// The summed `VmRSS` of every process, in KiB; `None` without processes or when one is gone.
pub(crate) fn sum_rss(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| proc_status_kb(p, "VmRSS")).sum()
}

/// The summed CPU ticks of every process; `None` without processes or when one is gone.
pub(crate) fn sum_cpu(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| proc_cpu_ticks(p)).sum()
}

/// A `kB` field of `/proc/<pid>/status`, in KiB.
pub(crate) fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// User plus system CPU time of a process (all threads), in clock ticks.
pub(crate) fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at its closing paren.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second of `/proc` CPU times (`_SC_CLK_TCK`, 100 if unknown).
pub(crate) fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_over_processes_need_every_process() {
        let me = std::process::id();
        assert_eq!(sum_rss(&[]), None);
        let one = sum_rss(&[me]).expect("our own RSS");
        assert!(sum_rss(&[me, me]).expect("twice ours") >= one);
        // A pid above the kernel's maximum (4,194,304) never exists.
        assert_eq!(sum_rss(&[me, u32::MAX]), None);
        assert_eq!(sum_cpu(&[u32::MAX]), None);
    }
}
