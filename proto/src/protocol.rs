//! The bot ↔ controller protocol: JSON messages over a WebSocket that the bot dials, one enum
//! each way (`DESIGN.md`). Shapes only; transport and state belong to each side.

use serde::{Deserialize, Serialize};

use crate::recording::{CaptureStats, ManifestSegment, Summary, UploadStats};
use crate::timeline::Event;
use crate::{Recipe, RecordingStatus, SubCode};

/// Bumped when a message changes incompatibly; the controller refuses other versions at `Hello`.
pub const PROTOCOL_VERSION: u32 = 1;

/// What a bot says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BotMessage {
    /// First message on every connection (and again after a reconnect).
    Hello {
        bot_id: String,
        protocol: u32,
        /// True once Xvfb, PulseAudio and Chromium are up: the bot is warm.
        ready: bool,
        /// The recording it is working on, after a reconnect.
        recording_id: Option<String>,
    },
    /// Every few seconds; silence means the bot is lost.
    Heartbeat {
        capture: Option<CaptureStats>,
        cpu_cores: Option<f64>,
        rss_bytes: Option<u64>,
        #[serde(default)]
        upload: Option<UploadStats>,
    },
    /// The environment came up (or failed to) after `Hello`.
    Ready,
    /// The recording's status moved.
    StateChanged { recording_id: String, status: RecordingStatus, sub_code: Option<SubCode> },
    /// A timeline event, as written to `events.json`.
    Timeline { recording_id: String, event: Event },
    /// A file of the recording reached the object store.
    SegmentStored {
        recording_id: String,
        segment: ManifestSegment,
        /// Closed on the bot's disk → stored.
        #[serde(default)]
        upload_lag_ms: Option<u64>,
    },
    /// A warn or error event of the bot's own log, with its fields.
    Log { level: LogLevel, message: String, fields: serde_json::Map<String, serde_json::Value> },
    /// Its host is taking the bot away (SIGTERM): it asks for a successor and records on
    /// meanwhile. Every segment it stored so far is in the store's manifest; the successor's
    /// capture is to start at `successor_first_sequence` as `successor_generation`, numbers
    /// this bot will not reach before its grace is up.
    HandoffRequested { recording_id: String, last_sequence: u64, successor_first_sequence: u64, successor_generation: u32 },
    /// The bot gave up waiting for an answer to its `HandoffRequested` and finishes the
    /// recording itself: a successor assigned meanwhile is to be called off.
    HandoffWithdrawn { recording_id: String },
    /// The bot is done with its recording and about to exit.
    Finished { recording_id: String, outcome: Outcome },
}

impl BotMessage {
    /// Every `kind`, for metrics that show each one from the start.
    pub const KINDS: [&'static str; 10] = [
        "hello",
        "heartbeat",
        "ready",
        "state_changed",
        "timeline",
        "segment_stored",
        "log",
        "handoff_requested",
        "handoff_withdrawn",
        "finished",
    ];

    /// The message's type as it is tagged on the wire (`hello`, `heartbeat`, …): a closed set,
    /// fit for a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            BotMessage::Hello { .. } => "hello",
            BotMessage::Heartbeat { .. } => "heartbeat",
            BotMessage::Ready => "ready",
            BotMessage::StateChanged { .. } => "state_changed",
            BotMessage::Timeline { .. } => "timeline",
            BotMessage::SegmentStored { .. } => "segment_stored",
            BotMessage::Log { .. } => "log",
            BotMessage::HandoffRequested { .. } => "handoff_requested",
            BotMessage::HandoffWithdrawn { .. } => "handoff_withdrawn",
            BotMessage::Finished { .. } => "finished",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Warn,
    Error,
}

/// How a bot's recording ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    Completed {
        summary: Box<Summary>,
    },
    Failed {
        sub_code: Option<SubCode>,
        code: String,
        message: String,
    },
    /// The bot handed the recording over to `successor` (which finishes it) and stored what it
    /// recorded up to `last_sequence`.
    HandedOff {
        successor: String,
        last_sequence: u64,
        upload: Option<UploadStats>,
    },
}

/// What the controller says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControllerMessage {
    /// First message on a connection opened with a launch token (an ECS task's, which is
    /// visible to anyone who can call DescribeTasks, single-use and short-lived): the bot's id
    /// and its own token, which it dials with from then on.
    Welcome { bot_id: String, token: String },
    /// Record this meeting. Bots are single-use: one `Assign` per bot. Boxed: the other
    /// messages are small, and every connected bot's queue holds slots of this enum's size.
    Assign(Box<Assignment>),
    /// Finish the recording now (`stopped_by_api`).
    Stop { recording_id: String },
    /// An idle bot is no longer needed: exit. A busy bot ignores it.
    Retire,
    /// `successor` takes the recording over: record on until told `HandOver`.
    HandoffAccepted { recording_id: String, successor: String },
    /// No successor (no warm bot, or handoffs are off): finish the recording now, as a signal
    /// does.
    HandoffRefused { recording_id: String, reason: String },
    /// The successor's first segment is stored: leave the meeting, store what is left, exit.
    HandOver { recording_id: String },
    /// To a successor: a segment its predecessor stored after the handoff began.
    Inherited { recording_id: String, segment: ManifestSegment },
    /// To a successor: its predecessor is done (or gone); nothing more will be inherited.
    PredecessorDone { recording_id: String },
}

/// One recording handed to a warm bot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub recording_id: String,
    pub meeting_url: String,
    pub bot_name: String,
    pub recipe: Option<Recipe>,
    pub max_duration_secs: Option<u64>,
    /// Set when this bot carries on another bot's recording rather than starting one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuation: Option<Continuation>,
}

/// Where a successor picks a recording up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Continuation {
    pub from_bot: String,
    /// Its capture's first segment number: past every number the predecessor uses.
    pub first_sequence: u64,
    /// Its capture generation (`init_<generation>.mp4`): past the predecessor's.
    pub generation: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_by_type() {
        let hello = BotMessage::Hello { bot_id: "b1".into(), protocol: PROTOCOL_VERSION, ready: true, recording_id: None };
        let v = serde_json::to_value(&hello).unwrap();
        assert_eq!(v["type"], "hello");
        assert_eq!(hello.kind(), "hello", "the metric label is the wire tag");
        assert!(BotMessage::KINDS.contains(&BotMessage::Ready.kind()) && BotMessage::KINDS.contains(&hello.kind()));
        assert_eq!(serde_json::from_value::<BotMessage>(v).unwrap(), hello);

        let stop = ControllerMessage::Stop { recording_id: "r1".into() };
        assert_eq!(serde_json::to_value(&stop).unwrap(), serde_json::json!({"type": "stop", "recording_id": "r1"}));
    }

    #[test]
    fn assignment_round_trips_with_an_inline_recipe() {
        let recipe = Recipe::from_json(r##"{"name":"x","steps":[{"click":"#join"}],"ended_when":".end"}"##).unwrap();
        let msg = ControllerMessage::Assign(Box::new(Assignment {
            recording_id: "r1".into(),
            meeting_url: "https://meet.example.com/a".into(),
            bot_name: "Rec".into(),
            recipe: Some(recipe),
            max_duration_secs: Some(3600),
            continuation: None,
        }));
        let text = serde_json::to_string(&msg).unwrap();
        assert_eq!(serde_json::from_str::<ControllerMessage>(&text).unwrap(), msg);
    }
}
