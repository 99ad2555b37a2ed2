//! Process checks for "no orphan left behind": the test becomes a child subreaper, so anything
//! the bot leaves running is re-parented to the test, where it can be found and named.

/// Makes orphans of our descendants our children instead of init's.
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments; no memory is shared.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "prctl(PR_SET_CHILD_SUBREAPER) failed");
}

/// Every process whose parent chain reaches `root`, as (pid, command name).
pub fn descendants(root: u32) -> Vec<(u32, String)> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // pid (comm) state ppid ...
        let Some(close) = stat.rfind(')') else { continue };
        let comm = stat[stat.find('(').map_or(0, |i| i + 1)..close].to_string();
        let mut rest = stat[close + 1..].split_whitespace();
        let state = rest.next().unwrap_or("");
        let ppid: u32 = rest.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if state != "Z" {
            parent_of.push((pid, ppid, comm));
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (pid, ppid, comm) in &parent_of {
            if *ppid == p {
                found.push((*pid, comm.clone()));
                frontier.push(*pid);
            }
        }
    }
    found
}

/// Waits up to `secs` for our descendants (other than `except`) to be gone; returns what is left.
pub fn wait_for_no_descendants(secs: f64) -> Vec<(u32, String)> {
    let me = std::process::id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
    loop {
        // Reap re-parented zombies so they do not linger.
        // SAFETY: waitpid with WNOHANG on any child; no memory is shared.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        let left = descendants(me);
        if left.is_empty() || std::time::Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
