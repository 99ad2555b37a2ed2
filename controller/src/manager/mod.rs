//! The one owner of mutable state: recordings, bots, the queue. HTTP handlers and bot
//! connections send it commands; it applies them, persists what changed (event log +
//! projection, in the store), sends webhooks on status changes, re-plans the pool, assigns queued
//! recordings to idle bots, and declares silent bots lost.
//!
//! Mutations are plain synchronous code that marks what changed; `flush` then writes the events
//! and notifies, before any reply that depends on them. A write that fails fails the request
//! that caused it (500 `internal`), makes `/readyz` unready, and is retried at the next flush:
//! nothing is dropped. A new recording is written before any bot hears of it, or not made.
//! Statuses change only through `lifecycle::advance`; bot states only through `BotState::next`.
//!
//! This file holds the state, the commands and their dispatch; each concern is one submodule:
//! `recordings` (creation, idempotency, queue, stops, timelines, recovery), `bots` (bot
//! messages, exits, liveness, the pool), `outbox` (what is written and announced) and
//! `telemetry` (heartbeats and bot logs into metrics). It must not do I/O itself other than
//! through the store, the runtime and the channels it is given.

mod bots;
mod handoff;
mod outbox;
mod recordings;
mod telemetry;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use recfleet_proto::protocol::{BotMessage, ControllerMessage};
use recfleet_proto::RecordingStatus;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::fleet::BotState;
use crate::metrics::Metrics;
use crate::model::{ApiError, CreateRecording, PoolBackoff, PoolView, QueuePlace, Recording};
use crate::recovery::{Recovered, RecoveryError};
use crate::runtime::{Exited, Runtime};
use crate::store::{token_hash, LogKind, Store, StoreError, StoredRecording};
use crate::webhook::Delivery;

/// How long a bot's last messages get to arrive after its process exited: the exit and the
/// bot's `Finished` travel on different channels, and the exit may come first.
pub const EXIT_GRACE: Duration = Duration::from_secs(3);
const TICK: Duration = Duration::from_secs(1);
/// How often the store is asked whether a silent busy bot's recording still grows.
const STORE_PROBE_EVERY: Duration = Duration::from_secs(5);

/// What the manager is asked to do.
#[derive(Debug)]
pub enum Command {
    Create {
        req: CreateRecording,
        idempotency_key: Option<String>,
        reply: oneshot::Sender<Result<(Recording, bool), ApiError>>,
    },
    Stop {
        id: String,
        reply: oneshot::Sender<Result<Recording, ApiError>>,
    },
    Delete {
        id: String,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    /// Whether the last write to the state database succeeded and the lease is renewed (for
    /// `/readyz`).
    Health {
        reply: oneshot::Sender<bool>,
    },
    /// A bot's WebSocket opened with `token`; on success its messages follow.
    BotConnected {
        bot_id: String,
        token: String,
        tx: mpsc::UnboundedSender<ControllerMessage>,
        reply: oneshot::Sender<bool>,
    },
    FromBot {
        bot_id: String,
        msg: BotMessage,
    },
    BotDisconnected {
        bot_id: String,
        /// The connection that closed.
        tx: mpsc::UnboundedSender<ControllerMessage>,
    },
    /// The controller is stopping: retire the bots (unless they are kept for a restart) while
    /// their connections are still open, then reply.
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

impl Command {
    /// Whether handling this may leave something to assign, re-plan or write.
    fn may_change_state(&self) -> bool {
        match self {
            Command::Health { .. } => false,
            Command::FromBot { msg: BotMessage::Heartbeat { .. }, .. } => false,
            Command::Create { .. }
            | Command::Stop { .. }
            | Command::Delete { .. }
            | Command::BotConnected { .. }
            | Command::FromBot { .. }
            | Command::BotDisconnected { .. }
            | Command::Shutdown { .. } => true,
        }
    }
}

#[derive(Debug)]
struct Bot {
    token_sha256: String,
    state: BotState,
    recording: Option<String>,
    tx: Option<mpsc::UnboundedSender<ControllerMessage>>,
    last_seen: Instant,
    /// The last heartbeat's cumulative figures, to turn them into rates and deltas.
    vitals: Vitals,
    /// When this controller launched it (to measure launches; `None` for a re-adopted bot).
    launched_at: Option<Instant>,
    /// Since when it is idle (the idle TTL counts from here).
    idle_since: Option<Instant>,
    /// What the store shows of its recording while its socket is silent.
    store_sign: StoreSign,
    /// Its part in a handoff under way (not persisted: a restarted controller lets the
    /// successor finish and the predecessor's `Finished` change nothing).
    handoff: Option<handoff::Role>,
}

/// What a store probe found for a silent bot: (bot id, the highest segment stored, if any).
type Probed = (String, Result<Option<u64>, String>);

/// A busy bot's recording as the store shows it: the highest segment known stored (from the
/// bot's `SegmentStored`, or a probe of the store), and when a probe last found a new one.
#[derive(Debug, Default)]
struct StoreSign {
    sequence: u64,
    grew_at: Option<Instant>,
    probed_at: Option<Instant>,
    probing: bool,
}

#[derive(Debug, Default)]
struct Vitals {
    dropped: u64,
    failed_uploads: u64,
    backlog_files: u64,
    backlog_bytes: u64,
}

/// Settings the manager needs.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub min_idle: usize,
    pub max: usize,
    /// An idle bot above the pool's target is retired once idle this long.
    pub idle_ttl: Duration,
    /// Requests in this window, with the measured launch time, set how many bots the pool
    /// keeps warm above `min_idle` (`pool::expected_starts`); zero turns that off.
    pub demand_window: Duration,
    /// Cancelled when a write is refused because another controller took over the lease: the
    /// controller stops at once rather than act on a state it can no longer write.
    pub deposed: tokio_util::sync::CancellationToken,
    /// Set while the leadership lease cannot be renewed: only a leader assigns recordings and
    /// launches or retires bots, so those wait; everything else goes on.
    pub lapsed: Arc<std::sync::atomic::AtomicBool>,
    /// What the API reads: updated here after each write and each re-plan.
    pub reads: crate::reads::Reads,
    /// The bots' endpoint on every controller that may lead (`ws://…/v1/bots/connect`).
    pub controller_urls: Vec<String>,
    /// Bots spool recordings in `<spool_root>/<recording_id>/` on their way to the store.
    pub spool_root: PathBuf,
    /// Environment every bot gets besides its identity (the store's settings).
    pub bot_env: Vec<(String, String)>,
    /// Base URL clients download outputs from (`http://host:port`).
    pub public_url: String,
    /// Leave bots running when the controller stops (a restart): busy ones keep recording and
    /// reconnect; all are re-adopted from the store.
    pub keep_bots_on_exit: bool,
    /// A busy bot is lost only after this long without a message or a new stored segment.
    pub lost_window: Duration,
    /// A bot taken away (SIGTERM) that asks for a successor gets one from the warm pool.
    pub handoffs: bool,
    /// The bots' deadlines per status (they keep them; the manager enforces them again).
    pub deadlines: recfleet_proto::Deadlines,
    /// How much later than the bot the manager enforces a deadline.
    pub deadline_margin: Duration,
    /// Where recordings are kept; a dead bot's recording is finalized from here.
    pub objects: recfleet_storage::Store,
    /// Scratch space for recoveries (`<scratch>/<recording_id>/`).
    pub scratch_root: PathBuf,
    pub metrics: Arc<Metrics>,
}

#[derive(Debug)]
struct Entry {
    stored: StoredRecording,
    /// The status the last webhook announced.
    notified: Option<RecordingStatus>,
    /// When a bot took it (for the join-duration metric; not persisted).
    assigned_at: Option<OffsetDateTime>,
    /// Its first segment is in the store (time-to-view was observed).
    viewable: bool,
    /// The status it was last seen in by the deadline check, and since when (not persisted: a
    /// restarted controller gives every status its whole deadline again).
    since: Option<(RecordingStatus, Instant)>,
    /// A recovery from the store is under way in this controller.
    recovering: bool,
}

#[derive(Debug)]
pub struct Manager {
    cfg: ManagerConfig,
    runtime: Arc<dyn Runtime>,
    store: Store,
    webhooks: mpsc::UnboundedSender<Delivery>,
    recordings: HashMap<String, Entry>,
    order: Vec<String>,
    idempotency: HashMap<String, String>,
    queue: VecDeque<String>,
    bots: HashMap<String, Bot>,
    /// Events to persist at the next flush: (recording id, kind, data).
    dirty: VecDeque<(String, LogKind, serde_json::Value)>,
    dirty_bots: Vec<String>,
    /// Recordings whose bot exited before saying `Finished`: when, and how it exited.
    orphaned: HashMap<String, (Instant, String, crate::runtime::ExitReason)>,
    /// Recoveries under way report here.
    recovered_tx: mpsc::UnboundedSender<(String, Result<Recovered, RecoveryError>)>,
    recovered_rx: Option<mpsc::UnboundedReceiver<(String, Result<Recovered, RecoveryError>)>>,
    /// Store probes of silent bots report here.
    probed_tx: mpsc::UnboundedSender<Probed>,
    probed_rx: Option<mpsc::UnboundedReceiver<Probed>>,
    /// When the last write to the state database failed (cleared by the next that succeeds).
    write_failed_at: Option<Instant>,
    /// Launch failures in a row, and until when launches are held (`pool::launch_backoff`).
    launch_failures: u32,
    launch_held_until: Option<Instant>,
    launch_failure_reason: String,
    /// Set by a shutdown that keeps the bots: the pool is left as it is (its idle bots too,
    /// warm for the next controller) rather than planned down.
    pool_frozen: bool,
    /// When recordings were requested, within `demand_window`.
    requests: VecDeque<Instant>,
    /// Launch to warm, measured (a moving average of this controller's launches).
    launch_time: Option<Duration>,
}

/// A heartbeat's figures.
#[derive(Debug)]
struct Heartbeat {
    capture: Option<recfleet_proto::CaptureStats>,
    cpu_cores: Option<f64>,
    rss_bytes: Option<u64>,
    upload: Option<recfleet_proto::UploadStats>,
}

impl Manager {
    /// Loads what the store holds: recordings (queued ones are queued again) and bots (which
    /// get `STARTUP_TIMEOUT` to reconnect).
    pub async fn load(
        cfg: ManagerConfig,
        runtime: Arc<dyn Runtime>,
        store: Store,
        webhooks: mpsc::UnboundedSender<Delivery>,
    ) -> Result<Self, crate::store::StoreError> {
        let (recovered_tx, recovered_rx) = mpsc::unbounded_channel();
        let (probed_tx, probed_rx) = mpsc::unbounded_channel();
        let mut m = Self {
            cfg,
            runtime,
            store,
            webhooks,
            recordings: HashMap::new(),
            order: Vec::new(),
            idempotency: HashMap::new(),
            queue: VecDeque::new(),
            bots: HashMap::new(),
            dirty: VecDeque::new(),
            dirty_bots: Vec::new(),
            orphaned: HashMap::new(),
            recovered_tx,
            recovered_rx: Some(recovered_rx),
            probed_tx,
            probed_rx: Some(probed_rx),
            write_failed_at: None,
            launch_failures: 0,
            launch_held_until: None,
            launch_failure_reason: String::new(),
            pool_frozen: false,
            requests: VecDeque::new(),
            launch_time: None,
        };
        for stored in m.store.load_recordings().await? {
            let id = stored.view.id.clone();
            if stored.view.status == RecordingStatus::Queued {
                m.queue.push_back(id.clone());
            }
            if let Some(k) = &stored.idempotency_key {
                m.idempotency.insert(k.clone(), id.clone());
            }
            m.order.push(id.clone());
            let notified = Some(stored.view.status);
            m.recordings.insert(id, Entry { stored, notified, assigned_at: None, viewable: true, since: None, recovering: false });
        }
        for b in m.store.load_bots().await? {
            let idle_since = (b.state == BotState::Idle).then(Instant::now);
            let bot = Bot {
                token_sha256: b.token_sha256,
                state: b.state,
                recording: b.recording_id,
                tx: None,
                last_seen: Instant::now(),
                vitals: Vitals::default(),
                launched_at: None,
                idle_since,
                store_sign: StoreSign::default(),
                handoff: None,
            };
            m.bots.insert(b.id, bot);
        }
        {
            let mut reads = crate::reads::write(&m.cfg.reads);
            for id in &m.order {
                reads.upsert(&m.recordings[id].stored.view);
            }
            reads.set_pool(m.pool_view());
        }
        if !m.recordings.is_empty() || !m.bots.is_empty() {
            tracing::info!(recordings = m.recordings.len(), bots = m.bots.len(), queued = m.queue.len(), "state reloaded");
        }
        Ok(m)
    }

    /// Runs until `commands` closes.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>, mut exits: mpsc::UnboundedReceiver<Exited>) {
        let mut recovered = self.recovered_rx.take().expect("run once");
        let mut probed = self.probed_rx.take().expect("run once");
        // Recoveries a stopped controller left unfinished start again.
        let held: Vec<String> = self.bots.values().filter_map(|b| b.recording.clone()).collect();
        let unfinished: Vec<String> = self
            .recordings
            .values()
            .map(|e| &e.stored.view)
            .filter(|r| r.status == RecordingStatus::Finalizing && r.partial && !held.contains(&r.id))
            .map(|r| r.id.clone())
            .collect();
        for id in unfinished {
            self.start_recovery(&id);
        }
        let _ = self.settle().await;
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(cmd) => {
                        let changes = cmd.may_change_state();
                        self.handle(cmd).await;
                        // Reads and heartbeats (most of the traffic of a large fleet) change
                        // nothing to assign, plan or write: no pass over the bots for them.
                        if !changes {
                            continue;
                        }
                    }
                    None => break,
                },
                Some(exit) = exits.recv() => self.bot_exited(exit),
                Some((id, result)) = recovered.recv() => self.recovered(&id, result),
                Some((bot_id, result)) = probed.recv() => self.store_probed(&bot_id, result),
                _ = tick.tick() => {
                    // Declaring a bot lost stops it: a leader's act, held while the lease lapsed.
                    if !self.lapsed() {
                        self.find_lost_bots();
                        self.probe_silent_bots();
                        self.enforce_deadlines();
                    }
                    self.settle_orphans();
                    self.update_gauges();
                }
            }
            // A failed write is logged and counted there, and retried at the next settle.
            let _ = self.settle().await;
        }
    }

    fn shut_down(&mut self) {
        if self.cfg.keep_bots_on_exit {
            // Idle bots stay warm for the next controller (an ECS task takes a minute to start).
            self.pool_frozen = true;
            return;
        }
        self.cfg.min_idle = 0;
        self.cfg.max = 0;
        for (id, bot) in &self.bots {
            if let Some(tx) = &bot.tx {
                let _ = tx.send(ControllerMessage::Retire);
            }
            self.runtime.stop(id);
        }
    }

    /// Assigns, re-plans and persists after a change. An error means the change is not yet
    /// durable (it stays queued for the next flush).
    async fn settle(&mut self) -> Result<(), StoreError> {
        if !self.lapsed() {
            self.assign_queued();
            self.reconcile();
        }
        let written = self.flush().await;
        let pool = self.pool_view();
        crate::reads::write(&self.cfg.reads).set_pool(pool);
        written
    }

    /// `GET /v1/pool`'s answer, from the state as it is now.
    fn pool_view(&self) -> PoolView {
        let o = self.observed();
        let backoff = self.launch_held_for(Instant::now()).map(|left| PoolBackoff {
            failures: self.launch_failures,
            retry_in_secs: (left.as_secs_f64() * 10.0).round() / 10.0,
            reason: self.launch_failure_reason.clone(),
        });
        let target_idle = crate::pool::target_idle(self.desired());
        let launch_secs = self.launch_time.map(|t| (t.as_secs_f64() * 10.0).round() / 10.0);
        PoolView {
            idle: o.idle,
            starting: o.starting,
            busy: o.busy,
            max: self.cfg.max,
            queued: self.queue.len(),
            target_idle,
            launch_secs,
            backoff,
        }
    }

    fn lapsed(&self) -> bool {
        self.cfg.lapsed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `result`, unless the change it made could not be written.
    fn durable<T>(result: Result<T, ApiError>, written: Result<(), StoreError>) -> Result<T, ApiError> {
        let value = result?;
        written?;
        Ok(value)
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Create { req, idempotency_key, reply } => {
                let result = match self.create(req, idempotency_key) {
                    // A new recording is written before any bot hears of it; if it cannot be,
                    // it is not made (the client's retry, with its idempotency key, is safe).
                    Ok((view, true)) => match self.flush().await {
                        Ok(()) => Ok((view, true)),
                        Err(err) => {
                            self.undo_create(&view.id);
                            Err(err.into())
                        }
                    },
                    other => other,
                };
                let written = self.settle().await;
                let result = result.map(|(mut view, created)| {
                    if let Some(at) = self.queue.iter().position(|q| *q == view.id) {
                        view.queue = Some(QueuePlace { position: at + 1, estimated_start_secs: self.estimated_start(at + 1) });
                    }
                    (view, created)
                });
                let _ = reply.send(Self::durable(result, written));
            }
            Command::Stop { id, reply } => {
                let result = self.stop(&id);
                let written = self.settle().await;
                let _ = reply.send(Self::durable(result, written));
            }
            Command::Delete { id, reply } => {
                let result = self.delete(&id).await;
                let _ = reply.send(result);
            }
            Command::Health { reply } => {
                let _ = reply.send(self.write_failed_at.is_none() && !self.lapsed());
            }
            Command::BotConnected { bot_id, token, tx, reply } => {
                let ok = match self.bots.get_mut(&bot_id) {
                    Some(bot) if bot.token_sha256 == token_hash(&token) => {
                        // A stop asked for while the bot was away reaches it now.
                        let stopping = bot
                            .recording
                            .as_ref()
                            .filter(|id| self.recordings.get(*id).is_some_and(|e| e.stored.view.status == RecordingStatus::Stopping));
                        if let Some(id) = stopping {
                            let _ = tx.send(ControllerMessage::Stop { recording_id: id.clone() });
                        }
                        bot.tx = Some(tx);
                        bot.last_seen = Instant::now();
                        true
                    }
                    _ => false,
                };
                // A called-off successor away at the time hears it now.
                if let Some(msg) = self.on_reconnect(&bot_id).filter(|_| ok) {
                    self.send_to(&bot_id, msg);
                }
                let _ = reply.send(ok);
            }
            Command::FromBot { bot_id, msg } => {
                self.cfg.metrics.bot_messages.with_label_values(&[msg.kind()]).inc();
                // Whatever the manager logs about this message carries the bot's and the
                // recording's ids.
                let recording_id = match &msg {
                    BotMessage::StateChanged { recording_id, .. }
                    | BotMessage::Timeline { recording_id, .. }
                    | BotMessage::SegmentStored { recording_id, .. }
                    | BotMessage::HandoffRequested { recording_id, .. }
                    | BotMessage::HandoffWithdrawn { recording_id }
                    | BotMessage::Finished { recording_id, .. } => Some(recording_id.clone()),
                    BotMessage::Hello { recording_id, .. } => recording_id.clone(),
                    BotMessage::Ready | BotMessage::Heartbeat { .. } | BotMessage::Log { .. } => {
                        self.bots.get(&bot_id).and_then(|b| b.recording.clone())
                    }
                };
                let span = tracing::info_span!("bot_message", bot_id = %bot_id, recording_id = recording_id.as_deref().unwrap_or(""));
                let _entered = span.enter();
                self.on_bot_message(&bot_id, msg)
            }
            Command::Shutdown { reply } => {
                self.shut_down();
                // What the drain changed is on disk before the process exits: a last try even
                // while writes fail (what it cannot write, the bots tell the next controller).
                self.write_failed_at = None;
                if let Err(err) = self.flush().await {
                    tracing::error!(error = %err, "exiting with changes not written to the state database");
                }
                let _ = reply.send(());
            }
            Command::BotDisconnected { bot_id, tx } => {
                if let Some(bot) = self.bots.get_mut(&bot_id).filter(|b| b.tx.as_ref().is_some_and(|t| t.same_channel(&tx))) {
                    bot.tx = None;
                }
            }
        }
    }
}
