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

/// The pids whose parent is `parent`.
pub fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The name is in parentheses and may hold spaces: the parent pid follows the state.
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)).and_then(|p| p.parse::<u32>().ok());
            ppid == Some(parent)
        })
        .collect()
}

/// `root` and every process under it.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut pids = vec![root];
    let mut i = 0;
    while i < pids.len() {
        for pid in children(pids[i]) {
            if !pids.contains(&pid) {
                pids.push(pid);
            }
        }
        i += 1;
    }
    pids
}

/// Whether `bot` (a bot's pid) is recording: its child is the capture's FFmpeg, which writes
/// segments. A bot that is warming up runs FFmpeg too, for a few frames into nothing, so a child
/// named `ffmpeg` alone does not tell.
pub fn records(bot: u32) -> bool {
    capture(bot).is_some()
}

/// The pid of `bot`'s capture FFmpeg (the one writing segments), if it runs.
pub fn capture(bot: u32) -> Option<u32> {
    children(bot).into_iter().find(|&pid| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        comm(pid).as_deref() == Some("ffmpeg") && cmdline.split(|b| *b == 0).any(|arg| arg.starts_with(b"seg_"))
    })
}

/// The bots (`recfleet-bot` processes) the controller at `base` (`http://host:port`) started.
pub fn bots_of(base: &str) -> Vec<u32> {
    let needle = format!("RECFLEET_CONTROLLER_URL=ws://{}/", base.trim_start_matches("http://"));
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|&pid| env(pid).iter().any(|kv| kv.starts_with(&needle)) && comm(pid).as_deref() == Some("recfleet-bot"))
        .collect()
}

/// The value of `var` in the environment of `pid`.
pub fn env_var(pid: u32, var: &str) -> Option<String> {
    let prefix = format!("{var}=");
    env(pid).into_iter().find_map(|kv| kv.strip_prefix(&prefix).map(str::to_string))
}

fn env(pid: u32) -> Vec<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    environ.split(|b| *b == 0).map(|kv| String::from_utf8_lossy(kv).into_owned()).collect()
}

/// The command name of `pid`.
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|c| c.trim().to_string())
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

/// Chromium's processes under `root` (a bot's pid): each pid with its `--type=` (`None` for the
/// browser process itself; `renderer`, `gpu-process`, `zygote`… for its helpers).
pub fn chromium(root: u32) -> Vec<(u32, Option<String>)> {
    descendants(root)
        .into_iter()
        .filter_map(|pid| {
            // Chromium's helpers rewrite their title: all arguments in one, space-separated.
            let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).ok()?).replace('\0', " ");
            let mut args = cmdline.split_whitespace();
            if !args.next()?.ends_with("/chromium") {
                return None;
            }
            Some((pid, args.find_map(|a| a.strip_prefix("--type=").map(str::to_string))))
        })
        .collect()
}
