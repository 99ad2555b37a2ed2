//! Where bots run. One small trait; the `process` runtime (the default) launches
//! `recfleet-bot agent` as a child process; `docker` (in `docker.rs`) runs each bot in a
//! container; `ecs` (in `ecs.rs`) runs each bot as an ECS task.
//!
//! A runtime launches and stops; it must not decide how many bots there should be (that is
//! `pool`) or what they record (that is `manager`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// What a new bot needs to find its controller.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub bot_id: String,
    pub token: String,
    /// `ws://host:port/v1/bots/connect?bot_id=…`, or several separated by commas (the bot tries
    /// them in turn).
    pub controller_url: String,
    /// Recordings are spooled in `<spool_root>/<recording_id>/`.
    pub spool_root: PathBuf,
    /// More environment for the bot (the store's settings).
    pub env: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot launch bot {bot_id} ({program}): {source}")]
    Launch { bot_id: String, program: String, source: std::io::Error },
    #[error("{0}")]
    Docker(String),
    #[error("{0}")]
    Ecs(String),
}

/// Why a bot exited, as far as its runtime can tell (ECS's stop codes map onto the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// It never ran: the program, the container or the task could not be started.
    LaunchFailed,
    /// It ended on its own, successfully (its recording is done, or it was retired).
    Finished,
    /// It ended on its own with a failure, or something else killed it.
    Crashed,
    /// The runtime stopped it because the controller asked.
    Stopped,
    /// Its host was taken back (a Fargate Spot interruption, an instance's termination notice).
    Preempted,
}

impl ExitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::LaunchFailed => "launch_failed",
            ExitReason::Finished => "finished",
            ExitReason::Crashed => "crashed",
            ExitReason::Stopped => "stopped",
            ExitReason::Preempted => "preempted",
        }
    }
}

/// A launched bot's exit, reported by the runtime.
#[derive(Debug, Clone)]
pub struct Exited {
    pub bot_id: String,
    pub reason: ExitReason,
    pub detail: String,
}

/// Launches and stops bots.
pub trait Runtime: Send + Sync + std::fmt::Debug {
    /// Starts a bot; its exit is reported on the channel given at construction.
    fn launch(&self, spec: &LaunchSpec) -> Result<(), RuntimeError>;
    /// Stops a bot politely, then for good.
    fn stop(&self, bot_id: &str);
    /// The bot was signalled by its host: find out now whether the host is being taken back
    /// (what `preempted` then says). Runtimes that cannot tell do nothing.
    fn look(&self, _bot_id: &str) {}
    /// Why the bot's host is being taken back, as last seen (a Spot interruption), if it is.
    fn preempted(&self, _bot_id: &str) -> Option<String> {
        None
    }
    /// How long a launch may take to connect and warm up before it counts as failed.
    fn startup_timeout(&self) -> Duration {
        crate::fleet::STARTUP_TIMEOUT
    }
}

/// Bots as child processes of the controller.
#[derive(Debug)]
pub struct ProcessRuntime {
    bot_binary: PathBuf,
    exits: mpsc::UnboundedSender<Exited>,
    stops: std::sync::Mutex<std::collections::HashMap<String, tokio::sync::oneshot::Sender<()>>>,
    /// Bots outlive the controller: their own process group (a terminal's Ctrl-C or a signal
    /// to the controller's group does not reach them) and no kill when the controller exits.
    detached: bool,
}

/// How long a bot gets after SIGTERM to finalize before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);

impl ProcessRuntime {
    pub fn new(bot_binary: PathBuf, exits: mpsc::UnboundedSender<Exited>, detached: bool) -> Self {
        Self { bot_binary, exits, stops: Default::default(), detached }
    }
}

impl Runtime for ProcessRuntime {
    fn launch(&self, spec: &LaunchSpec) -> Result<(), RuntimeError> {
        let mut cmd = Command::new(&self.bot_binary);
        cmd.arg("agent")
            .env("RECFLEET_CONTROLLER_URL", &spec.controller_url)
            .env("RECFLEET_BOT_ID", &spec.bot_id)
            .env("RECFLEET_BOT_TOKEN", &spec.token)
            .env("RECFLEET_SPOOL_DIR", &spec.spool_root)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if self.detached {
            cmd.process_group(0);
        } else {
            cmd.kill_on_drop(true);
        }
        let child = cmd.spawn().map_err(|source| RuntimeError::Launch {
            bot_id: spec.bot_id.clone(),
            program: self.bot_binary.display().to_string(),
            source,
        })?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        self.stops.lock().expect("stops lock").insert(spec.bot_id.clone(), stop_tx);
        tokio::spawn(supervise(spec.bot_id.clone(), child, stop_rx, self.exits.clone()));
        Ok(())
    }

    fn stop(&self, bot_id: &str) {
        if let Some(tx) = self.stops.lock().expect("stops lock").remove(bot_id) {
            let _ = tx.send(());
        }
    }
}

async fn supervise(bot_id: String, mut child: Child, stop: tokio::sync::oneshot::Receiver<()>, exits: mpsc::UnboundedSender<Exited>) {
    // Only an explicit stop stops the bot: a runtime dropped on controller exit (a restart)
    // leaves it running, to be re-adopted.
    let asked = async {
        if stop.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let mut reason = None;
    let status = tokio::select! {
        status = child.wait() => status,
        _ = asked => {
            reason = Some(ExitReason::Stopped);
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            }
            match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    tracing::warn!(bot_id = %bot_id, "bot ignored SIGTERM for {STOP_GRACE:?}; killing it");
                    let _ = child.kill().await;
                    child.wait().await
                }
            }
        }
    };
    let (reason, detail) = match status {
        Ok(s) => (reason.unwrap_or(if s.success() { ExitReason::Finished } else { ExitReason::Crashed }), s.to_string()),
        Err(e) => (reason.unwrap_or(ExitReason::Crashed), format!("wait failed: {e}")),
    };
    let _ = exits.send(Exited { bot_id, reason, detail });
}
