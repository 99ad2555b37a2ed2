//! One recording from start to finish: prepare the output folder, bring up the environment,
//! join, capture, watch for the end, stop in order, finalize, and say what happened.
//!
//! Every failure becomes a `RecordError` with a stable `code` and exit code; whatever was
//! recorded before a failure stays on disk and is finalized when it can be.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use recfleet_proto::{CaptureGeneration, EventKind, OutputPaths, RecordingEvent, RecordingStatus, SubCode, Summary};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::capture::{Capture, CaptureConfig, Totals};
use crate::config::{ConfigError, RecordConfig, FIRST_FRAME_TIMEOUT};
use crate::join::{self, Identity, JoinError};
use crate::journal::{Journal, Reporter, Silent};
use crate::page_js;
use crate::session::{Session, SessionError};
use crate::spool::{Spool, MANIFEST, PLAYLIST};
use crate::upload::{UploadConfig, Uploader};
use crate::watch::{self, End, Limits, Watched};
use recfleet_media::{self as finalize, MP4};

mod handover;
mod stop;
mod watches;

use watches::{spawn_spool_watch, watch_audio, watch_egress, SpoolWatch};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid recipe: {0}")]
    Recipe(String),
    #[error("cannot write the output folder {path}: {reason}")]
    OutDir { path: PathBuf, reason: String },
    #[error("the bot's environment did not start: {0}")]
    Environment(#[from] SessionError),
    #[error("{sub_code}: {reason}")]
    NotJoined { sub_code: SubCode, reason: String },
    #[error("{sub_code} before anything was recorded")]
    EndedBeforeRecording { sub_code: SubCode },
    #[error("capture failed: {reason}")]
    Capture { reason: String },
    #[error("finalizing failed: {reason}; the segments are kept in {dir}")]
    Finalize { reason: String, dir: PathBuf },
    #[error("invalid store: {0}")]
    Store(String),
}

impl RecordError {
    /// Stable, documented codes (docs/BOT.md).
    pub fn code(&self) -> &'static str {
        match self {
            RecordError::Config(e) if e.field == "url" => "invalid_url",
            RecordError::Config(_) => "invalid_config",
            RecordError::Recipe(_) => "invalid_recipe",
            RecordError::OutDir { .. } => "output_not_writable",
            RecordError::Environment(_) => "environment_failed",
            RecordError::NotJoined { .. } => "not_joined",
            RecordError::EndedBeforeRecording { .. } => "ended_before_recording",
            RecordError::Capture { .. } => "capture_failed",
            RecordError::Finalize { .. } => "finalize_failed",
            RecordError::Store(_) => "invalid_store",
        }
    }

    /// The process exit code for this failure (0 is a finalized recording).
    pub fn exit_code(&self) -> i32 {
        match self {
            RecordError::Config(_) | RecordError::Recipe(_) | RecordError::Store(_) => 2,
            RecordError::NotJoined { .. } => 3,
            RecordError::OutDir { .. } => 4,
            RecordError::Environment(_) => 5,
            RecordError::Capture { .. } | RecordError::Finalize { .. } => 6,
            RecordError::EndedBeforeRecording { .. } => 7,
        }
    }

    /// The recording's sub-code, where the failure has one.
    pub fn sub_code(&self) -> Option<SubCode> {
        match self {
            RecordError::Config(e) if e.field == "url" => Some(SubCode::InvalidUrl),
            RecordError::NotJoined { sub_code, .. } | RecordError::EndedBeforeRecording { sub_code } => Some(*sub_code),
            RecordError::Capture { .. } | RecordError::Finalize { .. } | RecordError::Environment(_) => Some(SubCode::CaptureFailed),
            _ => None,
        }
    }
}

/// Records one meeting standalone; `shutdown` ends it gracefully with `stopped_by_signal`.
pub async fn record(cfg: &RecordConfig, shutdown: CancellationToken) -> Result<Summary, RecordError> {
    cfg.validate()?;
    // Checked before any child starts, so a bad folder costs nothing; `record_on` checks again.
    prepare_out_dir(&cfg.out_dir)?;
    let session = Session::start(&cfg.video, cfg.network).await?;
    record_on(session, cfg, &shutdown, &StopCode::new(SubCode::StoppedBySignal), Arc::new(Silent)).await
}

/// What a stop from outside means for a recording: set before the stop's token is cancelled,
/// read when the recording ends (under a controller, an API stop and a signal share one token).
#[derive(Debug, Clone)]
pub struct StopCode(Arc<std::sync::Mutex<SubCode>>);

impl StopCode {
    pub fn new(code: SubCode) -> Self {
        Self(Arc::new(std::sync::Mutex::new(code)))
    }

    pub fn set(&self, code: SubCode) {
        *self.0.lock().expect("stop code lock") = code;
    }

    pub fn get(&self) -> SubCode {
        *self.0.lock().expect("stop code lock")
    }
}

/// Records one meeting on an environment that is already warm (the agent's case), and tears
/// the environment down after. `shutdown` ends the recording with `stop_code`.
pub async fn record_on(
    session: Session,
    cfg: &RecordConfig,
    shutdown: &CancellationToken,
    stop_code: &StopCode,
    reporter: Arc<dyn Reporter>,
) -> Result<Summary, RecordError> {
    let out_dir = match cfg.validate().map_err(RecordError::from).and_then(|()| prepare_out_dir(&cfg.out_dir)) {
        Ok(dir) => dir,
        Err(err) => {
            session.shutdown().await;
            return Err(err);
        }
    };
    let mut upload = match &cfg.upload {
        None => None,
        Some(u) => {
            let opts = recfleet_storage::StoreOptions { path_style: u.path_style, ..Default::default() };
            match recfleet_storage::Store::open(&u.store, &opts).await {
                Ok(store) => Some(UploadConfig {
                    store,
                    recording_id: cfg.recording_id.clone(),
                    disk_budget_bytes: u.disk_budget_bytes,
                    min_free_bytes: cfg.min_free_bytes,
                    drain_deadline: u.drain_deadline,
                    seed: None,
                    link: None,
                }),
                Err(err) => {
                    session.shutdown().await;
                    return Err(RecordError::Store(err.to_string()));
                }
            }
        }
    };
    // A successor carries on the store's manifest and timeline as its predecessor left them.
    let mut earlier_timeline = None;
    if let (Some(_), Some(up)) = (&cfg.continuation, upload.as_mut()) {
        let (manifest, timeline) = handover::read_earlier(&up.store, &cfg.recording_id).await;
        up.seed = Some(manifest);
        up.link = cfg.handoff.clone();
        earlier_timeline = timeline;
    }
    let journal = match earlier_timeline {
        Some(timeline) => Journal::resume(&out_dir, timeline, reporter),
        None => Journal::new(&out_dir, &cfg.recording_id, OffsetDateTime::now_utc(), reporter),
    };
    let job = Job { cfg, out_dir: &out_dir, journal: &journal, shutdown, stop_code, upload };
    job.run(session).await
}

/// A recording on a warm session.
#[derive(Debug)]
struct Job<'a> {
    cfg: &'a RecordConfig,
    out_dir: &'a Path,
    journal: &'a Journal,
    shutdown: &'a CancellationToken,
    stop_code: &'a StopCode,
    upload: Option<UploadConfig>,
}

impl Job<'_> {
    async fn run(&self, mut session: Session) -> Result<Summary, RecordError> {
        let mut status = self.advance(RecordingStatus::Queued, RecordingEvent::Assigned, None);
        let captured = self.join_and_capture(&mut session, &mut status).await;
        let (capture, end, spool, uploader) = match captured {
            Ok(ok) => ok,
            Err(err) => {
                session.shutdown().await;
                return Err(err);
            }
        };
        if let Some(link) = &self.cfg.handoff {
            if link.is_called_off() {
                return Ok(self.hand_over(capture, session, end, spool, uploader, None).await);
            }
            match link.handing_over_to() {
                Some(successor) => return Ok(self.hand_over(capture, session, end, spool, uploader, Some(&successor)).await),
                // Ended otherwise while a handoff was under way: this bot finishes the recording.
                None if link.is_requested() => {
                    tracing::info!(sub_code = %end.sub_code, "the recording ended during the handoff; finishing it here");
                    link.withdraw();
                }
                None => {}
            }
        }
        self.journal.record(EventKind::Ended { sub_code: end.sub_code, detail: end.detail.clone() });
        tracing::info!(sub_code = %end.sub_code, detail = %end.detail, "meeting over for the bot; finalizing");
        let ending = if end.sub_code == self.stop_code.get() { RecordingEvent::StopRequested } else { RecordingEvent::EndedWithMedia };
        status = self.advance(status, ending, None);
        let stats = capture.stats_handle();
        self.stop_in_time(capture, session, &end).await;
        let stats = stats.lock().expect("stats lock").clone();
        status = self.advance(status, RecordingEvent::EndedWithMedia, None);
        let limit = self.cfg.deadlines.finalizing;
        let finalized = match tokio::time::timeout(limit, self.finalize(spool, status, end, stats, uploader)).await {
            Ok(finalized) => finalized,
            Err(_) => {
                tracing::error!(
                    deadline_secs = limit.as_secs(),
                    "finalizing outlasted its deadline (--finalizing-deadline-secs); giving up"
                );
                self.journal.record(EventKind::DeadlineExceeded { status: RecordingStatus::Finalizing, secs: limit.as_secs() });
                let reason = format!("finalizing outlasted its deadline of {} s (--finalizing-deadline-secs)", limit.as_secs());
                Err(RecordError::Finalize { reason, dir: self.out_dir.to_path_buf() })
            }
        };
        if finalized.is_err() {
            self.advance(status, RecordingEvent::FinalizeFailed, Some(SubCode::CaptureFailed));
        }
        finalized
    }

    /// Joins, starts the capture and watches until the end, rejoining when the browser is lost.
    /// The spool runs alongside.
    async fn join_and_capture(
        &self,
        session: &mut Session,
        status: &mut RecordingStatus,
    ) -> Result<(Capture, End, Spool, Option<Uploader>), RecordError> {
        // From before the join: what the page asks for while the bot gets in counts too.
        let refusals = session.egress.subscribe();
        if let Some(recipe) = &self.cfg.recipe {
            join::check_selectors(&session.chromium.page, recipe).await.map_err(|e| match e {
                JoinError::BadSelectors(msg) => RecordError::Recipe(msg),
                other => RecordError::Capture { reason: format!("the browser did not answer: {other}") },
            })?;
        }
        let joined = tokio::select! {
            r = self.enter_in_time(&session.chromium.page) => r,
            _ = self.shutdown.cancelled() => {
                self.journal.record(EventKind::Ended { sub_code: self.stop_code.get(), detail: "stopped while joining".into() });
                return Err(RecordError::EndedBeforeRecording { sub_code: self.stop_code.get() });
            }
        };
        if let Err(err) = joined {
            let sub_code = match &err {
                JoinError::WaitingRoomTimeout(_) => SubCode::WaitingRoomTimeout,
                JoinError::MeetingEnded => SubCode::MeetingEnded,
                JoinError::BadSelectors(msg) => return Err(RecordError::Recipe(msg.clone())),
                JoinError::LoadFailed { .. }
                | JoinError::StepTimedOut { .. }
                | JoinError::PageUnresponsive(_)
                | JoinError::DeadlineExceeded(_) => SubCode::JoinFailed,
            };
            self.journal.record(EventKind::Ended { sub_code, detail: err.to_string() });
            *status = self.advance(*status, RecordingEvent::EndedWithoutMedia, Some(sub_code));
            return Err(match sub_code {
                SubCode::MeetingEnded => RecordError::EndedBeforeRecording { sub_code },
                _ => RecordError::NotJoined { sub_code, reason: err.to_string() },
            });
        }

        let capture_cfg = CaptureConfig {
            display: session.display.display.clone(),
            pulse_server: session.audio.server.clone(),
            audio_source: session.audio.monitor_source(),
            video: self.cfg.video.clone(),
            out_dir: self.out_dir.to_path_buf(),
            generation: self.cfg.continuation.as_ref().map_or(1, |c| c.generation),
            start_number: self.cfg.continuation.as_ref().map_or(1, |c| c.first_sequence),
            silence_after: self.cfg.silence_fault,
        };
        let (levels_tx, levels) = tokio::sync::mpsc::unbounded_channel();
        let (mut capture, first_frame_at) = Capture::start(&capture_cfg, FIRST_FRAME_TIMEOUT, &Totals::new(levels_tx))
            .await
            .map_err(|e| RecordError::Capture { reason: e.to_string() })?;
        match &self.cfg.continuation {
            Some(c) => self
                .journal
                .record_at(first_frame_at, EventKind::Handoff { from_bot: c.from_bot.clone(), first_sequence: c.first_sequence }),
            None => self.journal.record_at(first_frame_at, EventKind::RecordingStarted),
        }
        self.journal.reporter().capture(capture.stats_handle());
        *status = self.advance(*status, RecordingEvent::RecordingStarted, None);

        let uploader = self.upload.clone().map(|cfg| Uploader::start(self.out_dir, cfg, self.journal.reporter_arc()));
        if let Some(link) = &self.cfg.handoff {
            link.capturing(capture.generation(), uploader.as_ref().map(Uploader::control));
        }
        let (disk_full_tx, disk_full) = tokio::sync::watch::channel(None);
        let (generation_tx, generations) = tokio::sync::mpsc::unbounded_channel();
        let watch_cfg = SpoolWatch {
            dir: self.out_dir.to_path_buf(),
            recording_id: self.cfg.recording_id.clone(),
            journal: self.journal,
            uploader: uploader.as_ref(),
            min_free_bytes: self.cfg.min_free_bytes,
            disk_full: disk_full_tx,
            first: capture.generation_info(first_frame_at),
            generations,
        };
        let (spool_stop, spool_task) = spawn_spool_watch(watch_cfg);
        let watched = CancellationToken::new();
        let audio_task = watch_audio(levels, self.journal, self.cfg.silence_fault, &watched);
        let egress_task = watch_egress(refusals, self.journal, &watched);
        let max_until = self.cfg.max_duration.map(|d| (tokio::time::Instant::now() + d, d));
        let limits = Limits { max_until, shutdown: self.shutdown, stop_code: self.stop_code, disk_full };
        let watching = async {
            let end = self.watch_and_recover(session, &mut capture, &limits, &generation_tx).await;
            let _ = spool_stop.send(());
            watched.cancel();
            end
        };
        let (end, spool, (), ()) = tokio::join!(watching, spool_task, audio_task, egress_task);
        Ok((capture, end, spool, uploader))
    }

    /// Prepares the page (the recipe's hidden elements) and joins with the recipe.
    async fn enter(&self, page: &chromiumoxide::Page) -> Result<(), JoinError> {
        let hide = self.cfg.recipe.as_ref().map(|r| r.hide_selectors.clone()).unwrap_or_default();
        page.evaluate_on_new_document(page_js::init_script(&hide))
            .await
            .map_err(|e| JoinError::PageUnresponsive(format!("cannot prepare the page: {e}")))?;
        let who = Identity { bot_name: self.cfg.bot_name.clone(), recording_id: self.cfg.recording_id.clone() };
        join::join(page, &self.cfg.url, self.cfg.recipe.as_ref(), &who, self.cfg.join_attempts, self.journal).await
    }

    /// Watches until the end. A lost browser is replaced and the meeting rejoined, up to
    /// `max_rejoins` times, while the capture goes on; an encoder that dies is restarted, up to
    /// `max_capture_restarts` times, while the browser stays in the meeting: one recording, with
    /// each break on the timeline.
    async fn watch_and_recover(
        &self,
        session: &mut Session,
        capture: &mut Capture,
        limits: &Limits<'_>,
        generations: &tokio::sync::mpsc::UnboundedSender<CaptureGeneration>,
    ) -> End {
        let (mut rejoins, mut restarts) = (0, 0);
        loop {
            let reason = match watch::until_end(&mut session.chromium, self.cfg.recipe.as_ref(), capture, limits).await {
                Watched::End(end) => return end,
                Watched::BrowserLost { reason } => reason,
                Watched::CaptureLost { reason } => {
                    if let Err(end) = self.restart_capture(capture, reason, &mut restarts, generations).await {
                        return end;
                    }
                    continue;
                }
            };
            tracing::warn!(%reason, rejoins, max_rejoins = self.cfg.max_rejoins, "browser lost");
            if rejoins >= self.cfg.max_rejoins {
                return End::new(SubCode::PageCrashed, reason);
            }
            rejoins += 1;
            let lost_at = std::time::Instant::now();
            self.journal.record(EventKind::BrowserLost { reason: reason.clone(), attempt: rejoins });
            // The encoder may die while the bot rejoins: it is restarted there too, and the
            // rejoin goes on.
            let rejoin = self.rejoin(session);
            tokio::pin!(rejoin);
            let rejoined = loop {
                tokio::select! {
                    r = &mut rejoin => break r,
                    end = limits.reached() => return end,
                    errors = capture.exited() => {
                        let lost = format!("ffmpeg stopped by itself while the bot rejoined: {errors}");
                        if let Err(end) = self.restart_capture(capture, lost, &mut restarts, generations).await {
                            return end;
                        }
                    }
                }
            };
            match rejoined {
                Ok(()) => {
                    let gap_ms = lost_at.elapsed().as_millis() as u64;
                    tracing::info!(gap_ms, attempt = rejoins, "rejoined the meeting");
                    self.journal.record(EventKind::Rejoined { attempt: rejoins, gap_ms });
                }
                Err(JoinError::MeetingEnded) => {
                    return End::new(SubCode::MeetingEnded, format!("the meeting ended while the bot rejoined ({reason})"));
                }
                Err(err) => return End::new(SubCode::PageCrashed, format!("{reason}; the rejoin failed: {err}")),
            }
        }
    }

    /// Replaces an encoder that died with the next generation, and tells the spool; the end
    /// (`capture_failed`) once the restarts are used up or the new encoder does not start.
    async fn restart_capture(
        &self,
        capture: &mut Capture,
        reason: String,
        restarts: &mut u32,
        generations: &tokio::sync::mpsc::UnboundedSender<CaptureGeneration>,
    ) -> Result<(), End> {
        tracing::warn!(%reason, restarts = *restarts, max_capture_restarts = self.cfg.max_capture_restarts, "capture lost");
        if *restarts >= self.cfg.max_capture_restarts {
            return Err(End::new(SubCode::CaptureFailed, reason));
        }
        if self.cfg.handoff.as_ref().is_some_and(|l| l.is_requested()) {
            // A successor records on; a new generation here could take its numbers.
            return Err(End::new(SubCode::CaptureFailed, format!("{reason}; not restarted while handing over")));
        }
        *restarts += 1;
        let lost_at = std::time::Instant::now();
        let first_frame_at = capture
            .restart(FIRST_FRAME_TIMEOUT)
            .await
            .map_err(|e| End::new(SubCode::CaptureFailed, format!("{reason}; the restart failed: {e}")))?;
        let gap_ms = lost_at.elapsed().as_millis() as u64;
        let generation = capture.generation();
        if let Some(link) = &self.cfg.handoff {
            link.set_generation(generation);
        }
        let _ = generations.send(capture.generation_info(first_frame_at));
        tracing::info!(gap_ms, generation, attempt = *restarts, "capture restarted");
        self.journal.record_at(first_frame_at, EventKind::CaptureRestarted { attempt: *restarts, generation, reason, gap_ms });
        Ok(())
    }

    /// A fresh browser on the same display and sink, into the meeting again.
    async fn rejoin(&self, session: &mut Session) -> Result<(), JoinError> {
        session.restart_browser().await.map_err(|e| JoinError::PageUnresponsive(format!("the browser did not restart: {e}")))?;
        self.enter_in_time(&session.chromium.page).await
    }

    /// `enter` within the join's deadline: the joining deadline, plus the recipe's waiting room
    /// when it has one (`Deadlines::join_limit`, the controller's bound too).
    async fn enter_in_time(&self, page: &chromiumoxide::Page) -> Result<(), JoinError> {
        let room =
            self.cfg.recipe.as_ref().filter(|r| r.waiting_room_when.is_some()).map(|r| Duration::from_secs(r.waiting_room_timeout_secs));
        let limit = self.cfg.deadlines.join_limit(room);
        match tokio::time::timeout(limit, self.enter(page)).await {
            Ok(joined) => joined,
            Err(_) => {
                tracing::warn!(deadline_secs = limit.as_secs(), "the join outlasted its deadline (--joining-deadline-secs)");
                self.journal.record(EventKind::DeadlineExceeded { status: RecordingStatus::Joining, secs: limit.as_secs() });
                Err(JoinError::DeadlineExceeded(limit.as_secs()))
            }
        }
    }

    /// Seals the playlist, lists the last segments, makes and checks the MP4, and lets the
    /// uploader drain (whatever happened to the MP4: the segments are the recording).
    async fn finalize(
        &self,
        mut spool: Spool,
        status: RecordingStatus,
        end: End,
        stats: recfleet_proto::CaptureStats,
        uploader: Option<Uploader>,
    ) -> Result<Summary, RecordError> {
        let made = self.make_outputs(&mut spool, &end, uploader.as_ref()).await;
        let upload = match uploader {
            Some(up) => Some(up.finish(if made.is_ok() { &[MP4] } else { &[] }).await),
            None => None,
        };
        let info = made?;
        let status = self.advance(status, RecordingEvent::Finalized, Some(end.sub_code));
        let path = |name: &str| self.out_dir.join(name).to_string_lossy().into_owned();
        Ok(Summary {
            recording_id: self.cfg.recording_id.clone(),
            status,
            sub_code: end.sub_code,
            duration_secs: (info.duration_secs * 1000.0).round() / 1000.0,
            segments: spool.manifest().segments.len(),
            paths: OutputPaths {
                dir: self.out_dir.to_string_lossy().into_owned(),
                mp4: Some(path(MP4)),
                playlist: path(PLAYLIST),
                manifest: path(MANIFEST),
                events: self.journal.path().to_string_lossy().into_owned(),
            },
            capture: Some(stats),
            upload,
        })
    }

    async fn make_outputs(&self, spool: &mut Spool, end: &End, uploader: Option<&Uploader>) -> Result<finalize::Mp4Info, RecordError> {
        let finalize_err = |reason: String| RecordError::Finalize { reason, dir: self.out_dir.to_path_buf() };
        // The segments FFmpeg closed while stopping, and any a killed one closed but did not list.
        let mut last = spool.scan().map_err(|e| finalize_err(e.to_string()))?;
        last.extend(spool.adopt_orphans(u64::MAX));
        for seg in last {
            if let Some(up) = uploader {
                up.closed(&seg);
            }
        }
        if spool.manifest().segments.is_empty() {
            return Err(RecordError::Capture { reason: format!("no segment was written ({})", end.detail) });
        }
        spool.mark_complete().map_err(|e| finalize_err(e.to_string()))?;
        let whole = match (&self.cfg.continuation, &self.upload) {
            (Some(_), Some(up)) => self.with_predecessor(spool.manifest(), &up.store).await.map_err(finalize_err)?,
            _ => spool.manifest().clone(),
        };
        let info = finalize::make_mp4(self.out_dir, &whole).await.map_err(|e| finalize_err(e.to_string()))?;
        self.journal.record(EventKind::Finalized { duration_secs: info.duration_secs });
        Ok(info)
    }
}

impl Job<'_> {
    /// Moves the status machine and reports a change; a refused move is logged, not fatal: the
    /// recording goes on.
    fn advance(&self, status: RecordingStatus, event: RecordingEvent, sub_code: Option<SubCode>) -> RecordingStatus {
        match status.next(event) {
            Ok(next) => {
                if next != status || next.is_terminal() {
                    self.journal.reporter().status(next, sub_code);
                }
                next
            }
            Err(err) => {
                tracing::debug!(error = %err, "status unchanged");
                status
            }
        }
    }
}

/// Makes sure the output folder exists, is writable, and holds no earlier recording.
pub fn prepare_out_dir(dir: &Path) -> Result<PathBuf, RecordError> {
    let err = |reason: String| RecordError::OutDir { path: dir.to_path_buf(), reason };
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let dir = dir.canonicalize().map_err(|e| err(e.to_string()))?;
    for existing in [PLAYLIST, MP4, MANIFEST] {
        if dir.join(existing).exists() {
            return Err(err(format!("it already holds a recording ({existing}); choose an empty folder")));
        }
    }
    let probe = dir.join(".recfleet-write-test");
    std::fs::write(&probe, b"ok").map_err(|e| err(e.to_string()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(dir)
}
