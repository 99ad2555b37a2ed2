//! Supervised child processes: explicit stdio, stderr re-logged under the child's name, a
//! staged stop (ask, wait with a deadline, then SIGKILL with the reason logged), and a kill on
//! drop so that no error path leaves an orphan.
//!
//! This module owns process mechanics only. It must not know what a child is for: readiness
//! (a socket, a DevTools line, a first frame) is each child's own module's business.

use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How often a stopping child is polled for its exit.
const EXIT_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("cannot start {name} ({program}): {source}; is it installed? (run `make setup`)")]
    Spawn { name: &'static str, program: String, source: std::io::Error },
    #[error("{name} did not become ready within {waited_ms} ms: {detail}")]
    NotReady { name: &'static str, waited_ms: u128, detail: String },
    #[error("{name} exited before it was ready ({status}): {detail}")]
    ExitedEarly { name: &'static str, status: String, detail: String },
}

/// A running child that is stopped in steps, and killed if dropped while still running.
#[derive(Debug)]
pub struct Supervised {
    name: &'static str,
    child: Child,
    exited: Option<ExitStatus>,
}

/// Called with each stderr line before it is logged; a child's readiness check may listen here.
pub type LineHook = Box<dyn FnMut(&str) + Send>;

impl Supervised {
    /// Spawns `cmd` with stdin closed and stderr piped into the log. The child gets SIGKILL if
    /// the bot's thread that spawned it dies, so even a crashed bot leaves no orphan; spawn
    /// from a long-lived thread (tokio's workers are).
    pub fn spawn(name: &'static str, mut cmd: Command, hook: Option<LineHook>) -> Result<Self, ChildError> {
        cmd.stdin(Stdio::null()).stderr(Stdio::piped());
        Self::spawn_configured(name, cmd, hook)
    }

    /// Like `spawn`, for a command whose stdio the caller has already set (stderr must be piped).
    pub fn spawn_configured(name: &'static str, mut cmd: Command, hook: Option<LineHook>) -> Result<Self, ChildError> {
        set_parent_death_signal(&mut cmd);
        let mut child =
            cmd.spawn().map_err(|source| ChildError::Spawn { name, program: cmd.get_program().to_string_lossy().into_owned(), source })?;
        if let Some(stderr) = child.stderr.take() {
            relog_stderr(name, stderr, hook);
        }
        tracing::debug!(child = name, pid = child.id(), "started");
        Ok(Self { name, child, exited: None })
    }

    /// Wraps a child spawned elsewhere (FFmpeg through ffmpeg-sidecar) for the same stop rules.
    pub fn adopt(name: &'static str, child: Child) -> Self {
        tracing::debug!(child = name, pid = child.id(), "adopted");
        Self { name, child, exited: None }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The exit status if the child has exited, without waiting.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Sends `signal`, waits up to `grace` for the child to exit, then kills it and says why.
    pub async fn stop(&mut self, signal: i32, grace: Duration) -> ExitStatus {
        if let Some(status) = self.try_exit() {
            return status;
        }
        send_signal(self.child.id(), signal);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_exit() {
                tracing::debug!(child = self.name, %status, "stopped");
                return status;
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
        tracing::warn!(
            child = self.name,
            pid = self.child.id(),
            grace_ms = grace.as_millis() as u64,
            "child ignored its stop signal within the grace period; killing it"
        );
        self.kill_now()
    }

    /// Waits for the child to exit by itself, up to `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    fn kill_now(&mut self) -> ExitStatus {
        let _ = self.child.kill();
        let status = self.child.wait().unwrap_or_else(|_| ExitStatus::from_raw(libc::SIGKILL));
        self.exited = Some(status);
        status
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            tracing::debug!(child = self.name, pid = self.child.id(), "killed on teardown");
            self.kill_now();
        }
    }
}

/// Sends a signal to one process; errors (already gone) do not matter here.
pub fn send_signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) with a pid we spawned and still own; no memory is touched.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// Asks the kernel to SIGKILL the child when the spawning thread dies.
pub fn set_parent_death_signal(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn relog_stderr(name: &'static str, stderr: ChildStderr, mut hook: Option<LineHook>) {
    let spawned = std::thread::Builder::new().name(format!("{name}-stderr")).spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(hook) = hook.as_mut() {
                hook(&line);
            }
            if !line.trim().is_empty() {
                tracing::debug!(child = name, "{line}");
            }
        }
    });
    if let Err(err) = spawned {
        tracing::warn!(child = name, error = %err, "cannot start the stderr reader; the child's log is lost");
    }
}

/// A short, human description of how a child ended.
pub fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_escalates_to_kill_when_the_signal_is_ignored() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "trap '' TERM; while :; do sleep 0.05; done"]);
        let mut child = Supervised::spawn("stubborn", cmd, None).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status = child.stop(libc::SIGTERM, Duration::from_millis(200)).await;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[tokio::test]
    async fn stop_returns_the_childs_own_exit() {
        let mut child = Supervised::spawn("sleeper", Command::new("sleep").tap_arg("30"), None).unwrap();
        let status = child.stop(libc::SIGTERM, Duration::from_secs(2)).await;
        assert_eq!(status.signal(), Some(libc::SIGTERM));
    }

    #[test]
    fn drop_kills_a_running_child() {
        let child = Supervised::spawn("sleeper", Command::new("sleep").tap_arg("30"), None).unwrap();
        let pid = child.pid();
        drop(child);
        // SAFETY: signal 0 only probes whether the pid exists.
        let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
        assert!(!alive, "child {pid} still runs after drop");
    }

    #[test]
    fn spawn_error_names_the_program() {
        let err = Supervised::spawn("ghost", Command::new("/nonexistent/recfleet-ghost"), None).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/recfleet-ghost"), "{err}");
    }

    trait TapArg {
        fn tap_arg(self, arg: &str) -> Command;
    }
    impl TapArg for Command {
        fn tap_arg(mut self, arg: &str) -> Command {
            self.arg(arg);
            self
        }
    }
}
