//! What runs beside a recording's watch: the spool watch (segments closed, the manifest kept
//! current, the uploader fed, the disk checked) and the audio watch (digital silence reported).
//!
//! These report; they must not end the recording themselves (a full disk is signalled to the
//! watch, which ends it).

use std::path::PathBuf;
use std::time::Duration;

use recfleet_proto::{CaptureGeneration, EventKind};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::capture::AudioLevel;
use crate::journal::Journal;
use crate::spool::Spool;
use crate::upload::{self, Uploader};

/// How often the spool looks for newly closed segments.
const SPOOL_INTERVAL: Duration = Duration::from_millis(250);

/// Turns the capture's audio levels into the timeline's `capture_silent` and `capture_sound`
/// and a warning, until `done`. Digital silence in a call is a capture fault (a muted or broken
/// sink): it is reported and never a reason to leave (docs/FAULTS.md).
pub(super) async fn watch_audio(
    mut levels: tokio::sync::mpsc::UnboundedReceiver<AudioLevel>,
    journal: &Journal,
    after: Duration,
    done: &CancellationToken,
) {
    // An encoder restarted during a silence reports it again: one silence is one fault.
    let mut silent = false;
    loop {
        let level = tokio::select! {
            Some(level) = levels.recv() => level,
            _ = done.cancelled() => return,
        };
        match level {
            AudioLevel::Silent if !silent => {
                silent = true;
                tracing::warn!(
                    silent_secs = after.as_secs(),
                    "capture_silent: the recorded audio is digital silence while the bot is in the call; \
                     the sink or the page's audio is broken (the recording goes on)"
                );
                journal.record(EventKind::CaptureSilent { silent_secs: after.as_secs() });
            }
            AudioLevel::Silent => {}
            AudioLevel::Sound { silent_secs } => {
                silent = false;
                tracing::info!(silent_secs, "sound is back in the capture");
                journal.record(EventKind::CaptureSound { silent_secs });
            }
        }
    }
}

/// What the spool watch needs.
#[derive(Debug)]
pub(super) struct SpoolWatch<'a> {
    pub(super) dir: PathBuf,
    pub(super) recording_id: String,
    pub(super) journal: &'a Journal,
    pub(super) uploader: Option<&'a Uploader>,
    pub(super) min_free_bytes: u64,
    /// Set with the reason when the disk cannot take more.
    pub(super) disk_full: tokio::sync::watch::Sender<Option<String>>,
    /// The first capture, and each restarted one as it starts.
    pub(super) first: CaptureGeneration,
    pub(super) generations: tokio::sync::mpsc::UnboundedReceiver<CaptureGeneration>,
}

/// Scans the spool every `SPOOL_INTERVAL` until told to stop, keeping `manifest.json`
/// current, handing each closed segment to the uploader, noting the first segment on the
/// timeline, and watching the disk; hands the spool back for the end.
pub(super) fn spawn_spool_watch(w: SpoolWatch<'_>) -> (oneshot::Sender<()>, impl std::future::Future<Output = Spool> + '_) {
    let (tx, mut rx) = oneshot::channel::<()>();
    let task = async move {
        let mut spool = Spool::new(&w.dir, &w.recording_id, w.first.clone());
        let mut generations = w.generations;
        let mut first = true;
        let mut tick = tokio::time::interval(SPOOL_INTERVAL);
        loop {
            let stop = tokio::select! {
                _ = tick.tick() => false,
                _ = &mut rx => true,
            };
            let mut new = Vec::new();
            while let Ok(next) = generations.try_recv() {
                new.extend(spool.begin_generation(next));
            }
            match spool.scan() {
                Ok(found) => new.extend(found),
                Err(err) => tracing::warn!(error = %err, "spool scan failed"),
            }
            if let Some(seg) = new.iter().find(|s| s.sequence > 0) {
                if first {
                    first = false;
                    w.journal.record(EventKind::FirstSegment { name: seg.name.clone() });
                }
            }
            for seg in new {
                tracing::debug!(segment = %seg.name, bytes = seg.bytes, "segment closed");
                if let Some(up) = w.uploader {
                    up.closed(&seg);
                }
            }
            let full = match w.uploader {
                Some(up) => up.disk_check(),
                None => upload::disk_check(&w.dir, 0, u64::MAX, w.min_free_bytes),
            };
            if let Some(reason) = full {
                if w.disk_full.borrow().is_none() {
                    tracing::error!(%reason, "the disk cannot take more; stopping the recording cleanly");
                    let _ = w.disk_full.send(Some(reason));
                }
            }
            if stop {
                break;
            }
        }
        spool
    };
    (tx, task)
}
