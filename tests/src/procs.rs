//! Process checks for "no orphan left behind": finds processes by a tag in their environment,
//! which children inherit, so the check holds whatever else runs on the machine.

use std::time::{Duration, Instant};

/// Processes whose environment has `var=value`, waiting up to `secs` for them to go away.
pub fn tagged(var: &str, value: &str, secs: f64) -> Vec<(u32, String)> {
    let needle = format!("{var}={value}");
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    loop {
        let found = scan(&needle);
        if found.is_empty() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn scan(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if !environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().chars().next().unwrap_or('?')).unwrap_or('?');
        if state == 'Z' {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string();
        found.push((pid, comm));
    }
    found
}
