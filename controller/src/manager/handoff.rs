//! Handoffs: a bot whose host takes it away (SIGTERM from ECS, Docker, a Spot interruption)
//! asks for a successor; a warm bot is assigned the same recording from a later segment
//! number and capture generation; each segment the predecessor stores from then on is passed
//! to the successor; once the successor's first segment is stored, the predecessor is told to
//! hand over, leaves and stores what is left. The recording's status stays `recording`
//! throughout, and only the successor's `Finished` finishes it.
//!
//! This module pairs the two bots and relays between them; it must not change a recording's
//! status.

use recfleet_proto::protocol::{Assignment, Continuation, ControllerMessage, Outcome};
use recfleet_proto::{ManifestSegment, RecordingStatus};
use serde_json::json;

use super::Manager;
use crate::fleet::{BotEvent, BotState};
use crate::store::LogKind;
use crate::webhook::Delivery;

/// A bot's part in a handoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Role {
    /// It is handing its recording over to `successor`.
    To { successor: String },
    /// It carries on `predecessor`'s recording from segment `first_sequence`; `recording`
    /// once that segment is stored.
    From { predecessor: String, first_sequence: u64, recording: bool },
}

/// What a bot asked for, to hand its recording over.
#[derive(Debug, Clone)]
pub(super) struct Request {
    pub recording_id: String,
    pub last_sequence: u64,
    pub first_sequence: u64,
    pub generation: u32,
}

impl Manager {
    /// A bot taken away asks for a successor: an idle bot is assigned the recording as a
    /// continuation, or the request is refused (handoffs off, no warm bot, not the leader, a
    /// recording not recording) and the bot stops as a signal says.
    pub(super) fn on_handoff_requested(&mut self, bot_id: &str, req: Request) {
        let id = req.recording_id.clone();
        let refusal = self.handoff_refusal(bot_id, &id);
        let successor = match refusal {
            Some(reason) => Err(reason),
            None => self
                .bots
                .iter()
                .find(|(k, b)| k.as_str() != bot_id && b.state == BotState::Idle && b.tx.is_some())
                .map(|(k, _)| k.clone())
                .ok_or_else(|| "no warm bot to take the recording over".to_string()),
        };
        let successor = match successor {
            Ok(s) => s,
            Err(reason) => {
                tracing::warn!(recording_id = %id, %bot_id, %reason, "handoff refused");
                self.cfg.metrics.handoffs.with_label_values(&["refused"]).inc();
                self.send_to(bot_id, ControllerMessage::HandoffRefused { recording_id: id.clone(), reason: reason.clone() });
                self.touch(&id, LogKind::Handoff, json!({"from_bot": bot_id, "result": "refused", "reason": reason}));
                return;
            }
        };
        let Some(entry) = self.recordings.get(&id) else { return };
        let rec = &entry.stored.view;
        let assignment = Assignment {
            recording_id: id.clone(),
            meeting_url: rec.meeting_url.clone(),
            bot_name: rec.bot_name.clone(),
            recipe: entry.stored.recipe.clone(),
            max_duration_secs: rec.max_duration_secs.map(|d| d.saturating_sub(seconds_since_start(rec)).max(1)),
            continuation: Some(Continuation {
                from_bot: bot_id.to_string(),
                first_sequence: req.first_sequence,
                generation: req.generation,
            }),
        };
        let webhook = entry.stored.webhook_url.clone().map(|url| (url, serde_json::to_value(rec).expect("serializes")));
        let bot = self.bots.get_mut(&successor).expect("picked above");
        if bot.tx.as_ref().is_some_and(|tx| tx.send(ControllerMessage::Assign(Box::new(assignment))).is_err()) {
            bot.tx = None;
        }
        bot.state = bot.state.next(BotEvent::Assigned).expect("only idle bots are picked");
        bot.idle_since = None;
        bot.recording = Some(id.clone());
        bot.handoff = Some(Role::From { predecessor: bot_id.to_string(), first_sequence: req.first_sequence, recording: false });
        if let Some(from) = self.bots.get_mut(bot_id) {
            from.handoff = Some(Role::To { successor: successor.clone() });
        }
        self.send_to(bot_id, ControllerMessage::HandoffAccepted { recording_id: id.clone(), successor: successor.clone() });
        self.dirty_bots.extend([bot_id.to_string(), successor.clone()]);
        tracing::info!(
            recording_id = %id,
            from_bot = %bot_id,
            to_bot = %successor,
            last_sequence = req.last_sequence,
            first_sequence = req.first_sequence,
            "handoff: a successor takes the recording over"
        );
        self.cfg.metrics.handoffs.with_label_values(&["started"]).inc();
        let data = json!({"from_bot": bot_id, "to_bot": successor, "result": "started", "first_sequence": req.first_sequence});
        if let Some((url, mut payload)) = webhook {
            payload["handoff"] = data.clone();
            let _ = self.webhooks.send(Delivery { recording_id: id.clone(), url, event_type: "recording.handoff".into(), payload });
        }
        self.touch(&id, LogKind::Handoff, data);
    }

    /// Why `bot_id` cannot hand `id` over, if it cannot.
    fn handoff_refusal(&self, bot_id: &str, id: &str) -> Option<String> {
        if !self.cfg.handoffs {
            return Some("handoffs are off (--no-handoff)".into());
        }
        if self.lapsed() {
            return Some("this controller is not leading".into());
        }
        let Some(bot) = self.bots.get(bot_id) else { return Some("the bot is being stopped".into()) };
        if bot.recording.as_deref() != Some(id) || bot.handoff.is_some() {
            return Some("the bot does not hold this recording".into());
        }
        match self.recordings.get(id).map(|e| e.stored.view.status) {
            Some(RecordingStatus::Recording) => None,
            Some(status) => Some(format!("the recording is {}", status.as_str())),
            None => Some("no such recording".into()),
        }
    }

    /// A stored segment, for the handoff it belongs to: a predecessor's is passed on to its
    /// successor; a successor's first tells the predecessor to hand over.
    pub(super) fn relay_segment(&mut self, bot_id: &str, recording_id: &str, segment: &ManifestSegment) {
        match self.bots.get(bot_id).and_then(|b| b.handoff.clone()) {
            Some(Role::To { successor }) => {
                let msg = ControllerMessage::Inherited { recording_id: recording_id.to_string(), segment: segment.clone() };
                self.send_to(&successor, msg);
            }
            Some(Role::From { predecessor, first_sequence, recording: false }) if segment.sequence >= first_sequence => {
                if let Some(Some(Role::From { recording, .. })) = self.bots.get_mut(bot_id).map(|b| b.handoff.as_mut()) {
                    *recording = true;
                }
                tracing::info!(recording_id, from_bot = %predecessor, to_bot = %bot_id, "the successor's first segment is stored: handing over");
                self.send_to(&predecessor, ControllerMessage::HandOver { recording_id: recording_id.to_string() });
            }
            _ => {}
        }
    }

    /// A successor's `Finished` before its first segment was stored (it could not join): the
    /// handoff is off, and the predecessor, which records until then, is told so and finishes
    /// the recording itself. `false` when that is not the case (the recording then finishes
    /// as any other).
    pub(super) fn successor_failed(&mut self, bot_id: &str, recording_id: &str, outcome: &Outcome) -> bool {
        let Some(Some(Role::From { predecessor, recording: false, .. })) = self.bots.get(bot_id).map(|b| b.handoff.clone()) else {
            return false;
        };
        if !self.bots.get(&predecessor).is_some_and(|p| matches!(p.handoff, Some(Role::To { .. }))) {
            return false;
        }
        let reason = match outcome {
            Outcome::Failed { code, message, .. } => format!("the successor failed ({code}): {message}"),
            _ => "the successor ended before it recorded".to_string(),
        };
        tracing::warn!(recording_id, from_bot = %predecessor, to_bot = %bot_id, %reason, "handoff failed: the first bot finishes the recording");
        if let Some(b) = self.bots.get_mut(bot_id) {
            b.recording = None;
            b.handoff = None;
        }
        if let Some(p) = self.bots.get_mut(&predecessor) {
            p.handoff = None;
        }
        self.dirty_bots.extend([bot_id.to_string(), predecessor.clone()]);
        self.cfg.metrics.handoffs.with_label_values(&["failed"]).inc();
        self.send_to(&predecessor, ControllerMessage::HandoffRefused { recording_id: recording_id.to_string(), reason: reason.clone() });
        self.touch(
            recording_id,
            LogKind::Handoff,
            json!({"from_bot": predecessor, "to_bot": bot_id, "result": "failed", "reason": reason}),
        );
        true
    }

    /// A predecessor's `Finished`: its part is stored (or as much as it could); the recording
    /// stays the successor's. `false` when `bot_id` is no predecessor.
    pub(super) fn predecessor_finished(&mut self, bot_id: &str, recording_id: &str, outcome: &Outcome) -> bool {
        let handed_off = matches!(outcome, Outcome::HandedOff { .. });
        let role = self.bots.get(bot_id).map(|b| b.handoff.clone());
        let successor = match role {
            Some(Some(Role::To { successor })) => Some(successor),
            // A handoff this controller did not see begin (it restarted meanwhile), or one
            // called off as the bot's grace ran out.
            _ if handed_off => None,
            _ => return false,
        };
        if let Some(bot) = self.bots.get_mut(bot_id) {
            // Its exit is no crash of the recording's.
            bot.recording = None;
            self.dirty_bots.push(bot_id.to_string());
        }
        if successor.is_none() && !self.bots.values().any(|b| b.recording.as_deref() == Some(recording_id)) {
            // Handed over to nobody (the successor failed as the grace ran out): what was
            // stored is the recording.
            let why = "the bot handed its recording over, but no successor carries it on";
            self.mark_ended_by(recording_id, recfleet_proto::SubCode::StoppedBySignal, "handoff_failed", why);
        }
        match outcome {
            Outcome::HandedOff { last_sequence, .. } => {
                tracing::info!(recording_id, %bot_id, last_sequence, successor = ?successor, "the predecessor handed over and left");
                self.cfg.metrics.handoffs.with_label_values(&["completed"]).inc();
            }
            other => {
                tracing::warn!(recording_id, %bot_id, outcome = ?other, "the predecessor ended otherwise while handing over; its successor carries on")
            }
        }
        self.touch(recording_id, LogKind::Finished, serde_json::to_value(outcome).expect("serializes"));
        if let Some(successor) = successor {
            self.send_to(&successor, ControllerMessage::PredecessorDone { recording_id: recording_id.to_string() });
        }
        true
    }

    /// A predecessor that exited or was lost before its `Finished`: its successor waits no more.
    pub(super) fn predecessor_gone(&mut self, role: Option<&Role>, recording_id: &str) -> bool {
        let Some(Role::To { successor }) = role else { return false };
        tracing::warn!(recording_id, %successor, "the predecessor is gone before handing over; its successor carries on");
        self.send_to(successor, ControllerMessage::PredecessorDone { recording_id: recording_id.to_string() });
        true
    }

    fn send_to(&mut self, bot_id: &str, msg: ControllerMessage) {
        if let Some(bot) = self.bots.get_mut(bot_id) {
            if bot.tx.as_ref().is_some_and(|tx| tx.send(msg).is_err()) {
                bot.tx = None;
            }
        }
    }
}

/// Whole seconds the recording has run, for what is left of its `max_duration_secs`.
fn seconds_since_start(rec: &crate::model::Recording) -> u64 {
    let started = rec.recording_started_at.unwrap_or(rec.created_at);
    (time::OffsetDateTime::now_utc() - started).whole_seconds().max(0) as u64
}
