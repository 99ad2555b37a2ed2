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

/// How long past its own threshold a restarted encoder gets to report a silence that goes on.
const RESTART_SILENCE_GRACE: Duration = Duration::from_secs(1);

/// Destinations put on one recording's timeline as `request_refused`; a page that asks for more
/// gets no more events (each rewrites `events.json`).
const MAX_REFUSED_EVENTS: usize = 32;

/// Puts the egress proxy's refusals on the timeline (`request_refused`, once per target, at most
/// `MAX_REFUSED_EVENTS`), until `done`.
pub(super) async fn watch_egress(
    mut refusals: tokio::sync::broadcast::Receiver<crate::egress::Refused>,
    journal: &Journal,
    done: &CancellationToken,
) {
    let mut seen = std::collections::HashSet::new();
    loop {
        let refused = tokio::select! {
            r = refusals.recv() => match r {
                Ok(refused) => refused,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            _ = done.cancelled() => return,
        };
        if seen.len() < MAX_REFUSED_EVENTS && seen.insert(refused.target.clone()) {
            journal.record(EventKind::RequestRefused { target: refused.target, reason: refused.reason.as_str().to_string() });
        }
    }
}

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
    // When the silence began, and, after an encoder restart during it, when the restart was
    // and by when the new encoder must report the silence for it to go on.
    let mut silent_since: Option<tokio::time::Instant> = None;
    let mut restarted: Option<(tokio::time::Instant, tokio::time::Instant)> = None;
    loop {
        let recheck = async {
            match restarted {
                Some((_, by)) => tokio::time::sleep_until(by).await,
                None => std::future::pending().await,
            }
        };
        let level = tokio::select! {
            Some(level) = levels.recv() => level,
            _ = recheck => {
                // The new encoder heard sound: the silence ended with the restart.
                let (at, _) = restarted.take().expect("set when rechecking");
                let silent_secs = silent_since.take().map_or(0.0, |since| (at - since).as_secs_f64());
                tracing::info!(silent_secs, "sound is back in the capture (since the encoder restarted)");
                journal.record(EventKind::CaptureSound { silent_secs });
                continue;
            }
            _ = done.cancelled() => return,
        };
        match level {
            AudioLevel::Silent if silent_since.is_none() => {
                let now = tokio::time::Instant::now();
                silent_since = Some(now.checked_sub(after).unwrap_or(now));
                tracing::warn!(
                    silent_secs = after.as_secs(),
                    "capture_silent: the recorded audio is digital silence while the bot is in the call; \
                     the sink or the page's audio is broken (the recording goes on)"
                );
                journal.record(EventKind::CaptureSilent { silent_secs: after.as_secs() });
            }
            // The same silence, reported again by an encoder that replaced the one that saw it
            // begin: one silence is one fault.
            AudioLevel::Silent => restarted = None,
            AudioLevel::Sound { silent_secs } => {
                (silent_since, restarted) = (None, None);
                tracing::info!(silent_secs, "sound is back in the capture");
                journal.record(EventKind::CaptureSound { silent_secs });
            }
            AudioLevel::EncoderStarted if silent_since.is_some() => {
                let now = tokio::time::Instant::now();
                restarted = Some((now, now + after + RESTART_SILENCE_GRACE));
            }
            AudioLevel::EncoderStarted => {}
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::journal::Silent;

    fn kinds(dir: &std::path::Path) -> Vec<String> {
        let timeline: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("events.json")).unwrap()).unwrap();
        timeline["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap().to_string()).collect()
    }

    /// An encoder restarted during a silence reports it again: still one fault. One restarted
    /// during a silence that then hears sound says nothing: the silence ends with the restart.
    #[tokio::test]
    async fn one_silence_is_one_fault_across_encoder_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path(), "r1", time::OffsetDateTime::now_utc(), Arc::new(Silent));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (done, after) = (CancellationToken::new(), Duration::from_millis(200));
        let script = async {
            for level in [AudioLevel::EncoderStarted, AudioLevel::Silent, AudioLevel::EncoderStarted, AudioLevel::Silent] {
                tx.send(level).unwrap();
            }
            tokio::time::sleep(after + RESTART_SILENCE_GRACE * 2).await;
            assert_eq!(kinds(dir.path()), ["capture_silent"], "the silence goes on in the new encoder");
            tx.send(AudioLevel::EncoderStarted).unwrap();
            tokio::time::sleep(after + RESTART_SILENCE_GRACE * 2).await;
            done.cancel();
        };
        tokio::join!(watch_audio(rx, &journal, after, &done), script);
        assert_eq!(kinds(dir.path()), ["capture_silent", "capture_sound"]);
    }
}
