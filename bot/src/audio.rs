//! The audio server: a private PulseAudio with one null sink that Chromium plays into and
//! FFmpeg records from (`<sink>.monitor`).
//!
//! Each bot runs its own daemon on its own socket, so bots on one host never hear each other.
//! Readiness: the null sink is loaded before the socket module, so the socket appearing proves
//! the sink exists. This module must not know who plays or records.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::child::{describe_exit, ChildError, Supervised};

pub const SINK_NAME: &str = "recfleet";
pub const SAMPLE_RATE: u32 = 48_000;
const SOCKET_POLL: Duration = Duration::from_millis(10);

/// Pure: the PulseAudio command line for a daemon whose socket is `socket`.
pub fn pulseaudio_args(socket: &Path) -> Vec<String> {
    vec![
        "--daemonize=no".into(),
        "--exit-idle-time=-1".into(),
        "--use-pid-file=no".into(),
        "--disable-shm=yes".into(),
        "--log-target=stderr".into(),
        // -n: no default script, so nothing probes for sound cards that a server has not.
        "-n".into(),
        format!(
            "--load=module-null-sink sink_name={SINK_NAME} rate={SAMPLE_RATE} channels=2 sink_properties=device.description={SINK_NAME}"
        ),
        format!("--load=module-native-protocol-unix auth-anonymous=1 socket={}", socket.display()),
    ]
}

/// Latency the keeper stream asks of the sink.
const KEEPER_LATENCY_MSEC: u32 = 20;
/// 20 ms of 48 kHz stereo s16: proof that the monitor flows.
const WARM_UP_BYTES: usize = 3840;

/// Pure: the keeper's command line. It plays silence into the sink at a low latency: the null
/// sink renders in blocks of up to 2 s unless a client asks for less, and then opening its
/// monitor took FFmpeg 1-2 s (0.13 s with the keeper); Chromium's own stream asks for too
/// little. Silence mixed in changes nothing that is heard.
pub fn keeper_args() -> Vec<String> {
    vec![
        "--playback".into(),
        format!("--device={SINK_NAME}"),
        format!("--latency-msec={KEEPER_LATENCY_MSEC}"),
        "--format=s16le".into(),
        format!("--rate={SAMPLE_RATE}"),
        "--channels=2".into(),
        "--client-name=recfleet-keeper".into(),
    ]
}

/// A running private PulseAudio. Field order is teardown order.
#[derive(Debug)]
pub struct Audio {
    /// Keeps the sink at a low latency (see `keeper_args`).
    pub keeper: Supervised,
    pub child: Supervised,
    /// `PULSE_SERVER` for its clients.
    pub server: String,
    pub sink: &'static str,
}

impl Audio {
    /// Starts the daemon with its state under `runtime_dir` (which the caller owns and removes).
    pub async fn start(runtime_dir: &Path, ready_within: Duration) -> Result<Self, ChildError> {
        let socket: PathBuf = runtime_dir.join("pulse-native");
        let mut cmd = Command::new("pulseaudio");
        cmd.args(pulseaudio_args(&socket))
            .env("HOME", runtime_dir)
            .env("XDG_RUNTIME_DIR", runtime_dir)
            .env("XDG_CONFIG_HOME", runtime_dir.join("config"))
            .env_remove("PULSE_SERVER")
            .env_remove("DBUS_SESSION_BUS_ADDRESS");
        let mut child = Supervised::spawn("pulseaudio", cmd, None)?;
        let started = Instant::now();
        loop {
            if socket.exists() {
                tracing::debug!(ready_ms = started.elapsed().as_millis() as u64, "pulseaudio ready");
                let server = format!("unix:{}", socket.display());
                let keeper = start_keeper(&server)?;
                return Ok(Self { keeper, child, server, sink: SINK_NAME });
            }
            if let Some(status) = child.try_exit() {
                return Err(ChildError::ExitedEarly {
                    name: "pulseaudio",
                    status: describe_exit(status),
                    detail: "see the bot's debug log for its stderr".into(),
                });
            }
            if started.elapsed() > ready_within {
                return Err(ChildError::NotReady {
                    name: "pulseaudio",
                    waited_ms: started.elapsed().as_millis(),
                    detail: format!("socket {} never appeared", socket.display()),
                });
            }
            tokio::time::sleep(SOCKET_POLL).await;
        }
    }

    /// Proves the sink's monitor delivers audio at a low latency: reads 20 ms of it through a
    /// low-latency record stream. The keeper's request takes effect only once the null sink
    /// finishes the long block it was rendering (up to 2 s), so this belongs to warm-up, where
    /// it runs beside Chromium's start, and never to a recording's start.
    pub async fn warm_up(&self, ready_within: Duration) -> Result<(), ChildError> {
        let started = Instant::now();
        let mut cmd = Command::new("parec");
        cmd.args([
            "--raw".to_string(),
            format!("--latency-msec={KEEPER_LATENCY_MSEC}"),
            format!("--device={}", self.monitor_source()),
            "--format=s16le".into(),
            format!("--rate={SAMPLE_RATE}"),
            "--channels=2".into(),
        ])
        .env("PULSE_SERVER", &self.server)
        .stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
        let mut probe = Supervised::spawn_configured("parec", cmd, None)?;
        let mut stdout = probe.child_mut().stdout.take().expect("stdout was piped");
        let read = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut buf = [0u8; WARM_UP_BYTES];
            stdout.read_exact(&mut buf)
        });
        let outcome = tokio::time::timeout(ready_within, read).await;
        probe.stop(libc::SIGTERM, Duration::from_millis(500)).await;
        match outcome {
            Ok(Ok(Ok(()))) => {
                tracing::debug!(ready_ms = started.elapsed().as_millis() as u64, "audio monitor flowing");
                Ok(())
            }
            Ok(Ok(Err(err))) => Err(ChildError::NotReady {
                name: "pulseaudio",
                waited_ms: started.elapsed().as_millis(),
                detail: format!("the sink's monitor gave no audio: {err}"),
            }),
            Ok(Err(join)) => Err(ChildError::NotReady { name: "pulseaudio", waited_ms: 0, detail: join.to_string() }),
            Err(_) => Err(ChildError::NotReady {
                name: "pulseaudio",
                waited_ms: started.elapsed().as_millis(),
                detail: "the sink's monitor gave no audio".into(),
            }),
        }
    }

    /// Stops the keeper, then the daemon.
    pub async fn shutdown(&mut self, grace: Duration) {
        self.keeper.stop(libc::SIGTERM, grace).await;
        self.child.stop(libc::SIGTERM, grace).await;
    }

    /// The source FFmpeg records: everything played into the sink.
    pub fn monitor_source(&self) -> String {
        format!("{}.monitor", self.sink)
    }
}

fn start_keeper(server: &str) -> Result<Supervised, ChildError> {
    let zero =
        std::fs::File::open("/dev/zero").map_err(|source| ChildError::Spawn { name: "pacat", program: "/dev/zero".into(), source })?;
    let mut cmd = Command::new("pacat");
    cmd.args(keeper_args()).env("PULSE_SERVER", server).stderr(std::process::Stdio::piped()).stdin(zero);
    Supervised::spawn_configured("pacat", cmd, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_loads_before_the_socket() {
        let args = pulseaudio_args(Path::new("/run/x/sock"));
        let sink = args.iter().position(|a| a.contains("module-null-sink")).unwrap();
        let socket = args.iter().position(|a| a.contains("module-native-protocol-unix")).unwrap();
        assert!(sink < socket, "the socket must prove the sink is loaded");
        assert!(args[socket].ends_with("socket=/run/x/sock"));
        assert!(args.contains(&"-n".to_string()));
    }
}
