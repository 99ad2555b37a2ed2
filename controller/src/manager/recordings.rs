//! Recordings: their creation (with idempotency keys and the one-active-per-meeting rule), the
//! queue and its assignment to idle bots, stops and deletes, the bot's timeline and `Finished`
//! applied through the transition table, the finalizing of a recording whose bot died, and
//! which recordings have outlasted their status's deadline (`recfleet_proto::deadline`).
//!
//! Every status change goes through `lifecycle::advance`; this module must not write a status
//! itself or talk to the runtime. Changes are marked for the outbox; the one direct store call
//! is a delete's `mark_deleted`, which the request waits on.

use std::time::{Duration, Instant};

use recfleet_proto::address::Refusal;
use recfleet_proto::protocol::{Assignment, ControllerMessage, Outcome};
use recfleet_proto::{deadline, Deadlines, EventKind, Recipe, RecordingEvent, RecordingStatus, SubCode};
use serde_json::json;
use time::OffsetDateTime;

use super::{Entry, Manager};
use crate::fleet::{BotEvent, BotState};
use crate::lifecycle::{advance, to_finalizing};
use crate::metrics::EnforcedBy;
use crate::model::{ApiError, CreateRecording, ErrorDetail, Outputs, Recording};
use crate::recovery::{Recovered, RecoveryError};
use crate::store::{LogKind, StoredRecording};

impl Manager {
    pub(super) fn create(&mut self, req: CreateRecording, key: Option<String>) -> Result<(Recording, bool), ApiError> {
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
        self.recordings
            .insert(id.clone(), Entry { stored, notified: None, assigned_at: None, viewable: false, since: None, recovering: false });
        self.order.push(id.clone());
        if let Some(k) = key {
            self.idempotency.insert(k, id.clone());
        }
        self.queue.push_back(id.clone());
        self.requested();
        self.touch(&id, LogKind::Created, json!({"meeting_url": view.meeting_url}));
        Ok((view, true))
    }

    /// Forgets a recording whose creation could not be written: nothing else has seen it.
    pub(super) fn undo_create(&mut self, id: &str) {
        // Not made, so not demand either (it was the latest request).
        self.requests.pop_back();
        self.recordings.remove(id);
        self.order.retain(|o| o != id);
        self.idempotency.retain(|_, v| v != id);
        self.queue.retain(|q| q != id);
        self.dirty.retain(|(d, _, _)| d != id);
    }

    pub(super) fn stop(&mut self, id: &str) -> Result<Recording, ApiError> {
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
        }
        let view = rec.clone();
        if !queued && !self.stop_handoff(id) {
            if let Some(tx) = self.bots.values().find(|b| b.recording.as_deref() == Some(id)).and_then(|b| b.tx.as_ref()) {
                let _ = tx.send(ControllerMessage::Stop { recording_id: id.to_string() });
            }
        }
        self.touch(id, LogKind::StopRequested, json!({"queued": queued, "status_after_stop": after_stop}));
        Ok(view)
    }

    pub(super) async fn delete(&mut self, id: &str) -> Result<(), ApiError> {
        let entry = self.recordings.get(id).ok_or_else(|| ApiError::NotFound(id.to_string()))?;
        if !entry.stored.view.status.is_terminal() {
            return Err(ApiError::Conflict(format!("recording {id} is {}: stop it first", entry.stored.view.status.as_str())));
        }
        self.store.mark_deleted(id).await?;
        crate::reads::write(&self.cfg.reads).remove(id);
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

    pub(super) fn apply_event(&mut self, id: &str, event: &recfleet_proto::Event) {
        let metrics = self.cfg.metrics.clone();
        let Some(entry) = self.recordings.get_mut(id) else { return };
        let rec = &mut entry.stored.view;
        match &event.kind {
            EventKind::WaitingRoom => {
                advance(rec, RecordingEvent::WaitingRoomEntered, &metrics);
            }
            // A rejoin joins again: the first join is the one a user waited for.
            EventKind::Joined if rec.joined_at.is_none() => {
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
            // A late end (a bot that kept going) does not rewrite a finished recording.
            EventKind::Ended { .. } if rec.status.is_terminal() => {}
            EventKind::Ended { sub_code, .. } => {
                rec.ended_at = Some(event.at);
                rec.sub_code = Some(*sub_code);
                // Without media the end is decided by the bot's `Finished`, which says why.
                if rec.recording_started_at.is_some() {
                    to_finalizing(rec, &metrics);
                }
            }
            EventKind::BrowserLost { .. } => metrics.browser_lost.inc(),
            EventKind::CaptureRestarted { .. } => metrics.capture_restarts.inc(),
            EventKind::CaptureSilent { .. } => metrics.capture_silent.inc(),
            EventKind::RequestRefused { reason, .. } => {
                // The bot's word, kept to the closed set of label values.
                let known = Refusal::ALL.iter().find(|r| r.as_str() == reason.as_str()).map_or("other", |r| r.as_str());
                metrics.requests_refused.with_label_values(&[known]).inc()
            }
            EventKind::DeadlineExceeded { status, .. } => {
                metrics.deadlines_exceeded.with_label_values(&[status.as_str(), EnforcedBy::Bot.as_str()]).inc()
            }
            EventKind::Joined
            | EventKind::Rejoined { .. }
            | EventKind::PageLoaded { .. }
            | EventKind::JoinAttemptFailed { .. }
            | EventKind::FirstSegment { .. }
            | EventKind::CaptureSound { .. }
            | EventKind::Left { .. }
            | EventKind::LeaveFailed { .. }
            | EventKind::Handoff { .. }
            | EventKind::HandedOff { .. }
            | EventKind::Finalized { .. } => {}
        }
        self.touch(id, LogKind::Timeline, serde_json::to_value(event).expect("serializes"));
    }

    pub(super) fn finish(&mut self, id: &str, outcome: Outcome) {
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
            // A predecessor's: the recording is its successor's to finish (`handoff`).
            Outcome::HandedOff { .. } => return,
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
    pub(super) fn start_recovery(&mut self, id: &str) {
        let Some(entry) = self.recordings.get_mut(id) else { return };
        let rec = &mut entry.stored.view;
        // One recovery at a time: a bot that kept its deadline and the controller's own
        // enforcement may both ask for one.
        if entry.recovering || !to_finalizing(rec, &self.cfg.metrics) {
            return;
        }
        entry.recovering = true;
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

    pub(super) fn recovered(&mut self, id: &str, result: Result<Recovered, RecoveryError>) {
        let (public, metrics) = (self.cfg.public_url.clone(), self.cfg.metrics.clone());
        let Some(entry) = self.recordings.get_mut(id) else { return };
        entry.recovering = false;
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

    /// A recording whose bot died before `Finished`: what it stored is finalized without it.
    pub(super) fn mark_crashed(&mut self, id: &str, code: &str, why: &str) {
        self.mark_ended_by(id, SubCode::BotCrashed, code, why);
    }

    /// The recording's bot is gone without finishing (`sub_code` says why); what it stored is
    /// finalized from the store.
    pub(super) fn mark_ended_by(&mut self, id: &str, sub_code: SubCode, code: &str, why: &str) {
        let Some(entry) = self.recordings.get_mut(id) else { return };
        let rec = &mut entry.stored.view;
        if rec.status.is_terminal() {
            return;
        }
        rec.sub_code = Some(sub_code);
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

    /// Recordings held by a bot that have stayed in one phase (`deadline::phase`: the join and
    /// its waiting room are one) past its deadline, the bot's plus the margin, with the status
    /// and the deadline they outlasted. Notes when each phase was first seen.
    pub(super) fn overdue(&mut self, held: &[String], now: Instant) -> Vec<(String, RecordingStatus, Duration)> {
        let (deadlines, margin) = (self.cfg.deadlines, self.cfg.deadline_margin);
        let mut overdue = Vec::new();
        for id in held {
            // A recording the controller finalizes itself is no longer the bot's to finish.
            let Some(entry) = self.recordings.get_mut(id).filter(|e| !e.stored.view.partial) else { continue };
            let status = entry.stored.view.status;
            let phase = deadline::phase(status);
            let since = match entry.since {
                Some((seen, at)) if seen == phase => at,
                _ => entry.since.insert((phase, now)).1,
            };
            let Some(limit) = deadline_of(status, &deadlines, entry.stored.recipe.as_ref()) else { continue };
            if deadline::is_overdue(since, now, limit, margin) {
                overdue.push((id.clone(), status, limit));
            }
        }
        overdue
    }

    /// Forgets when `id`'s phase began: its clock starts again when next seen.
    pub(super) fn forget_phase(&mut self, id: &str) {
        if let Some(entry) = self.recordings.get_mut(id) {
            entry.since = None;
        }
    }

    /// A recording whose bot outlasted `status`'s deadline and was stopped: ended as the bot
    /// would have (a join that never finished fails; a recording keeps the end it had) and
    /// finalized from the store when it has media.
    pub(super) fn mark_overdue(&mut self, id: &str, status: RecordingStatus, why: &str) {
        let Some(entry) = self.recordings.get(id) else { return };
        let sub_code = match status {
            RecordingStatus::Joining => SubCode::JoinFailed,
            RecordingStatus::WaitingRoom => SubCode::WaitingRoomTimeout,
            // The bot's `ended` names its end; without it, only an API stop gets here.
            RecordingStatus::Stopping => entry.stored.view.sub_code.unwrap_or(SubCode::StoppedByApi),
            RecordingStatus::Queued | RecordingStatus::Recording | RecordingStatus::Finalizing => {
                entry.stored.view.sub_code.unwrap_or(SubCode::BotCrashed)
            }
            RecordingStatus::Completed | RecordingStatus::Failed => return,
        };
        self.mark_ended_by(id, sub_code, "deadline_exceeded", why);
    }

    pub(super) fn assign_queued(&mut self) {
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
                continuation: None,
            };
            let tx = bot.tx.as_ref().expect("checked above");
            if tx.send(ControllerMessage::Assign(Box::new(assignment))).is_err() {
                bot.tx = None;
                continue;
            }
            tracing::info!(recording_id = %id, bot_id = %bot_id, "assigned");
            bot.state = bot.state.next(BotEvent::Assigned).expect("only idle bots are picked");
            bot.idle_since = None;
            bot.recording = Some(id.clone());
            advance(rec, RecordingEvent::Assigned, &self.cfg.metrics);
            entry.assigned_at = Some(OffsetDateTime::now_utc());
            let bot_id = bot_id.clone();
            self.queue.pop_front();
            self.dirty_bots.push(bot_id.clone());
            self.touch(&id, LogKind::Assigned, json!({"bot_id": bot_id}));
        }
    }
}

/// Pure: how long a recording may stay in `status`'s phase with its bot (the bot's deadline,
/// the recipe's waiting room in the join's); `None` for the statuses without one.
pub(super) fn deadline_of(status: RecordingStatus, deadlines: &Deadlines, recipe: Option<&Recipe>) -> Option<Duration> {
    let waiting_room = recipe.filter(|r| r.waiting_room_when.is_some()).map(|r| Duration::from_secs(r.waiting_room_timeout_secs));
    deadlines.limit_of(status, waiting_room)
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
