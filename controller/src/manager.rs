//! The one owner of mutable state: recordings, bots, the queue. HTTP handlers and bot
//! connections send it commands; it applies them, re-plans the pool, assigns queued recordings
//! to idle bots, and declares silent bots lost.
//!
//! State lives in memory for now; the SQLite event log and projection replace `recordings`
//! without changing the commands.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use recfleet_proto::protocol::{Assignment, BotMessage, ControllerMessage, Outcome};
use recfleet_proto::{EventKind, RecordingStatus, SubCode};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::model::{ApiError, CreateRecording, Outputs, PoolView, Recording};
use crate::pool::{self, Action, Desired, Observed};
use crate::runtime::{Exited, LaunchSpec, Runtime};

/// A bot silent this long is declared lost.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);
/// A launched bot must connect within this (warm-up takes about 2 s on 2 cores).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const TICK: Duration = Duration::from_secs(1);

/// What the manager is asked to do.
#[derive(Debug)]
pub enum Command {
    Create { req: CreateRecording, idempotency_key: Option<String>, reply: oneshot::Sender<Result<(Recording, bool), ApiError>> },
    Get { id: String, reply: oneshot::Sender<Option<Recording>> },
    List { status: Option<RecordingStatus>, reply: oneshot::Sender<Vec<Recording>> },
    Stop { id: String, reply: oneshot::Sender<Result<Recording, ApiError>> },
    Pool { reply: oneshot::Sender<PoolView> },
    /// A bot's WebSocket opened with `token`; on success its messages follow.
    BotConnected { bot_id: String, token: String, tx: mpsc::UnboundedSender<ControllerMessage>, reply: oneshot::Sender<bool> },
    FromBot { bot_id: String, msg: BotMessage },
    BotDisconnected { bot_id: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BotState {
    Starting,
    Idle,
    Busy,
}

#[derive(Debug)]
struct Bot {
    token: String,
    state: BotState,
    recording: Option<String>,
    tx: Option<mpsc::UnboundedSender<ControllerMessage>>,
    last_seen: Instant,
}

/// Settings the manager needs.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub min_idle: usize,
    pub max: usize,
    pub controller_url: String,
    pub out_root: PathBuf,
    /// Base URL clients download outputs from (`http://host:port`).
    pub public_url: String,
}

#[derive(Debug)]
pub struct Manager {
    cfg: ManagerConfig,
    runtime: Arc<dyn Runtime>,
    recordings: HashMap<String, Recording>,
    order: Vec<String>,
    idempotency: HashMap<String, String>,
    queue: VecDeque<String>,
    /// Recipes of recordings not yet assigned.
    pending_recipes: HashMap<String, Option<recfleet_proto::Recipe>>,
    bots: HashMap<String, Bot>,
}

impl Manager {
    pub fn new(cfg: ManagerConfig, runtime: Arc<dyn Runtime>) -> Self {
        Self {
            cfg,
            runtime,
            recordings: HashMap::new(),
            order: Vec::new(),
            idempotency: HashMap::new(),
            queue: VecDeque::new(),
            pending_recipes: HashMap::new(),
            bots: HashMap::new(),
        }
    }

    /// Runs until `commands` closes.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>, mut exits: mpsc::UnboundedReceiver<Exited>) {
        self.reconcile();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.handle(cmd),
                    None => break,
                },
                Some(exit) = exits.recv() => self.bot_exited(exit),
                _ = tick.tick() => self.find_lost_bots(),
            }
            self.assign_queued();
            self.reconcile();
        }
        for id in self.bots.keys() {
            self.runtime.stop(id);
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Create { req, idempotency_key, reply } => {
                let _ = reply.send(self.create(req, idempotency_key));
            }
            Command::Get { id, reply } => {
                let _ = reply.send(self.recordings.get(&id).cloned());
            }
            Command::List { status, reply } => {
                let list = self.order.iter().rev().filter_map(|id| self.recordings.get(id));
                let _ = reply.send(list.filter(|r| status.is_none_or(|s| r.status == s)).cloned().collect());
            }
            Command::Stop { id, reply } => {
                let _ = reply.send(self.stop(&id));
            }
            Command::Pool { reply } => {
                let o = self.observed();
                let _ = reply.send(PoolView { idle: o.idle, starting: o.starting, busy: o.busy, max: self.cfg.max, queued: self.queue.len() });
            }
            Command::BotConnected { bot_id, token, tx, reply } => {
                let ok = match self.bots.get_mut(&bot_id) {
                    Some(bot) if bot.token == token => {
                        bot.tx = Some(tx);
                        bot.last_seen = Instant::now();
                        true
                    }
                    _ => false,
                };
                let _ = reply.send(ok);
            }
            Command::FromBot { bot_id, msg } => self.from_bot(&bot_id, msg),
            Command::BotDisconnected { bot_id } => {
                if let Some(bot) = self.bots.get_mut(&bot_id) {
                    bot.tx = None;
                }
            }
        }
    }

    fn create(&mut self, req: CreateRecording, key: Option<String>) -> Result<(Recording, bool), ApiError> {
        if let Some(existing) = key.as_ref().and_then(|k| self.idempotency.get(k)).and_then(|id| self.recordings.get(id)) {
            return Ok((existing.clone(), false));
        }
        let id = format!("rec_{}", uuid::Uuid::new_v4().simple());
        let recording = Recording {
            id: id.clone(),
            status: RecordingStatus::Queued,
            sub_code: None,
            meeting_url: req.meeting_url.clone(),
            bot_name: req.bot_name.clone().unwrap_or_else(|| "Recorder".into()),
            created_at: OffsetDateTime::now_utc(),
            joined_at: None,
            recording_started_at: None,
            ended_at: None,
            completed_at: None,
            duration_secs: None,
            partial: false,
            max_duration_secs: req.max_duration_secs,
            metadata: req.metadata.clone().unwrap_or(serde_json::Value::Null),
            outputs: None,
            error: None,
        };
        self.recordings.insert(id.clone(), recording.clone());
        self.order.push(id.clone());
        if let Some(k) = key {
            self.idempotency.insert(k, id.clone());
        }
        self.pending_recipes.insert(id.clone(), req.recipe);
        self.queue.push_back(id);
        Ok((recording, true))
    }

    fn stop(&mut self, id: &str) -> Result<Recording, ApiError> {
        let rec = self.recordings.get_mut(id).ok_or_else(|| ApiError::NotFound(id.to_string()))?;
        if rec.status == RecordingStatus::Queued {
            self.queue.retain(|q| q != id);
            rec.status = RecordingStatus::Failed;
            rec.sub_code = Some(SubCode::StoppedByApi);
            rec.ended_at = Some(OffsetDateTime::now_utc());
            return Ok(rec.clone());
        }
        if let Ok(next) = rec.status.next(recfleet_proto::RecordingEvent::StopRequested) {
            rec.status = next;
        }
        if let Some(bot) = self.bots.values().find(|b| b.recording.as_deref() == Some(id)) {
            if let Some(tx) = &bot.tx {
                let _ = tx.send(ControllerMessage::Stop { recording_id: id.to_string() });
            }
        }
        Ok(rec.clone())
    }

    fn from_bot(&mut self, bot_id: &str, msg: BotMessage) {
        let Some(bot) = self.bots.get_mut(bot_id) else { return };
        bot.last_seen = Instant::now();
        match msg {
            BotMessage::Hello { ready, .. } => {
                if ready && bot.state == BotState::Starting {
                    bot.state = BotState::Idle;
                }
            }
            BotMessage::Ready => {
                if bot.state == BotState::Starting {
                    bot.state = BotState::Idle;
                }
            }
            BotMessage::Heartbeat { .. } | BotMessage::SegmentStored { .. } | BotMessage::StateChanged { .. } => {}
            BotMessage::Log { level, message, .. } => tracing::warn!(bot_id, ?level, "bot: {message}"),
            BotMessage::Timeline { recording_id, event } => self.apply_event(&recording_id, &event),
            BotMessage::Finished { recording_id, outcome } => self.finish(&recording_id, outcome),
        }
    }

    fn apply_event(&mut self, id: &str, event: &recfleet_proto::Event) {
        let Some(rec) = self.recordings.get_mut(id) else { return };
        let stopping = rec.status == RecordingStatus::Stopping;
        match &event.kind {
            EventKind::WaitingRoom if !stopping => rec.status = RecordingStatus::WaitingRoom,
            EventKind::Joined => rec.joined_at = Some(event.at),
            EventKind::RecordingStarted => {
                rec.recording_started_at = Some(event.at);
                if !stopping {
                    rec.status = RecordingStatus::Recording;
                }
            }
            EventKind::Ended { sub_code, .. } => {
                rec.ended_at = Some(event.at);
                rec.sub_code = Some(*sub_code);
                if rec.recording_started_at.is_some() {
                    rec.status = RecordingStatus::Finalizing;
                }
            }
            _ => {}
        }
    }

    fn finish(&mut self, id: &str, outcome: Outcome) {
        let public = self.cfg.public_url.clone();
        let Some(rec) = self.recordings.get_mut(id) else { return };
        rec.completed_at = Some(OffsetDateTime::now_utc());
        match outcome {
            Outcome::Completed { summary } => {
                rec.status = RecordingStatus::Completed;
                rec.sub_code = Some(summary.sub_code);
                rec.duration_secs = Some(summary.duration_secs);
                let base = format!("{public}/v1/recordings/{id}/files");
                rec.outputs = Some(Outputs {
                    mp4_url: format!("{base}/recording.mp4"),
                    hls_url: format!("{base}/index.m3u8"),
                    manifest_url: format!("{base}/manifest.json"),
                });
            }
            Outcome::Failed { sub_code, message, .. } => {
                rec.status = RecordingStatus::Failed;
                rec.sub_code = sub_code.or(rec.sub_code);
                rec.error = Some(message);
            }
        }
        tracing::info!(recording_id = id, status = ?rec.status, sub_code = ?rec.sub_code, "recording finished");
    }

    fn bot_exited(&mut self, exit: Exited) {
        let Some(bot) = self.bots.remove(&exit.bot_id) else { return };
        tracing::info!(bot_id = %exit.bot_id, detail = %exit.detail, "bot exited");
        if let Some(id) = bot.recording {
            self.mark_crashed(&id, &format!("the bot exited: {}", exit.detail));
        }
    }

    fn find_lost_bots(&mut self) {
        let limit = |b: &Bot| if b.state == BotState::Starting { STARTUP_TIMEOUT } else { HEARTBEAT_TIMEOUT };
        let lost: Vec<String> =
            self.bots.iter().filter(|(_, b)| b.last_seen.elapsed() > limit(b)).map(|(id, _)| id.clone()).collect();
        for id in lost {
            tracing::warn!(bot_id = %id, "bot silent too long: declared lost");
            self.runtime.stop(&id);
            if let Some(bot) = self.bots.remove(&id) {
                if let Some(rec) = bot.recording {
                    self.mark_crashed(&rec, "the bot stopped heartbeating");
                }
            }
        }
    }

    /// A recording whose bot died before `Finished`.
    fn mark_crashed(&mut self, id: &str, why: &str) {
        let Some(rec) = self.recordings.get_mut(id) else { return };
        if rec.status.is_terminal() {
            return;
        }
        rec.status = RecordingStatus::Failed;
        rec.sub_code = Some(SubCode::BotCrashed);
        rec.partial = rec.recording_started_at.is_some();
        rec.error = Some(why.to_string());
        rec.completed_at = Some(OffsetDateTime::now_utc());
    }

    fn assign_queued(&mut self) {
        while let Some(id) = self.queue.front().cloned() {
            let Some((bot_id, bot)) = self.bots.iter_mut().find(|(_, b)| b.state == BotState::Idle && b.tx.is_some()) else {
                return;
            };
            let Some(rec) = self.recordings.get_mut(&id) else {
                self.queue.pop_front();
                continue;
            };
            let assignment = Assignment {
                recording_id: id.clone(),
                meeting_url: rec.meeting_url.clone(),
                bot_name: rec.bot_name.clone(),
                recipe: self.pending_recipes.remove(&id).flatten(),
                max_duration_secs: rec.max_duration_secs,
            };
            let tx = bot.tx.as_ref().expect("checked above");
            if tx.send(ControllerMessage::Assign(assignment)).is_err() {
                bot.tx = None;
                continue;
            }
            tracing::info!(recording_id = %id, bot_id = %bot_id, "assigned");
            bot.state = BotState::Busy;
            bot.recording = Some(id.clone());
            rec.status = RecordingStatus::Joining;
            self.queue.pop_front();
        }
    }

    fn observed(&self) -> Observed {
        let count = |s| self.bots.values().filter(|b| b.state == s).count();
        Observed { idle: count(BotState::Idle), starting: count(BotState::Starting), busy: count(BotState::Busy) }
    }

    fn reconcile(&mut self) {
        let desired = Desired { min_idle: self.cfg.min_idle, max: self.cfg.max, queued: self.queue.len() };
        for action in pool::plan(desired, self.observed()) {
            match action {
                Action::Launch(n) => {
                    for _ in 0..n {
                        self.launch();
                    }
                }
                Action::Retire(n) => {
                    let idle: Vec<String> =
                        self.bots.iter().filter(|(_, b)| b.state == BotState::Idle).map(|(id, _)| id.clone()).take(n).collect();
                    for id in idle {
                        self.runtime.stop(&id);
                        self.bots.remove(&id);
                    }
                }
            }
        }
    }

    fn launch(&mut self) {
        let bot_id = format!("bot_{}", uuid::Uuid::new_v4().simple());
        let token = uuid::Uuid::new_v4().simple().to_string();
        let spec = LaunchSpec {
            bot_id: bot_id.clone(),
            token: token.clone(),
            controller_url: format!("{}?bot_id={bot_id}", self.cfg.controller_url),
            out_root: self.cfg.out_root.clone(),
        };
        match self.runtime.launch(&spec) {
            Ok(()) => {
                tracing::info!(bot_id = %bot_id, "bot launched");
                self.bots.insert(bot_id, Bot { token, state: BotState::Starting, recording: None, tx: None, last_seen: Instant::now() });
            }
            Err(err) => tracing::error!(error = %err, "cannot launch a bot"),
        }
    }
}
