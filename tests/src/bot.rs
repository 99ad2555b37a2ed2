//! Runs the real `recfleet-bot` binary the way a user does and reads back what it left: the
//! summary line, `events.json`, `manifest.json` and the MP4.
//!
//! Each run carries a unique tag in its environment, which every child inherits, so a test can
//! find anything the run left behind without caring what else runs on the machine.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

pub const TAG_VAR: &str = "RECFLEET_TEST_TAG";

/// A bot that is running.
#[derive(Debug)]
pub struct BotProcess {
    child: Child,
    pub out_dir: PathBuf,
    pub tag: String,
}

/// A bot that has exited.
#[derive(Debug)]
pub struct BotRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub out_dir: PathBuf,
    pub tag: String,
}

/// Starts `recfleet-bot record --out <out_dir> <args>`.
pub fn spawn_record(out_dir: &Path, args: &[&str]) -> BotProcess {
    spawn_record_with_env(out_dir, args, &[])
}

/// Starts `recfleet-bot record --out <out_dir> <args>` with more environment (an S3 endpoint).
pub fn spawn_record_with_env(out_dir: &Path, args: &[&str], env: &[(&str, String)]) -> BotProcess {
    spawn(Command::new(crate::binary("recfleet-bot")), out_dir, args, env)
}

/// Starts `recfleet-bot record` inside the network namespace `netns` (`ip netns exec`, which
/// execs the bot: its pid is the bot's).
pub fn spawn_record_in_netns(netns: &str, out_dir: &Path, args: &[&str]) -> BotProcess {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns]).arg(crate::binary("recfleet-bot"));
    spawn(cmd, out_dir, args, &[])
}

fn spawn(mut cmd: Command, out_dir: &Path, args: &[&str], env: &[(&str, String)]) -> BotProcess {
    let tag = format!("t{}-{}", std::process::id(), unique());
    cmd.arg("record")
        .arg("--out")
        .arg(out_dir)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env(TAG_VAR, &tag)
        .env("RUST_LOG", "info,recfleet_bot=debug,chromiumoxide=error")
        // The test meetings are on loopback; a test of the policy passes `--allow-networks`.
        .env(crate::serve::ALLOW_NETWORKS.0, crate::serve::ALLOW_NETWORKS.1)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("spawn recfleet-bot");
    BotProcess { child, out_dir: out_dir.to_path_buf(), tag }
}

/// Runs a bot to the end (or fails the test after `limit`).
pub async fn record(out_dir: &Path, args: &[&str], limit: Duration) -> BotRun {
    spawn_record(out_dir, args).finish(limit).await
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos() as u64);
    nanos * 1000 + N.fetch_add(1, Ordering::SeqCst)
}

impl BotProcess {
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the bot is running")
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the pid of a child we own.
        unsafe {
            libc::kill(self.pid() as libc::pid_t, signal);
        }
    }

    /// Waits until `events.json` holds an event of `kind`.
    pub async fn wait_for_event(&mut self, kind: &str, limit: Duration) -> Value {
        let started = Instant::now();
        loop {
            if let Some(e) = read_json(&self.out_dir.join("events.json"))
                .and_then(|t| t["events"].as_array().and_then(|es| es.iter().find(|e| e["kind"] == kind).cloned()))
            {
                return e;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the bot exited ({status}) before the {kind} event");
            }
            assert!(started.elapsed() < limit, "no {kind} event within {limit:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn finish(mut self, limit: Duration) -> BotRun {
        let mut stdout = self.child.stdout.take().expect("stdout piped");
        let mut stderr = self.child.stderr.take().expect("stderr piped");
        let (mut out, mut err) = (String::new(), String::new());
        let waited = tokio::time::timeout(limit, async {
            let (a, b, status) = tokio::join!(stdout.read_to_string(&mut out), stderr.read_to_string(&mut err), self.child.wait());
            a.and(b).and(status)
        })
        .await;
        let status = match waited {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("waiting for the bot failed: {e}"),
            Err(_) => {
                let _ = self.child.start_kill();
                panic!("the bot did not finish within {limit:?}; stderr so far:\n{err}");
            }
        };
        BotRun { status, stdout: out, stderr: err, out_dir: self.out_dir, tag: self.tag }
    }
}

impl BotRun {
    /// The last stdout line, which the bot promises is its JSON summary.
    pub fn summary(&self) -> Value {
        let last = self.stdout.lines().last().unwrap_or_else(|| panic!("no stdout; stderr:\n{}", self.stderr));
        serde_json::from_str(last).unwrap_or_else(|e| panic!("last stdout line is not JSON ({e}): {last}"))
    }

    pub fn exit_code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    pub fn events(&self) -> Value {
        read_json(&self.out_dir.join("events.json")).expect("events.json")
    }

    pub fn event(&self, kind: &str) -> Option<Value> {
        self.events()["events"].as_array()?.iter().find(|e| e["kind"] == kind).cloned()
    }

    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events()["events"].as_array().map(|es| es.iter().filter(|e| e["kind"] == kind).cloned().collect()).unwrap_or_default()
    }

    pub fn manifest(&self) -> Value {
        read_json(&self.out_dir.join("manifest.json")).expect("manifest.json")
    }

    pub fn mp4(&self) -> PathBuf {
        self.out_dir.join("recording.mp4")
    }

    /// Fails with the bot's log unless it exited with `code`.
    pub fn assert_exit(&self, code: i32) {
        assert_eq!(self.exit_code(), code, "exit code; stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        assert!(!self.stderr.contains("panicked"), "the bot panicked:\n{}", self.stderr);
    }

    /// Anything this run left running (the bot's children carry its tag).
    pub fn leftovers(&self) -> Vec<(u32, String)> {
        crate::procs::tagged(TAG_VAR, &self.tag, 5.0)
    }
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}
