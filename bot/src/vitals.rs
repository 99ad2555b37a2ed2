//! The bot's own vitals for its heartbeats: CPU cores and resident memory of the bot and every
//! process under it (Xvfb, PulseAudio, Chromium's many processes, FFmpeg), read from /proc.
//!
//! This module reads /proc; it must not act on what it reads.

use std::collections::HashMap;
use std::time::Instant;

/// Successive samples of one process tree.
#[derive(Debug)]
pub struct Vitals {
    root: u32,
    last: Option<(Instant, u64)>,
    ticks_per_sec: f64,
    page_bytes: u64,
}

impl Default for Vitals {
    fn default() -> Self {
        Self::of(std::process::id())
    }
}

/// (parent pid, utime + stime in ticks, rss in pages) from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(u32, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let rest = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12) ... rss(21)
    let ppid = fields.get(1)?.parse().ok()?;
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let rss = fields.get(21)?.parse().ok()?;
    Some((ppid, ticks, rss))
}

impl Vitals {
    pub fn of(root: u32) -> Self {
        // SAFETY: sysconf only reads configuration values.
        let (tck, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        Self { root, last: None, ticks_per_sec: tck.max(1) as f64, page_bytes: page.max(1) as u64 }
    }

    /// CPU cores used since the last sample (none on the first) and resident bytes now.
    pub fn sample(&mut self) -> (Option<f64>, Option<u64>) {
        let mut procs: HashMap<u32, (u32, u64, u64)> = HashMap::new();
        let Ok(entries) = std::fs::read_dir("/proc") else { return (None, None) };
        for entry in entries.flatten() {
            if let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() {
                if let Some(s) = stat(pid) {
                    procs.insert(pid, s);
                }
            }
        }
        let mut tree = vec![self.root];
        let mut i = 0;
        while i < tree.len() {
            let parent = tree[i];
            tree.extend(procs.iter().filter(|(_, (ppid, _, _))| *ppid == parent).map(|(pid, _)| *pid));
            i += 1;
        }
        let (ticks, pages) = tree.iter().filter_map(|p| procs.get(p)).fold((0u64, 0u64), |(t, r), (_, ticks, rss)| (t + ticks, r + rss));
        let now = Instant::now();
        let cpu = self.last.and_then(|(at, before)| {
            let secs = now.duration_since(at).as_secs_f64();
            (secs > 0.0 && ticks >= before).then(|| (ticks - before) as f64 / self.ticks_per_sec / secs)
        });
        self.last = Some((now, ticks));
        (cpu, Some(pages * self.page_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_child_shows_in_the_tree() {
        let mut child = std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap();
        let mut v = Vitals::default();
        let (first, rss) = v.sample();
        assert!(first.is_none());
        assert!(rss.unwrap() > 1_000_000, "this process holds more than 1 MB");
        std::thread::sleep(std::time::Duration::from_millis(600));
        let (cpu, _) = v.sample();
        child.kill().unwrap();
        let _ = child.wait();
        assert!(cpu.unwrap() > 0.3, "a spinning child counts: {cpu:?}");
    }
}
