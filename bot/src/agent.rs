//! The bot under a controller (`recfleet-bot agent`): warm up, dial the controller over a
//! WebSocket, say `Hello`, heartbeat, take one `Assign`, record it, report as it goes, say
//! `Finished` and exit. Bots are single-use.
//!
//! A lost connection does not stop the recording: messages queue and the connection is
//! re-dialled with backoff, with a fresh `Hello` naming the recording. This module owns the
//! connection; the recording itself is `record`'s.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use recfleet_proto::protocol::{Assignment, BotMessage, ControllerMessage, Outcome, PROTOCOL_VERSION};
use recfleet_proto::{CaptureStats, Event, ManifestSegment, RecordingStatus, SubCode, UploadStats};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::config::{RecordConfig, UploadSettings, VideoConfig, DEFAULT_JOIN_ATTEMPTS};
use crate::handoff::HandoffLink;
use crate::journal::Reporter;
use crate::record::{record_on, RecordError};
use crate::session::Session;

/// How often a bot says it is alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// How long one dial may take before the next controller is tried.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest pause between reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);
/// Dial failures this recent are logged at debug only: a bot launched a moment before its
/// controller listens, or a controller restarting, is not worth a warning.
const QUIET_DIAL_FAILURES: Duration = Duration::from_secs(5);
/// How long the last messages get to reach the controller before the bot exits anyway.
const FLUSH_DEADLINE: Duration = Duration::from_secs(10);
/// How long a bot taken away records on for a successor, at most (`--handoff-grace-secs`):
/// inside Docker's stop timeout as the controller sets it and ECS's `stopTimeout` (120 s).
pub const DEFAULT_HANDOFF_GRACE_SECS: u64 = 20;
/// How long the controller has to answer a handoff request before the bot stops as a signal
/// says.
const HANDOFF_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// What `recfleet-bot agent` is told at launch.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `ws://host:port/v1/bots/connect?bot_id=…` (or `?task=…` for an ECS task): every
    /// controller that may lead, tried in turn (a standby answers 503 and the next is tried).
    pub controller_urls: Vec<String>,
    /// The bot's id, or until the controller's `Welcome` names it, its ECS task's.
    pub bot_id: String,
    /// Issued by the controller for this bot, or a launch token it exchanges at the first
    /// connection for its own (`Welcome`).
    pub token: String,
    /// Recordings are spooled in `<spool_root>/<recording_id>/`.
    pub spool_root: PathBuf,
    /// An idle bot that reaches no controller for this long exits.
    pub orphan_timeout: Duration,
    /// Where segments go as they close.
    pub upload: Option<UploadSettings>,
    pub min_free_bytes: u64,
    pub video: VideoConfig,
    /// Browser restarts and rejoins allowed per recording.
    pub max_rejoins: u32,
    /// Encoder restarts allowed per recording.
    pub max_capture_restarts: u32,
    /// Digital silence this long is reported as `capture_silent`.
    pub silence_fault: Duration,
    /// Each recording's joining, stopping and finalizing deadlines.
    pub deadlines: recfleet_proto::Deadlines,
    /// How long a SIGTERMed bot records on for its successor; zero: no handoff.
    pub handoff_grace: Duration,
    /// Where the browser may go besides the public internet (`--allow-networks`).
    pub network: recfleet_proto::NetworkPolicy,
    /// Where the bot's own warn and error events are forwarded from.
    pub logs: crate::forward_log::LogForward,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("the bot was stopped before it was assigned a recording")]
    StoppedIdle,
    #[error("no controller reachable for {0:?} while idle: exiting rather than running forever")]
    Orphaned(Duration),
    #[error("the controller URL {0:?} is not a ws:// or wss:// URL")]
    BadUrl(String),
}

/// Forwards the recording's progress to the controller.
#[derive(Debug)]
struct Forward {
    recording_id: String,
    outbox: mpsc::UnboundedSender<BotMessage>,
    live: Arc<std::sync::Mutex<Live>>,
}

/// What the heartbeats report besides the bot's own CPU and memory.
#[derive(Debug, Default)]
struct Live {
    upload: Option<UploadStats>,
    capture: Option<Arc<std::sync::Mutex<CaptureStats>>>,
}

impl Reporter for Forward {
    fn event(&self, event: &Event) {
        let _ = self.outbox.send(BotMessage::Timeline { recording_id: self.recording_id.clone(), event: event.clone() });
    }
    fn segment(&self, segment: &ManifestSegment, upload_lag_ms: Option<u64>) {
        let _ = self.outbox.send(BotMessage::SegmentStored {
            recording_id: self.recording_id.clone(),
            segment: segment.clone(),
            upload_lag_ms,
        });
    }
    fn upload(&self, stats: &UploadStats) {
        self.live.lock().expect("live stats lock").upload = Some(stats.clone());
    }
    fn capture(&self, stats: Arc<std::sync::Mutex<CaptureStats>>) {
        self.live.lock().expect("live stats lock").capture = Some(stats);
    }
    fn status(&self, status: RecordingStatus, sub_code: Option<SubCode>) {
        let _ = self.outbox.send(BotMessage::StateChanged { recording_id: self.recording_id.clone(), status, sub_code });
    }
}

/// Runs the agent until its one recording is finished (or it is stopped while idle).
/// `shutdown` stops it now; `preempt` (SIGTERM: its host is taking it away) hands its
/// recording over to a successor the controller picks, or stops it when there is none.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken, preempt: CancellationToken) -> Result<(), AgentError> {
    use tracing::Instrument;
    let span = tracing::info_span!("bot", bot_id = %cfg.bot_id);
    run_in_span(cfg, shutdown, preempt).instrument(span).await
}

async fn run_in_span(cfg: AgentConfig, shutdown: CancellationToken, preempt: CancellationToken) -> Result<(), AgentError> {
    if cfg.controller_urls.is_empty() {
        return Err(AgentError::BadUrl(String::new()));
    }
    if let Some(bad) = cfg.controller_urls.iter().find(|u| !(u.starts_with("ws://") || u.starts_with("wss://"))) {
        return Err(AgentError::BadUrl(bad.clone()));
    }
    let (outbox, outbox_rx) = mpsc::unbounded_channel::<BotMessage>();
    cfg.logs.connect(&cfg.bot_id, outbox.clone());
    let (inbox_tx, mut inbox) = mpsc::unbounded_channel::<ControllerMessage>();
    let hello = BotMessage::Hello { bot_id: cfg.bot_id.clone(), protocol: PROTOCOL_VERSION, ready: false, recording_id: None };
    let (hello_tx, hello_rx) = watch::channel(hello);
    let (offline_tx, offline_rx) = watch::channel(Some(std::time::Instant::now()));
    let offline = offline_rx.clone();
    let link = tokio::spawn(connection(cfg.controller_urls.clone(), cfg.token.clone(), hello_rx, outbox_rx, inbox_tx, offline_tx));

    // Warm up while the connection comes up; a bot is idle only once this is done.
    let session = match Session::start(&cfg.video, cfg.network).await {
        Ok(s) => s,
        Err(err) => {
            let err = RecordError::from(err);
            let _ = outbox.send(BotMessage::Log {
                level: recfleet_proto::protocol::LogLevel::Error,
                message: err.to_string(),
                fields: serde_json::Map::new(),
            });
            cfg.logs.disconnect();
            drop(outbox);
            flush(link).await;
            return Err(err.into());
        }
    };
    hello_tx.send_modify(|h| {
        if let BotMessage::Hello { ready, .. } = h {
            *ready = true;
        }
    });
    let _ = outbox.send(BotMessage::Ready);
    let live = Arc::new(std::sync::Mutex::new(Live::default()));
    let heartbeat = tokio::spawn(heartbeats(outbox.clone(), live.clone()));

    let assignment = tokio::select! {
        a = next_assignment(&mut inbox) => a.ok_or(AgentError::StoppedIdle),
        _ = shutdown.cancelled() => Err(AgentError::StoppedIdle),
        _ = preempt.cancelled() => Err(AgentError::StoppedIdle),
        _ = orphaned(offline_rx, cfg.orphan_timeout) => Err(AgentError::Orphaned(cfg.orphan_timeout)),
    };
    let assignment = match assignment {
        Ok(a) => a,
        Err(err) => {
            if matches!(err, AgentError::Orphaned(_)) {
                tracing::warn!(timeout_secs = cfg.orphan_timeout.as_secs(), "no controller reachable while idle; exiting");
            }
            heartbeat.abort();
            session.shutdown().await;
            cfg.logs.disconnect();
            drop(outbox);
            flush(link).await;
            return Err(err);
        }
    };
    let recording_id = assignment.recording_id.clone();
    tracing::info!(recording_id = %recording_id, "assigned");
    hello_tx.send_modify(|h| {
        if let BotMessage::Hello { recording_id: r, .. } = h {
            *r = Some(recording_id.clone());
        }
    });

    // A `Stop` from the controller ends the recording with `stopped_by_api`, a signal (a
    // host taken back, a scale-in) hands it over or ends it with `stopped_by_signal`.
    let stop = shutdown.child_token();
    let stop_code = crate::record::StopCode::new(SubCode::StoppedBySignal);
    let handoff = Arc::new(HandoffLink::default());
    let record_cfg = to_record_config(&cfg, &assignment, &handoff);
    let controls = Controls {
        recording_id: recording_id.clone(),
        stop: stop.clone(),
        stop_code: stop_code.clone(),
        link: handoff.clone(),
        outbox: outbox.clone(),
        grace: cfg.handoff_grace,
        offline,
        out_dir: record_cfg.out_dir.clone(),
        successor: assignment.continuation.is_some(),
    };
    let stop_on_message = tokio::spawn(tracing::Instrument::in_current_span(controls.run(inbox, preempt)));
    let reporter = Arc::new(Forward { recording_id: recording_id.clone(), outbox: outbox.clone(), live });
    cfg.logs.recording(&recording_id);
    let span = tracing::info_span!("recording", recording_id = %recording_id);
    let result = tracing::Instrument::instrument(record_on(session, &record_cfg, &stop, &stop_code, reporter), span).await;
    let last_sequence = recfleet_media::next_sequence(&record_cfg.out_dir).map_or(0, |n| n.saturating_sub(1));
    if let Ok(summary) = &result {
        // Everything is in the store: the spool has done its job. Otherwise it stays, for
        // `recfleet-bot upload` (nothing recorded is deleted before it is stored).
        if summary.upload.as_ref().is_some_and(|u| u.not_uploaded.is_empty()) {
            if let Err(err) = std::fs::remove_dir_all(&record_cfg.out_dir) {
                tracing::warn!(error = %err, dir = %record_cfg.out_dir.display(), "cannot remove the spool folder");
            }
        }
    }
    stop_on_message.abort();
    heartbeat.abort();
    let outcome = match (&result, handoff.handing_over_to()) {
        (Ok(summary), Some(successor)) => Outcome::HandedOff { successor, last_sequence, upload: summary.upload.clone() },
        (Ok(summary), None) => Outcome::Completed { summary: Box::new(summary.clone()) },
        (Err(err), _) => Outcome::Failed { sub_code: err.sub_code(), code: err.code().into(), message: err.to_string() },
    };
    let _ = outbox.send(BotMessage::Finished { recording_id, outcome });
    cfg.logs.disconnect();
    drop(outbox);
    flush(link).await;
    result.map(|_| ()).map_err(AgentError::from)
}

fn to_record_config(cfg: &AgentConfig, a: &Assignment, link: &Arc<HandoffLink>) -> RecordConfig {
    RecordConfig {
        url: a.meeting_url.clone(),
        recipe: a.recipe.clone(),
        bot_name: a.bot_name.clone(),
        recording_id: a.recording_id.clone(),
        out_dir: spool_dir(&cfg.spool_root, a),
        max_duration: a.max_duration_secs.map(Duration::from_secs),
        video: cfg.video.clone(),
        join_attempts: DEFAULT_JOIN_ATTEMPTS,
        max_rejoins: cfg.max_rejoins,
        max_capture_restarts: cfg.max_capture_restarts,
        silence_fault: cfg.silence_fault,
        deadlines: cfg.deadlines,
        upload: cfg.upload.clone(),
        min_free_bytes: cfg.min_free_bytes,
        continuation: a.continuation.clone(),
        handoff: Some(link.clone()),
        network: cfg.network,
    }
}

/// `<spool_root>/<recording_id>`, or for a successor `<recording_id>-<generation>`: its
/// predecessor may be on the same host, with its own folder still in use.
fn spool_dir(root: &std::path::Path, a: &Assignment) -> PathBuf {
    match &a.continuation {
        Some(c) => root.join(format!("{}-{}", a.recording_id, c.generation)),
        None => root.join(&a.recording_id),
    }
}

/// Where a handoff stands, for the bot taken away.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Handing {
    Not,
    /// Asked for a successor (the host's SIGTERM came at `since`); the answer is due by `until`.
    Requested {
        since: Instant,
        until: Instant,
    },
    /// A successor is joining; this bot records on until its first segment, or until then.
    Accepted {
        until: Instant,
    },
    /// Over, one way or the other.
    Done,
}

/// The controller's messages about the recording, and the host's SIGTERM.
#[derive(Debug)]
struct Controls {
    recording_id: String,
    stop: CancellationToken,
    stop_code: crate::record::StopCode,
    link: Arc<HandoffLink>,
    outbox: mpsc::UnboundedSender<BotMessage>,
    grace: Duration,
    offline: watch::Receiver<Option<Instant>>,
    out_dir: PathBuf,
    /// It carries on another bot's recording.
    successor: bool,
}

impl Controls {
    async fn run(self, mut inbox: mpsc::UnboundedReceiver<ControllerMessage>, preempt: CancellationToken) {
        let mut handing = Handing::Not;
        // Without a connection (the controller refused the token) a SIGTERM still stops.
        let mut open = true;
        loop {
            let due = match handing {
                Handing::Requested { until, .. } | Handing::Accepted { until } => Some(until),
                Handing::Not | Handing::Done => None,
            };
            tokio::select! {
                msg = inbox.recv(), if open => match msg {
                    Some(msg) => handing = self.on_message(msg, handing),
                    None => open = false,
                },
                _ = preempt.cancelled(), if handing == Handing::Not => {
                    handing = if open { self.request_handoff().await } else { self.stop_now("no controller") };
                }
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()), if due.is_some() => {
                    handing = match handing {
                        Handing::Requested { .. } => {
                            tracing::warn!("the controller did not answer the handoff request; stopping");
                            // A late acceptance must not leave a successor recording too.
                            let _ = self.outbox.send(BotMessage::HandoffWithdrawn { recording_id: self.recording_id.clone() });
                            self.stop_now("no answer")
                        }
                        _ => {
                            tracing::warn!(grace_secs = self.grace.as_secs(), "the grace is up before the successor's first segment; leaving it the recording");
                            self.link.hand_over();
                            self.stop.cancel();
                            Handing::Done
                        }
                    };
                }
                // Nothing left to wait for: no connection, and the handoff is over.
                else => return,
            }
        }
    }

    /// Ends the recording as a signal says, with no handoff.
    fn stop_now(&self, why: &str) -> Handing {
        tracing::info!(why, "no handoff: stopping");
        self.link.withdraw();
        self.stop.cancel();
        Handing::Done
    }

    fn on_message(&self, msg: ControllerMessage, handing: Handing) -> Handing {
        let id = &self.recording_id;
        match msg {
            ControllerMessage::Stop { recording_id } if &recording_id == id => {
                tracing::info!(recording_id = %id, "stop requested");
                if !self.stop.is_cancelled() {
                    self.stop_code.set(SubCode::StoppedByApi);
                }
                // A stop while a handoff is under way (its successor not recording yet) calls it
                // off: this bot finishes the recording.
                if matches!(handing, Handing::Requested { .. } | Handing::Accepted { .. }) {
                    return self.stop_now("stopped by the API");
                }
                self.stop.cancel();
            }
            ControllerMessage::HandoffAccepted { recording_id, successor } if &recording_id == id => {
                if let Handing::Requested { since, .. } = handing {
                    tracing::info!(%successor, "a successor takes the recording over; recording on until it stores its first segment");
                    self.link.accept(&successor);
                    // The grace counts from the host's SIGTERM.
                    return Handing::Accepted { until: since + self.grace };
                }
            }
            ControllerMessage::HandoffRefused { recording_id, reason } if &recording_id == id => {
                // Refused at once, or called off (the successor could not join).
                if matches!(handing, Handing::Requested { .. } | Handing::Accepted { .. }) {
                    tracing::warn!(%reason, "no successor for the recording");
                    return self.stop_now("refused");
                }
                // To a successor: its handoff is called off before it recorded.
                if self.successor && !self.link.is_called_off() {
                    tracing::warn!(%reason, "the handoff this bot was to carry on is called off; stopping without outputs");
                    self.link.call_off();
                    self.stop.cancel();
                }
            }
            ControllerMessage::HandOver { recording_id } if &recording_id == id => {
                if let Handing::Accepted { .. } = handing {
                    tracing::info!("the successor's first segment is stored; handing over");
                    self.link.hand_over();
                    self.stop.cancel();
                    return Handing::Done;
                }
            }
            ControllerMessage::Inherited { recording_id, segment } if &recording_id == id => self.link.inherit(segment),
            ControllerMessage::PredecessorDone { recording_id } if &recording_id == id => self.link.set_predecessor_done(),
            ControllerMessage::Assign(a) => {
                tracing::warn!(recording_id = %a.recording_id, "second assignment to a single-use bot; ignored")
            }
            ControllerMessage::Retire => tracing::debug!("retire while recording; ignored"),
            // Taken by the connection, never passed on.
            ControllerMessage::Welcome { .. } => {}
            ControllerMessage::Stop { recording_id }
            | ControllerMessage::HandoffAccepted { recording_id, .. }
            | ControllerMessage::HandoffRefused { recording_id, .. }
            | ControllerMessage::HandOver { recording_id }
            | ControllerMessage::Inherited { recording_id, .. }
            | ControllerMessage::PredecessorDone { recording_id } => {
                tracing::warn!(%recording_id, "a message for another recording; ignored")
            }
        }
        handing
    }

    /// The host is taking the bot away: asks for a successor when one can take over (the
    /// capture runs, the controller is there, handoffs are on), else stops now.
    async fn request_handoff(&self) -> Handing {
        let since = Instant::now();
        let connected = self.offline.borrow().is_none();
        if self.grace.is_zero() || !self.link.is_recording() || !connected {
            tracing::info!(recording = self.link.is_recording(), connected, grace_secs = self.grace.as_secs(), "no handoff possible");
            return self.stop_now("no handoff possible");
        }
        let Some(last_sequence) = self.link.flush().await else {
            tracing::warn!("the uploader did not write the store's manifest; stopping without a handoff");
            return self.stop_now("no manifest");
        };
        // Past every segment on disk, stored or not, and what the grace can still add.
        let highest = recfleet_media::next_sequence(&self.out_dir).map_or(last_sequence, |n| n.saturating_sub(1)).max(last_sequence);
        let (successor_first_sequence, successor_generation) = crate::handoff::successor_start(highest, self.link.generation(), self.grace);
        tracing::info!(last_sequence, successor_first_sequence, "asking the controller for a successor");
        let _ = self.outbox.send(BotMessage::HandoffRequested {
            recording_id: self.recording_id.clone(),
            last_sequence,
            successor_first_sequence,
            successor_generation,
        });
        self.link.requested_sent();
        Handing::Requested { since, until: Instant::now() + HANDOFF_ANSWER_TIMEOUT }
    }
}

async fn next_assignment(inbox: &mut mpsc::UnboundedReceiver<ControllerMessage>) -> Option<Assignment> {
    while let Some(msg) = inbox.recv().await {
        match msg {
            ControllerMessage::Assign(a) => return Some(*a),
            ControllerMessage::Stop { recording_id } => {
                tracing::debug!(%recording_id, "stop while idle; nothing to stop")
            }
            ControllerMessage::Retire => {
                tracing::info!("retired by the controller while idle");
                return None;
            }
            ControllerMessage::Welcome { .. } => {}
            other => tracing::debug!(message = ?other, "a handoff message while idle; ignored"),
        }
    }
    None
}

async fn heartbeats(outbox: mpsc::UnboundedSender<BotMessage>, live: Arc<std::sync::Mutex<Live>>) {
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    let mut vitals = crate::vitals::Vitals::default();
    // A container's HEALTHCHECK looks at this file's age (see container/Dockerfile.bot).
    let health_file = std::env::var_os("RECFLEET_HEALTH_FILE").map(std::path::PathBuf::from);
    let mut last_progress: Option<(u64, u64)> = None;
    loop {
        tick.tick().await;
        if let Some(path) = &health_file {
            if let Err(err) = std::fs::write(path, b"ok") {
                tracing::debug!(error = %err, "cannot touch the health file");
            }
        }
        let (cpu_cores, rss_bytes) = vitals.sample();
        let (upload, mut capture) = {
            let live = live.lock().expect("live stats lock");
            (live.upload.clone(), live.capture.as_ref().map(|c| c.lock().expect("capture stats lock").clone()))
        };
        if let Some(c) = capture.as_mut() {
            // Frames over the time between the two progress reports they come from: exact,
            // whatever the heartbeat's own timing.
            if let (Some((frames, ms)), Some(now_ms)) = (last_progress, c.progress_ms) {
                if now_ms >= ms + 1000 && c.frames >= frames {
                    c.fps = Some((c.frames - frames) as f64 * 1000.0 / (now_ms - ms) as f64);
                }
            }
            if let Some(ms) = c.progress_ms {
                if last_progress.is_none_or(|(_, last)| ms >= last + 1000) {
                    last_progress = Some((c.frames, ms));
                }
            }
        }
        if outbox.send(BotMessage::Heartbeat { capture, cpu_cores, rss_bytes, upload }).is_err() {
            return;
        }
    }
}

/// Resolves once the controller has been unreachable for `limit` without a break
/// (`offline` holds since when, `None` while connected).
async fn orphaned(mut offline: watch::Receiver<Option<std::time::Instant>>, limit: Duration) {
    loop {
        let since = *offline.borrow_and_update();
        let change = async {
            if offline.changed().await.is_err() {
                // The connection gave up: the state stays as it is.
                std::future::pending::<()>().await;
            }
        };
        match since {
            Some(at) => {
                let left = limit.saturating_sub(at.elapsed());
                if left.is_zero() {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(left) => {}
                    _ = change => {}
                }
            }
            None => change.await,
        }
    }
}

/// Gives the connection task a bounded time to deliver what is queued.
async fn flush(link: tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(FLUSH_DEADLINE, link).await.is_err() {
        tracing::warn!("the controller did not take the last messages in time; exiting anyway");
    }
}

/// `wss://` (a controller behind a TLS load balancer, as the Terraform deployment has it) goes
/// through rustls, whose process-wide crypto provider is chosen once: aws-lc-rs, the AWS SDK's.
fn install_tls_provider() {
    // Err: one is installed already, which is as good.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Keeps one WebSocket to the controller: dials the URLs in turn (one that refuses or answers
/// 503, a standby, gives way to the next; after a whole round without a connection it backs
/// off), says the current `Hello` on every connection, sends queued messages in order
/// (re-sending the one a broken socket lost), passes the controller's messages on. Ends when
/// the outbox is closed and drained.
async fn connection(
    urls: Vec<String>,
    token: String,
    hello: watch::Receiver<BotMessage>,
    mut outbox: mpsc::UnboundedReceiver<BotMessage>,
    inbox: mpsc::UnboundedSender<ControllerMessage>,
    offline: watch::Sender<Option<std::time::Instant>>,
) {
    install_tls_provider();
    let (mut urls, mut token) = (urls, token);
    let mut pending: Option<BotMessage> = None;
    let mut delay = Duration::from_millis(100);
    let mut failing_since: Option<std::time::Instant> = None;
    let (mut turn, mut misses) = (0usize, 0usize);
    loop {
        let url = &urls[turn % urls.len()];
        let mut request = match url.as_str().into_client_request() {
            Ok(r) => r,
            Err(err) => {
                tracing::error!(error = %err, %url, "bad controller URL");
                return;
            }
        };
        if let Ok(value) = format!("Bearer {token}").parse() {
            request.headers_mut().insert("authorization", value);
        }
        // Bounded: a controller whose host is gone (no refusal, no answer) must not hold up the
        // turn of the next one.
        let dialled = match tokio::time::timeout(DIAL_TIMEOUT, tokio_tungstenite::connect_async(request)).await {
            Ok(dialled) => dialled,
            Err(_) => Err(tokio_tungstenite::tungstenite::Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))),
        };
        let mut ws = match dialled {
            Ok((ws, _)) => {
                delay = Duration::from_millis(100);
                failing_since = None;
                ws
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) if resp.status() == 401 => {
                // The controller does not know this bot (its token is not one it issued): retrying
                // cannot help. Without a connection the agent gives up its wait for work.
                tracing::error!("the controller refused this bot's token; giving up");
                return;
            }
            Err(err) => {
                turn += 1;
                misses += 1;
                if misses % urls.len() != 0 {
                    tracing::debug!(error = %err, %url, "this controller does not take the bot; trying the next");
                    continue;
                }
                let failing_for = failing_since.get_or_insert_with(std::time::Instant::now).elapsed();
                let retry_in_ms = delay.as_millis() as u64;
                if failing_for < QUIET_DIAL_FAILURES {
                    tracing::debug!(error = %err, retry_in_ms, "cannot reach the controller yet");
                } else {
                    tracing::warn!(error = %err, retry_in_ms, failing_secs = failing_for.as_secs(), "cannot reach the controller");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                continue;
            }
        };
        misses = 0;
        let greeting = hello.borrow().clone();
        if send(&mut ws, &greeting).await.is_err() {
            continue;
        }
        offline.send_replace(None);
        let mut clean_close = false;
        loop {
            let next = match pending.take() {
                Some(msg) => Some(msg),
                None => {
                    tokio::select! {
                        msg = outbox.recv() => match msg {
                            Some(msg) => Some(msg),
                            None => {
                                let _ = ws.close(None).await;
                                return;
                            }
                        },
                        frame = ws.next() => {
                            match frame {
                                Some(Ok(Message::Text(text))) => match serde_json::from_str::<ControllerMessage>(&text) {
                                    Ok(ControllerMessage::Welcome { bot_id, token: own }) => {
                                        // The launch token is spent: every later dial is as this bot.
                                        tracing::info!(%bot_id, "the controller took the launch token; dialling as this bot from now on");
                                        urls = urls.iter().map(|u| dial_as(u, "bot_id", &bot_id)).collect();
                                        token = own;
                                    }
                                    Ok(msg) => { let _ = inbox.send(msg); }
                                    Err(err) => tracing::warn!(error = %err, "unreadable controller message"),
                                },
                                Some(Ok(Message::Close(_))) => {
                                    clean_close = true;
                                    break;
                                }
                                None | Some(Err(_)) => break,
                                Some(Ok(_)) => {}
                            }
                            None
                        }
                    }
                }
            };
            if let Some(msg) = next {
                if send(&mut ws, &msg).await.is_err() {
                    pending = Some(msg);
                    break;
                }
            }
        }
        offline.send_replace(Some(std::time::Instant::now()));
        if clean_close {
            tracing::info!("the controller closed the connection; reconnecting");
        } else {
            tracing::warn!("lost the controller; reconnecting (the recording goes on)");
        }
    }
}

/// `url` with its query naming the dialler: `bot_id`, or an ECS launch's `task`.
pub fn dial_as(url: &str, key: &str, id: &str) -> String {
    let base = url.split_once('?').map_or(url, |(base, _)| base);
    format!("{base}?{key}={id}")
}

async fn send<S>(ws: &mut S, msg: &BotMessage) -> Result<(), ()>
where
    S: futures::Sink<Message> + Unpin,
{
    let text = serde_json::to_string(msg).expect("messages serialize");
    ws.send(Message::text(text)).await.map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A `wss://` controller URL is dialled over TLS: the first bytes on the wire are a TLS
    /// handshake record carrying the host's name (SNI), not an HTTP upgrade in the clear.
    #[tokio::test]
    async fn wss_urls_are_dialled_over_tls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hello = BotMessage::Hello {
            bot_id: "bot_t".into(),
            protocol: recfleet_proto::protocol::PROTOCOL_VERSION,
            ready: false,
            recording_id: None,
        };
        let (_hello_tx, hello_rx) = watch::channel(hello);
        let (_out_tx, out_rx) = mpsc::unbounded_channel();
        let (in_tx, _in_rx) = mpsc::unbounded_channel();
        let (offline_tx, _offline_rx) = watch::channel(None);
        let url = format!("wss://localhost:{port}/v1/bots/connect?bot_id=bot_t");
        let dialler = tokio::spawn(connection(vec![url], "t".into(), hello_rx, out_rx, in_tx, offline_tx));
        let (mut socket, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await.expect("dialled").unwrap();
        // The first record, whole: its 5-byte header says how long it is (a ClientHello with a
        // post-quantum key share spans several TCP segments).
        let mut first = Vec::new();
        let mut buf = [0u8; 4096];
        while first.len() < 5 || first.len() < 5 + usize::from(u16::from_be_bytes([first[3], first[4]])) {
            let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf)).await.expect("sent").unwrap();
            assert!(n > 0, "closed after {} bytes: {first:?}", first.len());
            first.extend_from_slice(&buf[..n]);
            // An HTTP upgrade in the clear says so at once, rather than as a wait for a record.
            assert_eq!(first[0], 0x16, "not a TLS handshake: {:?}", String::from_utf8_lossy(&first));
        }
        dialler.abort();
        assert_eq!(first.get(..2), Some(&[0x16u8, 0x03][..]), "a TLS handshake record: {first:?}");
        assert!(first.windows(9).any(|w| w == b"localhost"), "the ClientHello names the host");
    }
}
