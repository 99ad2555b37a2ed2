//! The recording's timeline as it happens: every event is logged, kept in order, and written to
//! `events.json` at once (temp file + rename), so even a bot killed mid-meeting leaves a
//! readable timeline behind.
//!
//! This module owns `events.json`; it must not decide what happens next.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use recfleet_proto::{EventKind, ManifestSegment, RecordingStatus, SubCode, Timeline};
use time::OffsetDateTime;

use crate::spool::write_atomically;

/// Who else hears about a recording as it goes: the controller, under the agent. Each call is
/// made from the recording's own task and must not block.
pub trait Reporter: Send + Sync + std::fmt::Debug {
    fn event(&self, _event: &recfleet_proto::Event) {}
    /// A file reached the store, `upload_lag_ms` after it was closed.
    fn segment(&self, _segment: &ManifestSegment, _upload_lag_ms: Option<u64>) {}
    /// The uploader's progress changed.
    fn upload(&self, _stats: &recfleet_proto::UploadStats) {}
    /// The capture started; its statistics can be read from `stats` while it runs.
    fn capture(&self, _stats: Arc<Mutex<recfleet_proto::CaptureStats>>) {}
    fn status(&self, _status: RecordingStatus, _sub_code: Option<SubCode>) {}
}

/// Tells nobody: the standalone bot.
#[derive(Debug, Default)]
pub struct Silent;

impl Reporter for Silent {}

#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    timeline: Mutex<Timeline>,
    reporter: Arc<dyn Reporter>,
}

impl Journal {
    pub fn new(dir: &Path, recording_id: &str, started_at: OffsetDateTime, reporter: Arc<dyn Reporter>) -> Self {
        Self { path: dir.join("events.json"), timeline: Mutex::new(Timeline::new(recording_id, started_at)), reporter }
    }

    /// Carries on a timeline another bot began (a handoff): its events stay first.
    pub fn resume(dir: &Path, timeline: Timeline, reporter: Arc<dyn Reporter>) -> Self {
        Self { path: dir.join("events.json"), timeline: Mutex::new(timeline), reporter }
    }

    pub fn reporter(&self) -> &dyn Reporter {
        self.reporter.as_ref()
    }

    pub fn reporter_arc(&self) -> Arc<dyn Reporter> {
        self.reporter.clone()
    }

    pub fn record(&self, kind: EventKind) {
        self.record_at(OffsetDateTime::now_utc(), kind);
    }

    /// Records an event that happened at `at` (FFmpeg's first frame is known after the fact).
    pub fn record_at(&self, at: OffsetDateTime, kind: EventKind) {
        let (json, event) = {
            let mut timeline = self.timeline.lock().expect("journal lock");
            let event = timeline.push_at(at, kind).clone();
            tracing::info!(event = ?event.kind, elapsed_ms = event.elapsed_ms, "timeline");
            (serde_json::to_vec_pretty(&*timeline).expect("the timeline serializes"), event)
        };
        self.reporter.event(&event);
        if let Err(err) = write_atomically(&self.path, &json) {
            tracing::warn!(error = %err, path = %self.path.display(), "cannot write events.json");
        }
    }

    pub fn snapshot(&self) -> Timeline {
        self.timeline.lock().expect("journal lock").clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
