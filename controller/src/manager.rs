//! The one owner of mutable state: recordings, bots, the queue. HTTP handlers and bot
//! connections send it commands; it applies them, persists what changed (event log +
//! projection, in the store), sends webhooks on status changes, re-plans the pool, assigns queued
//! recordings to idle bots, and declares silent bots lost.
//!
//! Mutations are plain synchronous code that marks what changed; `flush` then writes the events
//! and notifies, before any reply that depends on them. A write that fails fails the request
//! that caused it (500 `internal`), makes `/readyz` unready, and is retried at the next flush:
//! nothing is dropped. Statuses change only through `lifecycle::advance`; bot states only
//! through `BotState::next`.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use recfleet_proto::protocol::{Assignment, BotMessage, ControllerMessage, LogLevel, Outcome};
use recfleet_proto::{EventKind, RecordingEvent, RecordingStatus, SubCode};
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::fleet::{BotEvent, BotState, Liveness};
use crate::lifecycle::{advance, to_finalizing};
use crate::metrics::{Metrics, ACTIVE_STATUSES};
use crate::model::{ApiError, CreateRecording, ErrorDetail, Outputs, PoolBackoff, PoolView, Recording};
use crate::pool::{self, Action, Desired, Observed};
use crate::recovery::{Recovered, RecoveryError};
use crate::runtime::{ExitReason, Exited, LaunchSpec, Runtime};
use crate::store::{token_hash, LogKind, Store, StoreError, StoredBot, StoredRecording};
use crate::webhook::Delivery;

/// How long a bot's last messages get to arrive after its process exited: the exit and the
/// bot's `Finished` travel on different channels, and the exit may come first.
pub const EXIT_GRACE: Duration = Duration::from_secs(3);
const TICK: Duration = Duration::from_secs(1);

/// What the manager is asked to do.
#[derive(Debug)]
pub enum Command {
    Create {
        req: CreateRecording,
        idempotency_key: Option<String>,
        reply: oneshot::Sender<Result<(Recording, bool), ApiError>>,
    },
    Get {
        id: String,
        reply: oneshot::Sender<Option<Recording>>,
    },
    /// Newest first; `after` is the last id of the previous page.
    List {
        status: Option<RecordingStatus>,
        limit: usize,
        after: Option<String>,
        reply: oneshot::Sender<Vec<Recording>>,
    },
    Stop {
        id: String,
        reply: oneshot::Sender<Result<Recording, ApiError>>,
    },
    Delete {
        id: String,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    Pool {
        reply: oneshot::Sender<PoolView>,
    },
    /// Whether the last write to the state database succeeded (for `/readyz`).
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
    },
    /// The controller is stopping: retire the bots (unless they are kept for a restart) while
    /// their connections are still open, then reply.
    Shutdown {
        reply: oneshot::Sender<()>,
    },
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
    /// Cancelled when a write is refused because another controller took over the lease: the
    /// controller stops at once rather than act on a state it can no longer write.
    pub deposed: tokio_util::sync::CancellationToken,
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
    orphaned: HashMap<String, (Instant, String)>,
    /// Recoveries under way report here.
    recovered_tx: mpsc::UnboundedSender<(String, Result<Recovered, RecoveryError>)>,
    recovered_rx: Option<mpsc::UnboundedReceiver<(String, Result<Recovered, RecoveryError>)>>,
    /// The last write to the state database failed (cleared by the next that succeeds).
    write_failed: bool,
    /// Launch failures in a row, and until when launches are held (`pool::launch_backoff`).
    launch_failures: u32,
    launch_held_until: Option<Instant>,
    launch_failure_reason: String,
}

/// A heartbeat's figures.
#[derive(Debug)]
struct Heartbeat {
    capture: Option<recfleet_proto::CaptureStats>,
    cpu_cores: Option<f64>,
    rss_bytes: Option<u64>,
    upload: Option<recfleet_proto::UploadStats>,
}

fn seconds_since(t: OffsetDateTime) -> f64 {
    (OffsetDateTime::now_utc() - t).as_seconds_f64().max(0.0)
}

/// Download links as the API serves them (`/v1/recordings/{id}/files/...`).
fn outputs(public_url: &str, id: &str) -> Outputs {
    let base = format!("{public_url}/v1/recordings/{id}/files");
    Outputs {
        mp4_url: format!("{base}/recording.mp4"),
        hls_url: format!("{base}/index.m3u8"),
        manifest_url: format!("{base}/manifest.json"),
    }
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
            write_failed: false,
            launch_failures: 0,
            launch_held_until: None,
            launch_failure_reason: String::new(),
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
            m.recordings.insert(id, Entry { stored, notified, assigned_at: None, viewable: true });
        }
        for b in m.store.load_bots().await? {
            let bot = Bot {
                token_sha256: b.token_sha256,
                state: b.state,
                recording: b.recording_id,
                tx: None,
                last_seen: Instant::now(),
                vitals: Vitals::default(),
            };
            m.bots.insert(b.id, bot);
        }
        if !m.recordings.is_empty() || !m.bots.is_empty() {
            tracing::info!(recordings = m.recordings.len(), bots = m.bots.len(), queued = m.queue.len(), "state reloaded");
        }
        Ok(m)
    }

    /// Runs until `commands` closes.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>, mut exits: mpsc::UnboundedReceiver<Exited>) {
        let mut recovered = self.recovered_rx.take().expect("run once");
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
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
                Some(exit) = exits.recv() => self.bot_exited(exit),
                Some((id, result)) = recovered.recv() => self.recovered(&id, result),
                _ = tick.tick() => {
                    self.find_lost_bots();
                    self.settle_orphans();
                    self.update_gauges();
                }
            }
            // A failed write is logged and counted there, and retried at the next settle.
            let _ = self.settle().await;
        }
    }

    /// The pool and backlog gauges, from the state as it is now.
    fn update_gauges(&self) {
        let m = &self.cfg.metrics;
        let o = self.observed();
        for (state, n) in [(BotState::Starting, o.starting), (BotState::Idle, o.idle), (BotState::Busy, o.busy)] {
            m.pool_bots.with_label_values(&[state.as_str()]).set(n as i64);
        }
        m.pool_max_bots.set(self.cfg.max as i64);
        m.pool_queued.set(self.queue.len() as i64);
        let mut active = [0i64; ACTIVE_STATUSES.len()];
        for entry in self.recordings.values() {
            if let Some(i) = ACTIVE_STATUSES.iter().position(|s| *s == entry.stored.view.status) {
                active[i] += 1;
            }
        }
        for (status, n) in ACTIVE_STATUSES.iter().zip(active) {
            m.recordings_active.with_label_values(&[status.as_str()]).set(n);
        }
        m.launch_backoff.set(self.launch_held_for(Instant::now()).map_or(0.0, |d| d.as_secs_f64()));
        m.upload_backlog_segments.set(self.bots.values().map(|b| b.vitals.backlog_files).sum::<u64>() as i64);
        m.upload_backlog_bytes.set(self.bots.values().map(|b| b.vitals.backlog_bytes).sum::<u64>() as i64);
    }

    /// Turns a heartbeat's cumulative figures into metrics.
    fn on_heartbeat(&mut self, bot_id: &str, hb: Heartbeat) {
        let m = self.cfg.metrics.clone();
        let Some(bot) = self.bots.get_mut(bot_id) else { return };
        if let Some(cpu) = hb.cpu_cores {
            m.bot_cpu.observe(cpu);
        }
        if let Some(rss) = hb.rss_bytes {
            m.bot_rss.observe(rss as f64);
        }
        if let Some(capture) = hb.capture {
            if let Some(fps) = capture.fps {
                m.capture_fps.observe(fps);
            }
            if let Some(speed) = capture.last_speed {
                m.capture_speed.observe(speed);
            }
            m.capture_dropped.inc_by(capture.dropped_frames.saturating_sub(bot.vitals.dropped));
            bot.vitals.dropped = bot.vitals.dropped.max(capture.dropped_frames);
        }
        if let Some(upload) = hb.upload {
            m.upload_failed_requests.inc_by(upload.failed_attempts.saturating_sub(bot.vitals.failed_uploads));
            bot.vitals.failed_uploads = bot.vitals.failed_uploads.max(upload.failed_attempts);
            bot.vitals.backlog_files = upload.backlog;
            bot.vitals.backlog_bytes = upload.backlog_bytes;
        }
    }

    fn shut_down(&mut self) {
        self.cfg.min_idle = 0;
        self.cfg.max = 0;
        if self.cfg.keep_bots_on_exit {
            return;
        }
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
        self.assign_queued();
        self.reconcile();
        self.flush().await
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
                let result = self.create(req, idempotency_key);
                let written = self.settle().await;
                let _ = reply.send(Self::durable(result, written));
            }
            Command::Get { id, reply } => {
                let _ = reply.send(self.recordings.get(&id).map(|e| e.stored.view.clone()));
            }
            Command::List { status, limit, after, reply } => {
                let newest_first = self.order.iter().rev();
                let after_pos = after.as_ref().and_then(|a| self.order.iter().rev().position(|id| id == a));
                let skip = after_pos.map_or(0, |p| p + 1);
                let items = newest_first
                    .skip(skip)
                    .filter_map(|id| self.recordings.get(id))
                    .map(|e| &e.stored.view)
                    .filter(|r| status.is_none_or(|s| r.status == s))
                    .take(limit)
                    .cloned()
                    .collect();
                let _ = reply.send(items);
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
            Command::Pool { reply } => {
                let o = self.observed();
                let backoff = self.launch_held_for(Instant::now()).map(|left| PoolBackoff {
                    failures: self.launch_failures,
                    retry_in_secs: (left.as_secs_f64() * 10.0).round() / 10.0,
                    reason: self.launch_failure_reason.clone(),
                });
                let view =
                    PoolView { idle: o.idle, starting: o.starting, busy: o.busy, max: self.cfg.max, queued: self.queue.len(), backoff };
                let _ = reply.send(view);
            }
            Command::Health { reply } => {
                let _ = reply.send(!self.write_failed);
            }
            Command::BotConnected { bot_id, token, tx, reply } => {
                let ok = match self.bots.get_mut(&bot_id) {
                    Some(bot) if bot.token_sha256 == token_hash(&token) => {
                        bot.tx = Some(tx);
                        bot.last_seen = Instant::now();
                        true
                    }
                    _ => false,
                };
                let _ = reply.send(ok);
            }
            Command::FromBot { bot_id, msg } => {
                // Whatever the manager logs about this message carries the bot's and the
                // recording's ids.
                let recording_id = match &msg {
                    BotMessage::StateChanged { recording_id, .. }
                    | BotMessage::Timeline { recording_id, .. }
                    | BotMessage::SegmentStored { recording_id, .. }
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
                // What the drain changed is on disk before the process exits.
                let _ = self.flush().await;
                let _ = reply.send(());
            }
            Command::BotDisconnected { bot_id } => {
                if let Some(bot) = self.bots.get_mut(&bot_id) {
                    bot.tx = None;
                }
            }
        }
    }

    fn touch(&mut self, id: &str, kind: LogKind, data: serde_json::Value) {
        self.dirty.push_back((id.to_string(), kind, data));
    }

    /// Writes the marked events with their projections, then announces status changes. On a
    /// failed write, what is not written stays marked, in order, for the next flush.
    async fn flush(&mut self) -> Result<(), StoreError> {
        let written = self.write_marked().await;
        match &written {
            Ok(()) if self.write_failed => {
                tracing::info!("the state database takes writes again");
                self.write_failed = false;
            }
            Ok(()) => {}
            Err(err) => {
                if matches!(err, StoreError::Fenced { .. }) {
                    self.cfg.deposed.cancel();
                }
                if !self.write_failed {
                    tracing::error!(error = %err, "cannot write to the state database; changes wait in memory and are retried");
                }
                self.write_failed = true;
                self.cfg.metrics.state_write_failures.inc();
            }
        }
        written
    }

    async fn write_marked(&mut self) -> Result<(), StoreError> {
        while let Some((id, kind, data)) = self.dirty.pop_front() {
            let Some(entry) = self.recordings.get_mut(&id) else { continue };
            if let Err(err) = self.store.append(&entry.stored, kind, &data).await {
                self.dirty.push_front((id, kind, data));
                return Err(err);
            }
            let status = entry.stored.view.status;
            if entry.notified != Some(status) {
                entry.notified = Some(status);
                if status.is_terminal() {
                    self.cfg.metrics.finished(status, entry.stored.view.sub_code);
                }
                if let Some(url) = &entry.stored.webhook_url {
                    let _ = self.webhooks.send(Delivery {
                        recording_id: id.clone(),
                        url: url.clone(),
                        event_type: format!("recording.{}", status.as_str()),
                        payload: serde_json::to_value(&entry.stored.view).expect("serializes"),
                    });
                }
            }
        }
        while let Some(id) = self.dirty_bots.pop() {
            let result = match self.bots.get(&id) {
                Some(bot) => {
                    let stored = StoredBot {
                        id: id.clone(),
                        token_sha256: bot.token_sha256.clone(),
                        state: bot.state,
                        recording_id: bot.recording.clone(),
                    };
                    self.store.save_bot(&stored).await
                }
                None => self.store.delete_bot(&id).await,
            };
            if let Err(err) = result {
                self.dirty_bots.push(id);
                return Err(err);
            }
        }
        Ok(())
    }

    fn create(&mut self, req: CreateRecording, key: Option<String>) -> Result<(Recording, bool), ApiError> {
        if let Some(existing) = key.as_ref().and_then(|k| self.idempotency.get(k)).and_then(|id| self.recordings.get(id)) {
            return Ok((existing.stored.view.clone(), false));
        }
        if !req.allow_concurrent {
            let active =
                self.recordings.values().map(|e| &e.stored.view).find(|r| r.meeting_url == req.meeting_url && !r.status.is_terminal());
            if let Some(active) = active {
                return Err(ApiError::Conflict(format!(
                    "recording {} of this meeting is {}; set allow_concurrent to record it twice",
                    active.id,
                    serde_json::to_value(active.status).expect("serializes").as_str().unwrap_or("active")
                )));
            }
        }
        let id = format!("rec_{}", uuid::Uuid::new_v4().simple());
        let view = Recording::queued(
            id.clone(),
            req.meeting_url.clone(),
            req.bot_name.clone().unwrap_or_else(|| "Recorder".into()),
            req.max_duration_secs,
            req.metadata.clone().unwrap_or(serde_json::Value::Null),
        );
        let stored = StoredRecording { view: view.clone(), idempotency_key: key.clone(), recipe: req.recipe, webhook_url: req.webhook_url };
        self.recordings.insert(id.clone(), Entry { stored, notified: None, assigned_at: None, viewable: false });
        self.order.push(id.clone());
        if let Some(k) = key {
            self.idempotency.insert(k, id.clone());
        }
        self.queue.push_back(id.clone());
        self.touch(&id, LogKind::Created, json!({"meeting_url": view.meeting_url}));
        Ok((view, true))
    }

    fn stop(&mut self, id: &str) -> Result<Recording, ApiError> {
        let entry = self.recordings.get_mut(id).ok_or_else(|| ApiError::NotFound(id.to_string()))?;
        let rec = &mut entry.stored.view;
        let queued = rec.status == RecordingStatus::Queued;
        advance(rec, RecordingEvent::StopRequested, &self.cfg.metrics);
        let after_stop = rec.status;
        if queued {
            // No bot has it: stopping ends it at once, with nothing recorded.
            self.queue.retain(|q| q != id);
            rec.sub_code = Some(SubCode::StoppedByApi);
            let now = OffsetDateTime::now_utc();
            rec.ended_at = Some(now);
            if advance(rec, RecordingEvent::EndedWithoutMedia, &self.cfg.metrics) {
                rec.completed_at = Some(now);
            }
        } else if let Some(tx) = self.bots.values().find(|b| b.recording.as_deref() == Some(id)).and_then(|b| b.tx.as_ref()) {
            let _ = tx.send(ControllerMessage::Stop { recording_id: id.to_string() });
        }
        let view = rec.clone();
        self.touch(id, LogKind::StopRequested, json!({"queued": queued, "status_after_stop": after_stop}));
        Ok(view)
    }

    async fn delete(&mut self, id: &str) -> Result<(), ApiError> {
        let entry = self.recordings.get(id).ok_or_else(|| ApiError::NotFound(id.to_string()))?;
        if !entry.stored.view.status.is_terminal() {
            return Err(ApiError::Conflict(format!("recording {id} is {}: stop it first", entry.stored.view.status.as_str())));
        }
        self.store.mark_deleted(id).await?;
        self.recordings.remove(id);
        self.order.retain(|o| o != id);
        self.idempotency.retain(|_, v| v != id);
        let (objects, id) = (self.cfg.objects.clone(), id.to_string());
        tokio::spawn(async move {
            use recfleet_storage::ObjectStore;
            if let Err(err) = objects.delete_prefix(&recfleet_storage::recording_key(&id, "")).await {
                tracing::warn!(recording_id = %id, error = %err, "cannot remove the recording's files");
            }
        });
        Ok(())
    }

    /// Bot messages come over a connection authenticated at its start. Messages about a
    /// recording are applied even when the bot is already gone: its exit can be seen before its
    /// last messages.
    fn on_bot_message(&mut self, bot_id: &str, msg: BotMessage) {
        if let Some(bot) = self.bots.get_mut(bot_id) {
            bot.last_seen = Instant::now();
        }
        match msg {
            BotMessage::Hello { ready: true, .. } | BotMessage::Ready => {
                if let Some(bot) = self.bots.get_mut(bot_id) {
                    match bot.state.next(BotEvent::Ready) {
                        Ok(next) if next != bot.state => {
                            bot.state = next;
                            self.dirty_bots.push(bot_id.to_string());
                            // A bot got warm: launches work again.
                            self.launch_failures = 0;
                            self.launch_held_until = None;
                        }
                        Ok(_) => {}
                        Err(err) => tracing::warn!(error = %err, "bot state change refused"),
                    }
                }
            }
            BotMessage::Hello { ready: false, .. } => {}
            BotMessage::Heartbeat { capture, cpu_cores, rss_bytes, upload } => {
                self.on_heartbeat(bot_id, Heartbeat { capture, cpu_cores, rss_bytes, upload });
            }
            BotMessage::StateChanged { recording_id, status, .. } => {
                // The controller applies the bot's events through the same table; the bot's own
                // word is a cross-check (it may run ahead: its Finished is still on the way).
                if let Some(entry) = self.recordings.get(&recording_id).filter(|e| e.stored.view.status != status) {
                    tracing::debug!(bot = status.as_str(), controller = entry.stored.view.status.as_str(), "bot reports another status");
                }
            }
            BotMessage::SegmentStored { recording_id, segment, upload_lag_ms } => {
                let m = &self.cfg.metrics;
                if let Some(lag) = upload_lag_ms {
                    m.upload_lag.observe(lag as f64 / 1000.0);
                }
                if segment.sequence > 0 {
                    m.segments_stored.inc();
                    if let Some(entry) = self.recordings.get_mut(&recording_id).filter(|e| !e.viewable) {
                        entry.viewable = true;
                        m.time_to_view.observe(seconds_since(entry.stored.view.created_at));
                    }
                }
                self.touch(&recording_id, LogKind::SegmentStored, serde_json::to_value(&segment).expect("serializes"));
            }
            BotMessage::Log { level, message, fields } => self.on_bot_log(bot_id, level, &message, fields),
            BotMessage::Timeline { recording_id, event } => self.apply_event(&recording_id, &event),
            BotMessage::Finished { recording_id, outcome } => self.finish(&recording_id, outcome),
        }
    }

    /// A bot's warn or error event: logged again with the bot's ids, and counted (alerts fire
    /// from the counts).
    fn on_bot_log(&mut self, bot_id: &str, level: LogLevel, message: &str, fields: serde_json::Map<String, serde_json::Value>) {
        let recording_id = fields
            .get("recording_id")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .or_else(|| self.bots.get(bot_id).and_then(|b| b.recording.clone()))
            .unwrap_or_default();
        let fields = serde_json::Value::Object(fields).to_string();
        match level {
            LogLevel::Warn => {
                self.cfg.metrics.bot_log_events.with_label_values(&["warn"]).inc();
                tracing::warn!(bot_id, recording_id = %recording_id, bot_fields = %fields, "bot: {message}");
            }
            LogLevel::Error => {
                self.cfg.metrics.bot_log_events.with_label_values(&["error"]).inc();
                tracing::error!(bot_id, recording_id = %recording_id, bot_fields = %fields, "bot: {message}");
            }
        }
    }

    fn apply_event(&mut self, id: &str, event: &recfleet_proto::Event) {
        let metrics = self.cfg.metrics.clone();
        let Some(entry) = self.recordings.get_mut(id) else { return };
        let rec = &mut entry.stored.view;
        match &event.kind {
            EventKind::WaitingRoom => {
                advance(rec, RecordingEvent::WaitingRoomEntered, &metrics);
            }
            EventKind::Joined => {
                rec.joined_at = Some(event.at);
                if let Some(assigned) = entry.assigned_at {
                    metrics.join_duration.observe((event.at - assigned).as_seconds_f64().max(0.0));
                }
            }
            EventKind::RecordingStarted => {
                if rec.recording_started_at.is_none() {
                    metrics.start_latency.observe((event.at - rec.created_at).as_seconds_f64().max(0.0));
                }
                rec.recording_started_at = Some(event.at);
                advance(rec, RecordingEvent::RecordingStarted, &metrics);
            }
            EventKind::Ended { sub_code, .. } => {
                rec.ended_at = Some(event.at);
                rec.sub_code = Some(*sub_code);
                // Without media the end is decided by the bot's `Finished`, which says why.
                if rec.recording_started_at.is_some() {
                    to_finalizing(rec, &metrics);
                }
            }
            EventKind::PageLoaded { .. }
            | EventKind::JoinAttemptFailed { .. }
            | EventKind::FirstSegment { .. }
            | EventKind::Finalized { .. } => {}
        }
        self.touch(id, LogKind::Timeline, serde_json::to_value(event).expect("serializes"));
    }

    fn finish(&mut self, id: &str, outcome: Outcome) {
        let (public, metrics) = (self.cfg.public_url.clone(), self.cfg.metrics.clone());
        let Some(entry) = self.recordings.get_mut(id) else { return };
        if entry.stored.view.status.is_terminal() {
            return; // a repeated Finished after a reconnect changes nothing
        }
        let rec = &mut entry.stored.view;
        let mut recover = false;
        match &outcome {
            Outcome::Completed { summary } => {
                rec.sub_code = Some(summary.sub_code);
                rec.duration_secs = Some(summary.duration_secs);
                let left = summary.upload.as_ref().map(|u| u.not_uploaded.clone()).unwrap_or_default();
                if left.is_empty() {
                    if to_finalizing(rec, &metrics) && advance(rec, RecordingEvent::Finalized, &metrics) {
                        rec.completed_at = Some(OffsetDateTime::now_utc());
                        rec.outputs = Some(outputs(&public, id));
                    }
                } else {
                    // The MP4 goes last, so it is among what was left: make it from what is stored.
                    let message = format!("{} files did not reach the store (first: {})", left.len(), left[0]);
                    rec.error = Some(ErrorDetail::new("upload_incomplete", message));
                    recover = true;
                }
            }
            Outcome::Failed { sub_code, code, message } => {
                rec.sub_code = sub_code.or(rec.sub_code);
                rec.error = Some(ErrorDetail::new(code, message.clone()));
                if rec.recording_started_at.is_some() {
                    recover = true;
                } else if advance(rec, RecordingEvent::EndedWithoutMedia, &metrics) {
                    rec.completed_at = Some(OffsetDateTime::now_utc());
                }
            }
        }
        tracing::info!(recording_id = id, status = rec.status.as_str(), sub_code = ?rec.sub_code, recover, "recording finished by its bot");
        self.touch(id, LogKind::Finished, serde_json::to_value(&outcome).expect("serializes"));
        if recover {
            self.start_recovery(id);
        }
    }

    /// Finalizes a recording from the store, without its bot: `partial`, status `finalizing`
    /// until the recovery reports.
    fn start_recovery(&mut self, id: &str) {
        let Some(entry) = self.recordings.get_mut(id) else { return };
        let rec = &mut entry.stored.view;
        if !to_finalizing(rec, &self.cfg.metrics) {
            return;
        }
        rec.partial = true;
        self.touch(id, LogKind::RecoveryStarted, json!({}));
        let (store, scratch, tx, id) =
            (self.cfg.objects.clone(), self.cfg.scratch_root.join(id), self.recovered_tx.clone(), id.to_string());
        tracing::info!(recording_id = %id, "finalizing from the store");
        tokio::spawn(async move {
            let result = crate::recovery::recover(&store, &id, &scratch).await;
            let _ = tx.send((id, result));
        });
    }

    fn recovered(&mut self, id: &str, result: Result<Recovered, RecoveryError>) {
        let (public, metrics) = (self.cfg.public_url.clone(), self.cfg.metrics.clone());
        let Some(entry) = self.recordings.get_mut(id) else { return };
        let rec = &mut entry.stored.view;
        match &result {
            Ok(r) => {
                if advance(rec, RecordingEvent::Finalized, &metrics) {
                    rec.completed_at = Some(OffsetDateTime::now_utc());
                    rec.duration_secs = Some((r.duration_secs * 1000.0).round() / 1000.0);
                    rec.outputs = Some(outputs(&public, id));
                }
                tracing::info!(
                    recording_id = id,
                    segments = r.segments,
                    duration_secs = r.duration_secs,
                    "partial recording finalized from the store"
                );
                metrics.recoveries.with_label_values(&["completed"]).inc();
                self.touch(id, LogKind::Recovered, json!({"segments": r.segments, "duration_secs": r.duration_secs, "corrupt": r.corrupt}));
            }
            Err(err) => {
                if advance(rec, RecordingEvent::FinalizeFailed, &metrics) {
                    rec.completed_at = Some(OffsetDateTime::now_utc());
                }
                let earlier = rec.error.take().map(|e| format!("{}; ", e.message)).unwrap_or_default();
                rec.error = Some(ErrorDetail::new(err.code(), format!("{earlier}recovery: {err}")));
                tracing::error!(recording_id = id, code = err.code(), error = %err, "cannot finalize from the store");
                metrics.recoveries.with_label_values(&["failed"]).inc();
                self.touch(id, LogKind::RecoveryFailed, json!({"code": err.code(), "message": err.to_string()}));
            }
        }
    }

    fn bot_exited(&mut self, exit: Exited) {
        let Some(bot) = self.bots.remove(&exit.bot_id) else { return };
        self.dirty_bots.push(exit.bot_id.clone());
        tracing::info!(bot_id = %exit.bot_id, reason = exit.reason.as_str(), detail = %exit.detail, "bot exited");
        let never_warm = bot.state == BotState::Starting;
        match exit.reason {
            ExitReason::LaunchFailed => self.launch_failed(&exit.detail),
            ExitReason::Crashed | ExitReason::Finished if never_warm => {
                self.launch_failed(&format!("the bot exited before it was warm: {}", exit.detail))
            }
            ExitReason::Crashed | ExitReason::Finished | ExitReason::Stopped => {}
        }
        if let Some(id) = bot.recording {
            // Decided after `EXIT_GRACE`, when its last messages have had time to land.
            self.orphaned.insert(id, (Instant::now(), exit.detail));
        }
    }

    /// Recordings whose bot exited without `Finished` within the grace are the bot's crash.
    fn settle_orphans(&mut self) {
        let due: Vec<(String, String)> = self
            .orphaned
            .iter()
            .filter(|(_, (at, _))| at.elapsed() >= EXIT_GRACE)
            .map(|(id, (_, detail))| (id.clone(), detail.clone()))
            .collect();
        for (id, detail) in due {
            self.orphaned.remove(&id);
            self.cfg.metrics.bots_lost.inc();
            self.mark_crashed(&id, "bot_crashed", &format!("the bot exited before finishing: {detail}"));
        }
    }

    fn find_lost_bots(&mut self) {
        let now = Instant::now();
        let lost: Vec<String> = self
            .bots
            .iter()
            .filter(|(_, b)| crate::fleet::is_lost(Liveness { state: b.state, connected: b.tx.is_some(), last_seen: b.last_seen }, now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in lost {
            tracing::warn!(bot_id = %id, "bot silent too long: declared lost");
            self.cfg.metrics.bots_lost.inc();
            self.runtime.stop(&id);
            self.dirty_bots.push(id.clone());
            let Some(bot) = self.bots.remove(&id) else { continue };
            if bot.state == BotState::Starting {
                self.launch_failed(&format!("the bot did not connect and warm up within {:?}", crate::fleet::STARTUP_TIMEOUT));
            }
            if let Some(rec) = bot.recording {
                self.mark_crashed(&rec, "bot_lost", "the bot stopped heartbeating");
            }
        }
    }

    /// A recording whose bot died before `Finished`: what it stored is finalized without it.
    fn mark_crashed(&mut self, id: &str, code: &str, why: &str) {
        let Some(entry) = self.recordings.get_mut(id) else { return };
        let rec = &mut entry.stored.view;
        if rec.status.is_terminal() {
            return;
        }
        rec.sub_code = Some(SubCode::BotCrashed);
        rec.error = Some(ErrorDetail::new(code, why));
        let started = rec.recording_started_at.is_some();
        if !started && advance(rec, RecordingEvent::EndedWithoutMedia, &self.cfg.metrics) {
            rec.completed_at = Some(OffsetDateTime::now_utc());
        }
        self.touch(id, LogKind::BotCrashed, json!({"code": code, "reason": why}));
        if started {
            self.start_recovery(id);
        }
    }

    fn assign_queued(&mut self) {
        while let Some(id) = self.queue.front().cloned() {
            let Some((bot_id, bot)) = self.bots.iter_mut().find(|(_, b)| b.state == BotState::Idle && b.tx.is_some()) else {
                return;
            };
            let Some(entry) = self.recordings.get_mut(&id) else {
                self.queue.pop_front();
                continue;
            };
            let rec = &mut entry.stored.view;
            if rec.status != RecordingStatus::Queued {
                self.queue.pop_front();
                continue;
            }
            let assignment = Assignment {
                recording_id: id.clone(),
                meeting_url: rec.meeting_url.clone(),
                bot_name: rec.bot_name.clone(),
                recipe: entry.stored.recipe.clone(),
                max_duration_secs: rec.max_duration_secs,
            };
            let tx = bot.tx.as_ref().expect("checked above");
            if tx.send(ControllerMessage::Assign(assignment)).is_err() {
                bot.tx = None;
                continue;
            }
            tracing::info!(recording_id = %id, bot_id = %bot_id, "assigned");
            bot.state = bot.state.next(BotEvent::Assigned).expect("only idle bots are picked");
            bot.recording = Some(id.clone());
            advance(rec, RecordingEvent::Assigned, &self.cfg.metrics);
            entry.assigned_at = Some(OffsetDateTime::now_utc());
            let bot_id = bot_id.clone();
            self.queue.pop_front();
            self.dirty_bots.push(bot_id.clone());
            self.touch(&id, LogKind::Assigned, json!({"bot_id": bot_id}));
        }
    }

    fn observed(&self) -> Observed {
        let count = |s| self.bots.values().filter(|b| b.state == s).count();
        let joining = self
            .bots
            .values()
            .filter_map(|b| b.recording.as_ref())
            .filter_map(|id| self.recordings.get(id))
            .filter(|e| matches!(e.stored.view.status, RecordingStatus::Joining | RecordingStatus::WaitingRoom))
            .count();
        Observed { idle: count(BotState::Idle), starting: count(BotState::Starting), busy: count(BotState::Busy), joining }
    }

    fn reconcile(&mut self) {
        let desired = Desired { min_idle: self.cfg.min_idle, max: self.cfg.max, queued: self.queue.len() };
        for action in pool::plan(desired, self.observed()) {
            match action {
                Action::Launch(_) if self.launch_held_for(Instant::now()).is_some() => {}
                Action::Launch(n) => {
                    for _ in 0..n {
                        self.launch();
                    }
                }
                Action::Retire(n) => {
                    let idle: Vec<String> =
                        self.bots.iter().filter(|(_, b)| b.state == BotState::Idle).map(|(id, _)| id.clone()).take(n).collect();
                    for id in idle {
                        if let Some(tx) = self.bots.get(&id).and_then(|b| b.tx.as_ref()) {
                            let _ = tx.send(ControllerMessage::Retire);
                        }
                        self.runtime.stop(&id);
                        self.bots.remove(&id);
                        self.dirty_bots.push(id);
                    }
                }
            }
        }
    }

    /// A launch did not give a warm bot: hold further launches for the back-off, and say so
    /// once per failure (logged and counted here, and nowhere else).
    fn launch_failed(&mut self, reason: &str) {
        self.launch_failures = self.launch_failures.saturating_add(1);
        let wait = pool::launch_backoff(self.launch_failures);
        self.launch_held_until = Some(Instant::now() + wait);
        self.launch_failure_reason = reason.to_string();
        self.cfg.metrics.launch_failures.inc();
        tracing::error!(failures = self.launch_failures, retry_in_secs = wait.as_secs_f64(), reason, "bot launch failed; holding launches");
    }

    /// How much longer launches are held, at `now`.
    fn launch_held_for(&self, now: Instant) -> Option<Duration> {
        self.launch_held_until.map(|until| until.saturating_duration_since(now)).filter(|left| !left.is_zero())
    }

    fn launch(&mut self) {
        let bot_id = format!("bot_{}", uuid::Uuid::new_v4().simple());
        let token = uuid::Uuid::new_v4().simple().to_string();
        let spec = LaunchSpec {
            bot_id: bot_id.clone(),
            token: token.clone(),
            controller_url: self.cfg.controller_urls.iter().map(|u| format!("{u}?bot_id={bot_id}")).collect::<Vec<_>>().join(","),
            spool_root: self.cfg.spool_root.clone(),
            env: self.cfg.bot_env.clone(),
        };
        match self.runtime.launch(&spec) {
            Ok(()) => {
                tracing::info!(bot_id = %bot_id, "bot launched");
                let bot = Bot {
                    token_sha256: token_hash(&token),
                    state: BotState::Starting,
                    recording: None,
                    tx: None,
                    last_seen: Instant::now(),
                    vitals: Vitals::default(),
                };
                self.bots.insert(bot_id.clone(), bot);
                self.dirty_bots.push(bot_id);
            }
            Err(err) => self.launch_failed(&err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recfleet_proto::{OutputPaths, Summary};

    /// Launches nothing: the manager's logic alone is under test.
    #[derive(Debug, Default)]
    struct NoRuntime;

    impl Runtime for NoRuntime {
        fn launch(&self, _spec: &LaunchSpec) -> Result<(), crate::runtime::RuntimeError> {
            Ok(())
        }
        fn stop(&self, _bot_id: &str) {}
    }

    async fn manager(dir: &std::path::Path) -> Manager {
        let cfg = ManagerConfig {
            min_idle: 1,
            max: 2,
            controller_urls: vec!["ws://127.0.0.1:1/v1/bots/connect".into()],
            deposed: Default::default(),
            spool_root: dir.join("spool"),
            bot_env: Vec::new(),
            public_url: "http://127.0.0.1:1".into(),
            keep_bots_on_exit: false,
            objects: recfleet_storage::Store::Fs(recfleet_storage::FsStore::new(dir.to_path_buf())),
            scratch_root: dir.join("recovery"),
            metrics: Arc::new(Metrics::new()),
        };
        let store = Store::open(&Store::default_url(dir)).await.unwrap();
        let (webhooks, _) = mpsc::unbounded_channel();
        Manager::load(cfg, Arc::new(NoRuntime), store, webhooks).await.unwrap()
    }

    fn request(meeting_url: &str) -> CreateRecording {
        CreateRecording {
            meeting_url: meeting_url.into(),
            bot_name: None,
            recipe: None,
            recipe_name: None,
            max_duration_secs: None,
            webhook_url: None,
            metadata: None,
            allow_concurrent: false,
        }
    }

    fn refused_total(m: &Manager) -> u64 {
        let text = m.cfg.metrics.render();
        text.lines()
            .filter(|l| l.starts_with(crate::metrics::names::RECORDING_TRANSITIONS_REFUSED_TOTAL))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    #[tokio::test]
    async fn a_queued_stop_goes_through_stopping_to_failed() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = manager(dir.path()).await;
        let (rec, _) = m.create(request("https://m.example.com/q"), None).unwrap();
        let view = m.stop(&rec.id).unwrap();
        assert_eq!((view.status, view.sub_code), (RecordingStatus::Failed, Some(SubCode::StoppedByApi)));
        assert!(view.completed_at.is_some() && !m.queue.contains(&rec.id));
        let (_, kind, data) = m.dirty.back().unwrap();
        assert_eq!((*kind, &data["status_after_stop"]), (LogKind::StopRequested, &json!("stopping")));
        assert_eq!(refused_total(&m), 0, "nothing refused on the way");
        // A second stop is harmless and changes nothing.
        assert_eq!(m.stop(&rec.id).unwrap().status, RecordingStatus::Failed);
        assert_eq!(refused_total(&m), 0);
    }

    #[tokio::test]
    async fn a_late_event_the_table_refuses_is_counted_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = manager(dir.path()).await;
        let (id, bot_id) = assigned(&mut m).await;
        started(&mut m, &id);
        m.on_bot_message(&bot_id, BotMessage::Finished { recording_id: id.clone(), outcome: completed(&id) });
        assert_eq!(m.recordings[&id].stored.view.status, RecordingStatus::Completed);
        let late = recfleet_proto::Event { at: OffsetDateTime::now_utc(), elapsed_ms: 0, kind: EventKind::WaitingRoom };
        m.apply_event(&id, &late);
        assert_eq!(m.recordings[&id].stored.view.status, RecordingStatus::Completed, "never applied");
        assert_eq!(refused_total(&m), 1, "counted once");
    }

    #[tokio::test]
    async fn a_failed_state_write_fails_the_request_and_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = manager(dir.path()).await;
        m.store.close().await;
        let (tx, rx) = oneshot::channel();
        m.handle(Command::Create { req: request("https://m.example.com/w"), idempotency_key: None, reply: tx }).await;
        let answer = rx.await.unwrap();
        assert!(matches!(answer, Err(ApiError::Internal(_))), "{answer:?}");
        assert_eq!(answer.unwrap_err().status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        let (tx, rx) = oneshot::channel();
        m.handle(Command::Health { reply: tx }).await;
        assert!(!rx.await.unwrap(), "unready while writes fail");
        assert!(m.dirty.iter().any(|(_, k, _)| *k == LogKind::Created), "the change waits for the next flush");
        assert!(m.cfg.metrics.state_write_failures.get() >= 1);
    }

    #[tokio::test]
    async fn launches_that_never_give_a_warm_bot_back_off_until_one_does() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = manager(dir.path()).await;
        m.reconcile();
        let first = m.bots.keys().next().unwrap().clone();
        m.bot_exited(Exited { bot_id: first, reason: ExitReason::Crashed, detail: "exit status: 1".into() });
        m.reconcile();
        assert!(m.bots.is_empty(), "no relaunch while held");
        let mut tx = oneshot::channel();
        m.handle(Command::Pool { reply: tx.0 }).await;
        let backoff = tx.1.await.unwrap().backoff.expect("the pool shows the back-off");
        assert_eq!(backoff.failures, 1);
        assert!(backoff.reason.contains("before it was warm") && backoff.reason.contains("exit status: 1"), "{backoff:?}");
        // The hold passes: one launch, which comes up warm and clears the back-off.
        m.launch_held_until = Some(Instant::now());
        m.reconcile();
        let second = m.bots.keys().next().expect("relaunched after the hold").clone();
        m.on_bot_message(&second, BotMessage::Ready);
        tx = oneshot::channel();
        m.handle(Command::Pool { reply: tx.0 }).await;
        assert!(tx.1.await.unwrap().backoff.is_none());
        assert_eq!((m.launch_failures, m.cfg.metrics.launch_failures.get()), (0, 1));
    }

    /// A recording assigned to a connected, warm bot; returns (recording id, bot id).
    async fn assigned(m: &mut Manager) -> (String, String) {
        m.reconcile();
        let bot_id = m.bots.keys().next().expect("a launched bot").clone();
        let (tx, _rx) = mpsc::unbounded_channel();
        m.bots.get_mut(&bot_id).unwrap().tx = Some(tx);
        m.on_bot_message(&bot_id, BotMessage::Ready);
        let (rec, _) = m.create(request("https://m.example.com/a"), None).unwrap();
        m.assign_queued();
        assert_eq!(m.recordings[&rec.id].stored.view.status, RecordingStatus::Joining);
        (rec.id, bot_id)
    }

    /// The bot's timeline says the first frame is captured.
    fn started(m: &mut Manager, id: &str) {
        let event = recfleet_proto::Event { at: OffsetDateTime::now_utc(), elapsed_ms: 0, kind: EventKind::RecordingStarted };
        m.apply_event(id, &event);
        assert_eq!(m.recordings[id].stored.view.status, RecordingStatus::Recording);
    }

    fn completed(id: &str) -> Outcome {
        let paths = OutputPaths { dir: id.into(), mp4: None, playlist: String::new(), manifest: String::new(), events: String::new() };
        Outcome::Completed {
            summary: Box::new(Summary {
                recording_id: id.into(),
                status: RecordingStatus::Completed,
                sub_code: SubCode::MeetingEnded,
                duration_secs: 6.0,
                segments: 3,
                paths,
                capture: None,
                upload: None,
            }),
        }
    }

    #[tokio::test]
    async fn finished_arriving_after_the_exit_still_completes() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = manager(dir.path()).await;
        let (id, bot_id) = assigned(&mut m).await;
        started(&mut m, &id);
        m.bot_exited(Exited { bot_id: bot_id.clone(), reason: ExitReason::Finished, detail: "exit status: 0".into() });
        m.settle_orphans();
        assert!(!m.recordings[&id].stored.view.status.is_terminal(), "not decided before the grace");
        // The bot's last message was still in flight when its exit was seen: the bot is gone.
        assert!(!m.bots.contains_key(&bot_id));
        m.on_bot_message(&bot_id, BotMessage::Finished { recording_id: id.clone(), outcome: completed(&id) });
        if let Some(entry) = m.orphaned.get_mut(&id) {
            entry.0 = Instant::now() - EXIT_GRACE * 2;
        }
        m.settle_orphans();
        let view = &m.recordings[&id].stored.view;
        assert_eq!((view.status, view.sub_code), (RecordingStatus::Completed, Some(SubCode::MeetingEnded)));
    }

    #[tokio::test]
    async fn an_exit_without_finished_is_a_crash_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = manager(dir.path()).await;
        let (id, bot_id) = assigned(&mut m).await;
        m.bot_exited(Exited { bot_id, reason: ExitReason::Crashed, detail: "signal: 9 (SIGKILL)".into() });
        m.orphaned.get_mut(&id).unwrap().0 = Instant::now() - EXIT_GRACE * 2;
        m.settle_orphans();
        let view = &m.recordings[&id].stored.view;
        assert_eq!((view.status, view.sub_code), (RecordingStatus::Failed, Some(SubCode::BotCrashed)));
        let error = view.error.as_ref().unwrap();
        assert_eq!(error.code, "bot_crashed");
        assert!(error.message.contains("SIGKILL"), "{error:?}");
    }

    #[tokio::test]
    async fn a_crash_after_the_recording_started_is_finalized_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = manager(dir.path()).await;
        let (id, bot_id) = assigned(&mut m).await;
        started(&mut m, &id);
        m.bot_exited(Exited { bot_id, reason: ExitReason::Crashed, detail: "signal: 9 (SIGKILL)".into() });
        m.orphaned.get_mut(&id).unwrap().0 = Instant::now() - EXIT_GRACE * 2;
        m.settle_orphans();
        let view = &m.recordings[&id].stored.view;
        assert_eq!((view.status, view.sub_code, view.partial), (RecordingStatus::Finalizing, Some(SubCode::BotCrashed), true));
        // The store holds nothing of it: the recovery says so and the recording fails.
        let (rid, result) = m.recovered_rx.as_mut().unwrap().recv().await.unwrap();
        assert!(matches!(result, Err(RecoveryError::NothingStored)));
        m.recovered(&rid, result);
        let view = &m.recordings[&id].stored.view;
        assert_eq!((view.status, view.sub_code), (RecordingStatus::Failed, Some(SubCode::BotCrashed)));
        let error = view.error.as_ref().unwrap();
        assert_eq!(error.code, "nothing_stored");
        assert!(error.message.contains("nothing usable"), "{error:?}");
    }
}
