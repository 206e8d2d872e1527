//! CPU time and memory of a process and its descendants, read from /proc.
//!
//! A database server may be one process (PGlite under node) or a
//! postmaster with a backend per connection (native PostgreSQL), so every
//! reading sums the process tree under the root pid.

use std::collections::HashMap;

/// Clock ticks per second of utime/stime in /proc/<pid>/stat: Linux
/// reports them in USER_HZ, which is 100 on every architecture it exports
/// to user space.
fn ticks_per_second() -> f64 {
    100.0
}

/// (ppid, utime + stime in ticks) of one process.
fn stat_of(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let after_name = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// `root` and every process below it.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut parent_of: HashMap<u32, u32> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some((ppid, _)) = stat_of(pid) {
                parent_of.insert(pid, ppid);
            }
        }
    }
    let mut tree = vec![root];
    let mut index = 0;
    while index < tree.len() {
        let parent = tree[index];
        tree.extend(
            parent_of
                .iter()
                .filter(|(_, ppid)| **ppid == parent)
                .map(|(pid, _)| *pid),
        );
        index += 1;
    }
    tree
}

/// CPU seconds (user + system) used so far by `root` and its descendants
/// that are still alive.
pub fn cpu_seconds(root: u32) -> f64 {
    let ticks: u64 = process_tree(root)
        .iter()
        .filter_map(|pid| stat_of(*pid).map(|(_, ticks)| ticks))
        .sum();
    ticks as f64 / ticks_per_second()
}

/// CPU seconds used so far by `pid` alone, without its children.
pub fn own_cpu_seconds(pid: u32) -> f64 {
    stat_of(pid).map_or(0.0, |(_, ticks)| ticks as f64 / ticks_per_second())
}

/// A `kB` line of /proc/<pid>/status, in MiB.
fn status_mib(pid: u32, key: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|line| line.starts_with(key))?;
    let kib: f64 = line
        .trim_start_matches(key)
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Resident memory now (MiB), summed over the tree.
pub fn rss_mib(root: u32) -> f64 {
    process_tree(root)
        .iter()
        .filter_map(|pid| status_mib(*pid, "VmRSS:"))
        .sum()
}

/// Peak resident memory (VmHWM, MiB), summed over the tree: an upper bound
/// for a tree, exact for one process.
pub fn peak_rss_mib(root: u32) -> f64 {
    process_tree(root)
        .iter()
        .filter_map(|pid| status_mib(*pid, "VmHWM:"))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let me = std::process::id();
        let mut spin = 0u64;
        for i in 0..5_000_000u64 {
            spin = spin.wrapping_add(i * i);
        }
        assert!(spin > 0);
        assert!(cpu_seconds(me) >= 0.0);
        assert!(rss_mib(me) > 0.0);
        assert!(peak_rss_mib(me) >= rss_mib(me) * 0.5);
        assert!(process_tree(me).contains(&me));
    }
}
