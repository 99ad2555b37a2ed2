//! The recording's timeline as it happens: every event is logged, kept in order, and written to
//! `events.json` at once (temp file + rename), so even a bot killed mid-meeting leaves a
//! readable timeline behind.
//!
//! This module owns `events.json`; it must not decide what happens next.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use recfleet_proto::{EventKind, Timeline};
use time::OffsetDateTime;

use crate::spool::write_atomically;

#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    timeline: Mutex<Timeline>,
}

impl Journal {
    pub fn new(dir: &Path, recording_id: &str, started_at: OffsetDateTime) -> Self {
        Self { path: dir.join("events.json"), timeline: Mutex::new(Timeline::new(recording_id, started_at)) }
    }

    pub fn record(&self, kind: EventKind) {
        self.record_at(OffsetDateTime::now_utc(), kind);
    }

    /// Records an event that happened at `at` (FFmpeg's first frame is known after the fact).
    pub fn record_at(&self, at: OffsetDateTime, kind: EventKind) {
        let json = {
            let mut timeline = self.timeline.lock().expect("journal lock");
            let event = timeline.push_at(at, kind);
            tracing::info!(event = ?event.kind, elapsed_ms = event.elapsed_ms, "timeline");
            serde_json::to_vec_pretty(&*timeline).expect("the timeline serializes")
        };
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
