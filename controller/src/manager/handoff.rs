//! Handoffs: a bot whose host takes it away (SIGTERM from ECS, Docker, a Spot interruption)
//! asks for a successor; a warm bot is assigned the same recording from a later segment
//! number and capture generation; each segment the predecessor stores from then on is passed
//! to the successor; once the successor's first segment is stored, the predecessor is told to
//! hand over, leaves and stores what is left. The recording's status stays `recording`
//! throughout, and only the successor's `Finished` finishes it.
//!
//! A handoff that cannot go on is called off (`Role::CalledOff`) or given back, and the first
//! bot finishes the recording itself.
//!
//! This module pairs the two bots and relays between them; it must not change a recording's
//! status itself (the recording half does, through `mark_ended_by`) or talk to the runtime.

use recfleet_proto::protocol::{Assignment, Continuation, ControllerMessage, Outcome};
use recfleet_proto::{ManifestSegment, RecordingStatus};
use serde_json::json;

use super::Manager;
use crate::fleet::{BotEvent, BotState};
use crate::metrics::HandoffResult;
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
    /// It was to carry `recording_id` on, but the handoff was called off before it recorded:
    /// it is told so (again at each reconnection) and whatever it says of the recording
    /// changes nothing.
    CalledOff { recording_id: String },
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
                self.handoff_counted(HandoffResult::Refused);
                self.send_to(bot_id, ControllerMessage::HandoffRefused { recording_id: id.clone(), reason: reason.clone() });
                self.touch(&id, LogKind::Handoff, json!({"from_bot": bot_id, "result": HandoffResult::Refused.as_str(), "reason": reason}));
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
        if bot.tx.as_ref().is_none_or(|tx| tx.send(ControllerMessage::Assign(Box::new(assignment))).is_err()) {
            bot.tx = None;
            let reason = "the warm bot picked went away".to_string();
            self.handoff_counted(HandoffResult::Refused);
            self.send_to(bot_id, ControllerMessage::HandoffRefused { recording_id: id.clone(), reason });
            return;
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
        self.handoff_counted(HandoffResult::Started);
        let data = json!({"from_bot": bot_id, "to_bot": successor, "result": HandoffResult::Started.as_str(), "first_sequence": req.first_sequence});
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

    /// Calls the handoff of `successor` off before it recorded: it stops without writing the
    /// recording's manifest or MP4, and nothing it says of the recording counts any more.
    fn call_off(&mut self, successor: &str, recording_id: &str, why: &str) {
        tracing::warn!(recording_id, to_bot = %successor, why, "handoff called off");
        self.handoff_counted(HandoffResult::Failed);
        self.send_to(successor, ControllerMessage::HandoffRefused { recording_id: recording_id.to_string(), reason: why.to_string() });
        if let Some(b) = self.bots.get_mut(successor) {
            b.recording = None;
            b.handoff = Some(Role::CalledOff { recording_id: recording_id.to_string() });
        }
        self.dirty_bots.push(successor.to_string());
        self.touch(recording_id, LogKind::Handoff, json!({"to_bot": successor, "result": HandoffResult::Failed.as_str(), "reason": why}));
    }

    fn role(&self, bot_id: &str) -> Option<Role> {
        self.bots.get(bot_id).and_then(|b| b.handoff.clone())
    }

    /// Whether `successor` has recorded yet (its first segment is stored).
    fn successor_recording(&self, successor: &str) -> bool {
        matches!(self.role(successor), Some(Role::From { recording: true, .. }))
    }

    /// `POST .../stop` while a handoff is under way: with a successor recording, the
    /// predecessor hands over and the successor stops; before that, the handoff is called off
    /// and the predecessor stops. `false` when no handoff is under way.
    pub(super) fn stop_handoff(&mut self, recording_id: &str) -> bool {
        let Some(predecessor) = self
            .bots
            .iter()
            .find(|(_, b)| b.recording.as_deref() == Some(recording_id) && matches!(b.handoff, Some(Role::To { .. })))
            .map(|(k, _)| k.clone())
        else {
            return false;
        };
        let Some(Role::To { successor }) = self.role(&predecessor) else { return false };
        let stop = ControllerMessage::Stop { recording_id: recording_id.to_string() };
        if self.successor_recording(&successor) {
            self.send_to(&predecessor, ControllerMessage::HandOver { recording_id: recording_id.to_string() });
            self.send_to(&successor, stop);
        } else {
            self.call_off(&successor, recording_id, "stopped by the API");
            if let Some(p) = self.bots.get_mut(&predecessor) {
                p.handoff = None;
            }
            self.send_to(&predecessor, stop);
        }
        true
    }

    /// The predecessor gave up waiting for an answer and finishes the recording itself.
    pub(super) fn on_handoff_withdrawn(&mut self, bot_id: &str, recording_id: &str) {
        if let Some(Role::To { successor }) = self.role(bot_id) {
            self.call_off(&successor, recording_id, "the bot taken away withdrew its request");
            if let Some(b) = self.bots.get_mut(bot_id) {
                b.handoff = None;
            }
        }
    }

    /// Whether `bot_id`'s handoff was called off: what it says of a recording is ignored.
    pub(super) fn called_off(&self, bot_id: &str) -> bool {
        matches!(self.role(bot_id), Some(Role::CalledOff { .. }))
    }

    /// What a bot reconnecting must hear again: a called-off successor, that it is.
    pub(super) fn on_reconnect(&self, bot_id: &str) -> Option<ControllerMessage> {
        match self.role(bot_id) {
            Some(Role::CalledOff { recording_id }) => {
                Some(ControllerMessage::HandoffRefused { recording_id, reason: "the handoff was called off".into() })
            }
            _ => None,
        }
    }

    /// A `Finished` that belongs to a handoff rather than to the recording: a called-off
    /// successor's; a successor's before its first segment (it could not join: the predecessor,
    /// still recording, is told to finish the recording itself); a predecessor's. `false` for
    /// one the recording is to finish with.
    pub(super) fn handoff_finished(&mut self, bot_id: &str, recording_id: &str, outcome: &Outcome) -> bool {
        match self.role(bot_id) {
            Some(Role::CalledOff { .. }) => {
                tracing::info!(recording_id, %bot_id, "a called-off successor finished; nothing changes");
                true
            }
            Some(Role::From { predecessor, recording: false, .. }) => {
                let reason = match outcome {
                    Outcome::Failed { code, message, .. } => format!("the successor failed ({code}): {message}"),
                    _ => "the successor ended before it recorded".to_string(),
                };
                if matches!(self.role(&predecessor), Some(Role::To { .. })) {
                    self.give_back(bot_id, &predecessor, recording_id, &reason);
                } else {
                    // Its predecessor handed over and is gone: what they stored is the recording.
                    if let Some(b) = self.bots.get_mut(bot_id) {
                        b.recording = None;
                        b.handoff = None;
                    }
                    self.mark_ended_by(recording_id, recfleet_proto::SubCode::StoppedBySignal, "handoff_failed", &reason);
                }
                true
            }
            _ => self.predecessor_finished(bot_id, recording_id, outcome),
        }
    }

    /// The successor could not take over: the predecessor, which records until then, is told
    /// to finish the recording itself.
    fn give_back(&mut self, successor: &str, predecessor: &str, recording_id: &str, reason: &str) {
        tracing::warn!(recording_id, from_bot = %predecessor, to_bot = %successor, %reason, "handoff failed: the first bot finishes the recording");
        self.handoff_counted(HandoffResult::Failed);
        if let Some(b) = self.bots.get_mut(successor) {
            b.recording = None;
            b.handoff = None;
        }
        if let Some(p) = self.bots.get_mut(predecessor) {
            p.handoff = None;
        }
        self.dirty_bots.extend([successor.to_string(), predecessor.to_string()]);
        let msg = ControllerMessage::HandoffRefused { recording_id: recording_id.to_string(), reason: reason.to_string() };
        self.send_to(predecessor, msg);
        self.touch(
            recording_id,
            LogKind::Handoff,
            json!({"from_bot": predecessor, "to_bot": successor, "result": HandoffResult::Failed.as_str(), "reason": reason}),
        );
    }

    /// A predecessor's `Finished`. Handed over: its part is stored, the recording is the
    /// successor's. Finished otherwise (the meeting ended or a stop came during the handoff):
    /// a successor that records carries on; one that does not is called off, and the
    /// recording finishes with this outcome. `false` when the recording is to finish with it.
    fn predecessor_finished(&mut self, bot_id: &str, recording_id: &str, outcome: &Outcome) -> bool {
        let handed_off = matches!(outcome, Outcome::HandedOff { .. });
        let successor = match self.role(bot_id) {
            Some(Role::To { successor }) => Some(successor),
            // A handoff this controller did not see begin (it restarted meanwhile), or one
            // called off as the bot's grace ran out.
            _ if handed_off => None,
            _ => return false,
        };
        if let Some(successor) = successor.as_ref().filter(|s| !handed_off && !self.successor_recording(s)) {
            self.call_off(&successor.clone(), recording_id, "the bot taken away finished the recording itself");
            if let Some(b) = self.bots.get_mut(bot_id) {
                b.handoff = None;
            }
            return false;
        }
        if let Some(bot) = self.bots.get_mut(bot_id) {
            // Its exit is no crash of the recording's.
            bot.recording = None;
            bot.handoff = None;
            self.dirty_bots.push(bot_id.to_string());
        }
        match outcome {
            Outcome::HandedOff { last_sequence, .. } => {
                tracing::info!(recording_id, %bot_id, last_sequence, successor = ?successor, "the predecessor handed over and left");
                self.handoff_counted(HandoffResult::Completed);
            }
            other => {
                tracing::warn!(recording_id, %bot_id, outcome = ?other, "the predecessor ended otherwise while handing over; its successor carries on")
            }
        }
        self.touch(recording_id, LogKind::Finished, serde_json::to_value(outcome).expect("serializes"));
        match successor {
            Some(successor) => self.predecessor_done(&successor, recording_id),
            None if !self.bots.values().any(|b| b.recording.as_deref() == Some(recording_id)) => {
                // Handed over to nobody (the successor failed as the grace ran out): what was
                // stored is the recording.
                let why = "the bot handed its recording over, but no successor carries it on";
                self.mark_ended_by(recording_id, recfleet_proto::SubCode::StoppedBySignal, "handoff_failed", why);
            }
            None => {}
        }
        true
    }

    /// The successor is told its predecessor is done; once it records, it may hand over in
    /// turn (before, its end still decides what becomes of the recording).
    fn predecessor_done(&mut self, successor: &str, recording_id: &str) {
        if let Some(b) = self.bots.get_mut(successor).filter(|b| matches!(b.handoff, Some(Role::From { recording: true, .. }))) {
            b.handoff = None;
        }
        self.send_to(successor, ControllerMessage::PredecessorDone { recording_id: recording_id.to_string() });
    }

    /// A bot of a handoff that exited or was lost before its `Finished`: a predecessor's
    /// successor waits no more; a successor that had not recorded gives the recording back.
    /// `true` when the recording is to be left alone (no crash of it).
    pub(super) fn handoff_bot_gone(&mut self, bot_id: &str, role: Option<&Role>, recording_id: &str) -> bool {
        match role {
            Some(Role::To { successor }) => {
                tracing::warn!(recording_id, %successor, "the predecessor is gone before handing over; its successor carries on");
                self.predecessor_done(successor, recording_id);
                true
            }
            Some(Role::From { predecessor, recording: false, .. }) if matches!(self.role(predecessor), Some(Role::To { .. })) => {
                self.give_back(bot_id, &predecessor.clone(), recording_id, "the successor is gone");
                true
            }
            Some(Role::CalledOff { .. }) => true,
            _ => false,
        }
    }

    fn handoff_counted(&self, result: HandoffResult) {
        self.cfg.metrics.handoffs.with_label_values(&[result.as_str()]).inc();
    }

    pub(super) fn send_to(&mut self, bot_id: &str, msg: ControllerMessage) {
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
