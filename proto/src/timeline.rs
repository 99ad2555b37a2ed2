//! The recording's timeline, written as `events.json`: what happened and when, from the page
//! loading to the end with its sub-code.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::SubCode;

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// The meeting page answered and loaded (`attempt` counts from 1).
    PageLoaded { url: String, attempt: u32 },
    /// A join attempt failed and will be retried (or was the last one).
    JoinAttemptFailed { attempt: u32, error: String },
    /// The page shows the waiting room; recording waits.
    WaitingRoom,
    /// The last join step is done: the bot is in the call.
    Joined,
    /// FFmpeg captured its first frame.
    RecordingStarted,
    /// The first segment is closed on disk.
    FirstSegment { name: String },
    /// The browser was lost mid-meeting (crashed, killed, frozen); the capture goes on and the
    /// bot rejoins (`attempt` counts from 1).
    BrowserLost { reason: String, attempt: u32 },
    /// Back in the meeting with a fresh browser, `gap_ms` after the loss.
    Rejoined { attempt: u32, gap_ms: u64 },
    /// The encoder died (`reason`) and a new one records on, as capture `generation`; its first
    /// frame came `gap_ms` after the loss.
    CaptureRestarted { attempt: u32, generation: u32, reason: String, gap_ms: u64 },
    /// The captured audio has been digital silence for `silent_secs` while the bot is in the
    /// call: a capture fault (a muted or broken sink), reported and counted, never a reason to
    /// leave; the recording goes on.
    CaptureSilent { silent_secs: u64 },
    /// The browser asked for `target` (`host:port`) and the address policy refused it
    /// (`reason`: `metadata`, `link_local`, `loopback`, `private`, `reserved`): the request got
    /// no answer from there. Once per target and recording; docs/SECURITY.md.
    RequestRefused { target: String, reason: String },
    /// Sound is back in the capture after `silent_secs` of digital silence.
    CaptureSound { silent_secs: f64 },
    /// The bot left the call with the recipe's `leave` steps, `ms` after it began.
    Left { ms: u64 },
    /// The recipe's `leave` steps did not finish (`reason`): the browser was closed anyway.
    LeaveFailed { reason: String },
    /// `status` outlasted its deadline of `secs` (docs/BOT.md#deadlines): what still ran was
    /// stopped and what was recorded is kept.
    DeadlineExceeded { status: crate::RecordingStatus, secs: u64 },
    /// This bot carries on a recording another bot handed over (its host was taken back):
    /// its capture starts at segment `first_sequence`, after `from_bot`'s last.
    Handoff { from_bot: String, first_sequence: u64 },
    /// This bot handed its recording over to `to_bot` and left the meeting; `last_sequence` is
    /// the last segment it recorded.
    HandedOff { to_bot: String, last_sequence: u64 },
    /// Why the meeting ended for the bot.
    Ended { sub_code: SubCode, detail: String },
    /// `recording.mp4` is made and checked.
    Finalized { duration_secs: f64 },
}

/// One entry of `events.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Milliseconds since the bot started on this recording.
    pub elapsed_ms: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The whole timeline, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub recording_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    pub events: Vec<Event>,
}

impl Timeline {
    pub fn new(recording_id: impl Into<String>, started_at: OffsetDateTime) -> Self {
        Self { recording_id: recording_id.into(), started_at, events: Vec::new() }
    }

    pub fn push_at(&mut self, at: OffsetDateTime, kind: EventKind) -> &Event {
        let elapsed_ms = (at - self.started_at).whole_milliseconds().max(0) as u64;
        self.events.push(Event { at, elapsed_ms, kind });
        self.events.last().expect("just pushed")
    }

    pub fn find(&self, pred: impl Fn(&EventKind) -> bool) -> Option<&Event> {
        self.events.iter().find(|e| pred(&e.kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_flat_with_a_kind() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mut t = Timeline::new("r1", t0);
        t.push_at(t0 + time::Duration::milliseconds(1500), EventKind::Ended { sub_code: SubCode::MeetingEnded, detail: "x".into() });
        let v = serde_json::to_value(&t).unwrap();
        let e = &v["events"][0];
        assert_eq!(e["kind"], "ended");
        assert_eq!(e["sub_code"], "meeting_ended");
        assert_eq!(e["elapsed_ms"], 1500);
        assert_eq!(e["at"], "2023-11-14T22:13:21.5Z");
        let back: Timeline = serde_json::from_value(v).unwrap();
        assert_eq!(back, t);
    }
}
