//! A recording's lifecycle (status, terminal sub-code), its segment manifest and the bot's
//! closing summary.
//!
//! The status machine is pure: `RecordingStatus::next` decides, callers do the I/O. It only
//! moves forward, so a repeated stop or a late event after the end is harmless.

use serde::{Deserialize, Serialize};

/// Where a recording is in its life. `DESIGN.md` fixes the names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingStatus {
    Queued,
    Joining,
    WaitingRoom,
    Recording,
    Stopping,
    Finalizing,
    Completed,
    Failed,
}

/// What can happen to a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingEvent {
    /// A bot took the recording and started joining.
    Assigned,
    /// The page shows the waiting room.
    WaitingRoomEntered,
    /// The bot is in the call and the first frame is captured.
    RecordingStarted,
    /// Someone asked to stop (API, signal).
    StopRequested,
    /// The meeting is over for the bot and media was captured: finalize it.
    EndedWithMedia,
    /// The meeting is over for the bot and nothing was captured (join failed, denied...).
    EndedWithoutMedia,
    /// The MP4 is made and checked.
    Finalized,
    /// Finalizing failed and nothing playable could be made.
    FinalizeFailed,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("recording cannot go from {from:?} on {event:?}")]
pub struct TransitionError {
    pub from: RecordingStatus,
    pub event: RecordingEvent,
}

impl RecordingEvent {
    pub const ALL: [RecordingEvent; 8] = [
        RecordingEvent::Assigned,
        RecordingEvent::WaitingRoomEntered,
        RecordingEvent::RecordingStarted,
        RecordingEvent::StopRequested,
        RecordingEvent::EndedWithMedia,
        RecordingEvent::EndedWithoutMedia,
        RecordingEvent::Finalized,
        RecordingEvent::FinalizeFailed,
    ];

    /// The event as logs and metric labels spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingEvent::Assigned => "assigned",
            RecordingEvent::WaitingRoomEntered => "waiting_room_entered",
            RecordingEvent::RecordingStarted => "recording_started",
            RecordingEvent::StopRequested => "stop_requested",
            RecordingEvent::EndedWithMedia => "ended_with_media",
            RecordingEvent::EndedWithoutMedia => "ended_without_media",
            RecordingEvent::Finalized => "finalized",
            RecordingEvent::FinalizeFailed => "finalize_failed",
        }
    }
}

impl RecordingStatus {
    pub const ALL: [RecordingStatus; 8] = [
        RecordingStatus::Queued,
        RecordingStatus::Joining,
        RecordingStatus::WaitingRoom,
        RecordingStatus::Recording,
        RecordingStatus::Stopping,
        RecordingStatus::Finalizing,
        RecordingStatus::Completed,
        RecordingStatus::Failed,
    ];

    /// The status as the API, logs and metric labels spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingStatus::Queued => "queued",
            RecordingStatus::Joining => "joining",
            RecordingStatus::WaitingRoom => "waiting_room",
            RecordingStatus::Recording => "recording",
            RecordingStatus::Stopping => "stopping",
            RecordingStatus::Finalizing => "finalizing",
            RecordingStatus::Completed => "completed",
            RecordingStatus::Failed => "failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, RecordingStatus::Completed | RecordingStatus::Failed)
    }

    /// The one place that says which transitions exist.
    pub fn next(self, event: RecordingEvent) -> Result<RecordingStatus, TransitionError> {
        use RecordingEvent as E;
        use RecordingStatus as S;
        let refused = Err(TransitionError { from: self, event });
        match (self, event) {
            (S::Queued, E::Assigned) => Ok(S::Joining),
            (S::Queued, E::StopRequested) => Ok(S::Stopping),
            (S::Queued, E::EndedWithoutMedia) => Ok(S::Failed),
            (S::Queued, E::WaitingRoomEntered | E::RecordingStarted | E::EndedWithMedia) => refused,
            (S::Queued, E::Finalized | E::FinalizeFailed) => refused,

            (S::Joining, E::WaitingRoomEntered) => Ok(S::WaitingRoom),
            (S::Joining | S::WaitingRoom, E::RecordingStarted) => Ok(S::Recording),
            (S::WaitingRoom, E::WaitingRoomEntered) => Ok(S::WaitingRoom),
            (S::Joining | S::WaitingRoom | S::Recording, E::StopRequested) => Ok(S::Stopping),
            (S::Joining | S::WaitingRoom, E::EndedWithoutMedia) => Ok(S::Failed),
            (S::Joining | S::WaitingRoom, E::EndedWithMedia) => refused,
            (S::Joining | S::WaitingRoom | S::Recording, E::Assigned) => refused,
            (S::Joining | S::WaitingRoom | S::Recording, E::Finalized | E::FinalizeFailed) => refused,

            (S::Recording, E::EndedWithMedia) => Ok(S::Finalizing),
            (S::Recording, E::EndedWithoutMedia) => Ok(S::Failed),
            (S::Recording, E::WaitingRoomEntered | E::RecordingStarted) => refused,

            (S::Stopping, E::StopRequested) => Ok(S::Stopping),
            (S::Stopping, E::EndedWithMedia) => Ok(S::Finalizing),
            (S::Stopping, E::EndedWithoutMedia) => Ok(S::Failed),
            // What the bot saw before the stop reached it: the stop still wins.
            (S::Stopping, E::WaitingRoomEntered | E::RecordingStarted) => Ok(S::Stopping),
            (S::Stopping, E::Assigned) => refused,
            (S::Stopping, E::Finalized | E::FinalizeFailed) => refused,

            (S::Finalizing, E::Finalized) => Ok(S::Completed),
            (S::Finalizing, E::FinalizeFailed) => Ok(S::Failed),
            (S::Finalizing, E::StopRequested) => Ok(S::Finalizing),
            (S::Finalizing, E::Assigned | E::WaitingRoomEntered | E::RecordingStarted) => refused,
            (S::Finalizing, E::EndedWithMedia | E::EndedWithoutMedia) => refused,

            // Terminal: a late stop is harmless, anything else is a bug upstream.
            (S::Completed | S::Failed, E::StopRequested) => Ok(self),
            (S::Completed | S::Failed, E::Assigned | E::WaitingRoomEntered | E::RecordingStarted) => refused,
            (S::Completed | S::Failed, E::EndedWithMedia | E::EndedWithoutMedia) => refused,
            (S::Completed | S::Failed, E::Finalized | E::FinalizeFailed) => refused,
        }
    }
}

/// Why a recording ended. A closed list: `docs/BOT.md` documents each one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubCode {
    /// The recipe's `ended_when` showed, or the page logged `RECFLEET_END`.
    MeetingEnded,
    /// Stopped through the controller's API.
    StoppedByApi,
    /// Stopped by SIGINT or SIGTERM (standalone, or a host scaled in or redeployed).
    StoppedBySignal,
    /// The bot's host was taken back (a Fargate Spot interruption, an instance's termination
    /// notice); what it stored is the recording.
    Preempted,
    /// `max_duration_secs` was reached.
    MaxDuration,
    /// Every other participant left.
    EveryoneLeft,
    /// The meeting page closed itself.
    PageClosed,
    /// The meeting page's renderer crashed.
    PageCrashed,
    /// The page could not be loaded or a join step timed out, after every retry.
    JoinFailed,
    /// The meeting refused the bot.
    JoinDenied,
    /// Nobody admitted the bot from the waiting room in time.
    WaitingRoomTimeout,
    /// The bot was removed from the meeting.
    Kicked,
    /// The bot died; what it had stored is the recording.
    BotCrashed,
    /// Segments could not be stored.
    UploadFailed,
    /// The local disk budget ran out.
    DiskFull,
    /// The capture (FFmpeg, the display or the audio server) failed mid-way.
    CaptureFailed,
    /// The meeting URL was refused before any attempt.
    InvalidUrl,
}

impl SubCode {
    pub fn as_str(self) -> &'static str {
        match self {
            SubCode::MeetingEnded => "meeting_ended",
            SubCode::StoppedByApi => "stopped_by_api",
            SubCode::StoppedBySignal => "stopped_by_signal",
            SubCode::Preempted => "preempted",
            SubCode::MaxDuration => "max_duration",
            SubCode::EveryoneLeft => "everyone_left",
            SubCode::PageClosed => "page_closed",
            SubCode::PageCrashed => "page_crashed",
            SubCode::JoinFailed => "join_failed",
            SubCode::JoinDenied => "join_denied",
            SubCode::WaitingRoomTimeout => "waiting_room_timeout",
            SubCode::Kicked => "kicked",
            SubCode::BotCrashed => "bot_crashed",
            SubCode::UploadFailed => "upload_failed",
            SubCode::DiskFull => "disk_full",
            SubCode::CaptureFailed => "capture_failed",
            SubCode::InvalidUrl => "invalid_url",
        }
    }
}

impl std::fmt::Display for SubCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stored file of the recording, as `manifest.json` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestSegment {
    pub name: String,
    /// 1 for `seg_000001.m4s`; 0 for `init.mp4`.
    pub sequence: u64,
    pub duration_secs: f64,
    pub bytes: u64,
    pub sha256: String,
    /// The init segment this media segment needs, when it is not `init.mp4`: a restarted
    /// capture writes `init_<generation>.mp4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    /// The first segment after a break in the capture (a restarted encoder): its timestamps
    /// start again, so players and the finalizer must not splice across it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discontinuity: bool,
}

impl ManifestSegment {
    /// The init segment this segment is decoded with.
    pub fn init_name(&self) -> &str {
        self.init.as_deref().unwrap_or(INIT_SEGMENT_NAME)
    }
}

/// The first capture's init segment; each restarted capture adds `init_<generation>.mp4`.
pub const INIT_SEGMENT_NAME: &str = "init.mp4";

/// One run of the encoder within a recording: 1 for the first, one more for each restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptureGeneration {
    pub generation: u32,
    /// Its init segment's name.
    pub init: String,
    /// The number of its first segment.
    pub first_sequence: u64,
    /// Wall-clock time of its first frame, in Unix milliseconds: the finalizer keeps the time
    /// between two generations, so the MP4's clock stays the meeting's.
    pub first_frame_unix_ms: i64,
}

/// `manifest.json`: every segment with duration, size and hash, kept current while recording.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub recording_id: String,
    pub init: Option<ManifestSegment>,
    pub segments: Vec<ManifestSegment>,
    /// True once the playlist has `EXT-X-ENDLIST` and every segment is listed.
    pub complete: bool,
    /// The init segments of restarted captures (`init_2.mp4`...), hashed like the rest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inits: Vec<ManifestSegment>,
    /// Each capture generation, in order (absent in manifests written before restarts existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generations: Vec<CaptureGeneration>,
}

impl Manifest {
    pub fn duration_secs(&self) -> f64 {
        self.segments.iter().map(|s| s.duration_secs).sum()
    }

    /// The generation that recorded segment number `sequence`, when the manifest says.
    pub fn generation_of(&self, sequence: u64) -> Option<&CaptureGeneration> {
        self.generations.iter().rev().find(|g| g.first_sequence <= sequence)
    }

    /// Adds a media segment that `generation` recorded: after the first generation it names
    /// its init, and the generation's first segment is marked as a break.
    pub fn push_segment(&mut self, mut segment: ManifestSegment, generation: &CaptureGeneration) {
        if generation.generation > 1 {
            segment.discontinuity = self.segments.last().is_none_or(|s| s.init_name() != generation.init);
            segment.init = Some(generation.init.clone());
        }
        self.segments.push(segment);
    }

    /// Adds (or replaces) an init segment: `init.mp4` is `init`, a restarted capture's go to
    /// `inits`.
    pub fn add_init(&mut self, init: ManifestSegment) {
        if init.name == INIT_SEGMENT_NAME {
            self.init = Some(init);
        } else {
            self.inits.retain(|i| i.name != init.name);
            self.inits.push(init);
        }
    }

    /// The init segment file called `name`, if the manifest lists it.
    pub fn init_named(&self, name: &str) -> Option<&ManifestSegment> {
        self.init.iter().chain(&self.inits).find(|s| s.name == name)
    }
}

/// Paths of a finished recording's outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputPaths {
    pub dir: String,
    pub mp4: Option<String>,
    pub playlist: String,
    pub manifest: String,
    pub events: String,
}

/// The bot's last stdout line: what happened, in one JSON object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub recording_id: String,
    pub status: RecordingStatus,
    pub sub_code: SubCode,
    pub duration_secs: f64,
    pub segments: usize,
    pub paths: OutputPaths,
    /// Encoder health over the whole recording.
    pub capture: Option<CaptureStats>,
    /// What reached the object store, when there is one.
    #[serde(default)]
    pub upload: Option<UploadStats>,
}

/// The uploader's progress: how much reached the store, what waits, how long it took.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UploadStats {
    /// Files stored (segments, the MP4), not counting the playlist and manifest updates.
    pub stored: u64,
    /// Files closed and waiting for the store.
    pub backlog: u64,
    pub backlog_bytes: u64,
    /// The longest the backlog got.
    pub peak_backlog: u64,
    /// Requests that failed (each is retried).
    pub failed_attempts: u64,
    /// Segment closed → stored.
    pub lag_ms_p50: Option<u64>,
    pub lag_ms_p99: Option<u64>,
    pub lag_ms_max: Option<u64>,
    /// At the end: files left only on the bot's disk (the drain deadline passed first).
    #[serde(default)]
    pub not_uploaded: Vec<String>,
}

/// What the encoder reported: the figures that tell a starved bot from a healthy one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CaptureStats {
    pub frames: u64,
    pub dropped_frames: u64,
    pub duplicated_frames: u64,
    /// Lowest speed seen after the first seconds (1.0 = realtime).
    pub min_speed: Option<f64>,
    pub last_speed: Option<f64>,
    /// When `frames` was last updated, in ms since the capture started (the bot's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_ms: Option<u64>,
    /// Frames encoded per second since the previous heartbeat (heartbeats only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fps: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use RecordingEvent as E;
    use RecordingStatus as S;

    const ALL_STATES: [S; 8] = S::ALL;
    const ALL_EVENTS: [E; 8] = E::ALL;

    /// Every allowed transition; every pair not listed here must be refused.
    const ALLOWED: &[(S, E, S)] = &[
        (S::Queued, E::Assigned, S::Joining),
        (S::Queued, E::StopRequested, S::Stopping),
        (S::Queued, E::EndedWithoutMedia, S::Failed),
        (S::Joining, E::WaitingRoomEntered, S::WaitingRoom),
        (S::Joining, E::RecordingStarted, S::Recording),
        (S::Joining, E::StopRequested, S::Stopping),
        (S::Joining, E::EndedWithoutMedia, S::Failed),
        (S::WaitingRoom, E::WaitingRoomEntered, S::WaitingRoom),
        (S::WaitingRoom, E::RecordingStarted, S::Recording),
        (S::WaitingRoom, E::StopRequested, S::Stopping),
        (S::WaitingRoom, E::EndedWithoutMedia, S::Failed),
        (S::Recording, E::StopRequested, S::Stopping),
        (S::Recording, E::EndedWithMedia, S::Finalizing),
        (S::Recording, E::EndedWithoutMedia, S::Failed),
        (S::Stopping, E::StopRequested, S::Stopping),
        (S::Stopping, E::WaitingRoomEntered, S::Stopping),
        (S::Stopping, E::RecordingStarted, S::Stopping),
        (S::Stopping, E::EndedWithMedia, S::Finalizing),
        (S::Stopping, E::EndedWithoutMedia, S::Failed),
        (S::Finalizing, E::Finalized, S::Completed),
        (S::Finalizing, E::FinalizeFailed, S::Failed),
        (S::Finalizing, E::StopRequested, S::Finalizing),
        (S::Completed, E::StopRequested, S::Completed),
        (S::Failed, E::StopRequested, S::Failed),
    ];

    #[test]
    fn every_pair_is_allowed_or_refused_as_the_table_says() {
        for from in ALL_STATES {
            for event in ALL_EVENTS {
                let expected = ALLOWED.iter().find(|(f, e, _)| *f == from && *e == event).map(|(_, _, to)| *to);
                match (from.next(event), expected) {
                    (Ok(to), Some(want)) => assert_eq!(to, want, "{from:?} on {event:?}"),
                    (Err(err), None) => assert_eq!(err, TransitionError { from, event }),
                    (got, want) => panic!("{from:?} on {event:?}: got {got:?}, table says {want:?}"),
                }
            }
        }
    }

    #[test]
    fn terminal_states_never_leave() {
        for from in [S::Completed, S::Failed] {
            for event in ALL_EVENTS {
                if let Ok(to) = from.next(event) {
                    assert_eq!(to, from);
                }
            }
        }
    }

    #[test]
    fn statuses_and_events_serialize_as_their_names() {
        for status in ALL_STATES {
            assert_eq!(serde_json::to_value(status).unwrap(), serde_json::Value::String(status.as_str().into()));
        }
        for event in ALL_EVENTS {
            assert_eq!(serde_json::to_value(event).unwrap(), serde_json::Value::String(event.as_str().into()));
        }
    }

    #[test]
    fn sub_codes_serialize_as_their_names() {
        for code in [SubCode::MeetingEnded, SubCode::WaitingRoomTimeout, SubCode::StoppedBySignal, SubCode::DiskFull] {
            assert_eq!(serde_json::to_value(code).unwrap(), serde_json::Value::String(code.as_str().into()));
        }
    }
}
