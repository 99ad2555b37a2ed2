//! A recording that changes bots (`crate::handoff`): the predecessor's end (leave, store what is
//! left, no MP4: the successor makes it), and the successor's start (the store's manifest and
//! timeline as the predecessor left them) and finish (the predecessor's segments fetched, one
//! MP4 of the whole meeting).
//!
//! It must not decide whether a handoff happens (the agent and `crate::handoff` do) nor move
//! the recording's status: the predecessor's part ends without one.

use std::time::Duration;

use recfleet_media::{EVENTS, MANIFEST, PLAYLIST};
use recfleet_proto::{EventKind, Manifest, ManifestSegment, OutputPaths, RecordingStatus, SubCode, Summary, Timeline};
use recfleet_storage::{recording_key, ObjectStore, Store};

use super::Job;
use crate::capture::Capture;
use crate::session::Session;
use crate::spool::Spool;
use crate::upload::{merge_generations, Uploader};
use crate::watch::End;

/// How long a successor at its end waits for its predecessor to be done storing.
const PREDECESSOR_WAIT: Duration = Duration::from_secs(30);
/// Reads of the store's manifest a successor tries before it starts without one.
const READ_ATTEMPTS: u32 = 3;

/// The store's manifest and timeline of a recording another bot began; an empty manifest (and
/// a warning) when the store has none or cannot be read.
pub(super) async fn read_earlier(store: &Store, recording_id: &str) -> (Manifest, Option<Timeline>) {
    let mut manifest = None;
    for attempt in 1..=READ_ATTEMPTS {
        match store.get(&recording_key(recording_id, MANIFEST)).await {
            Ok(Some(bytes)) => match serde_json::from_slice::<Manifest>(&bytes) {
                Ok(m) => manifest = Some(m),
                Err(err) => tracing::warn!(error = %err, "the predecessor's manifest does not parse"),
            },
            Ok(None) => tracing::warn!("the store has no manifest of the predecessor's"),
            Err(err) if attempt < READ_ATTEMPTS => {
                tracing::debug!(error = %err, attempt, "cannot read the predecessor's manifest yet");
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
            Err(err) => tracing::warn!(error = %err, "cannot read the predecessor's manifest; its segments are found at the end"),
        }
        break;
    }
    let timeline = match store.get(&recording_key(recording_id, EVENTS)).await {
        Ok(Some(bytes)) => serde_json::from_slice::<Timeline>(&bytes).ok(),
        _ => None,
    };
    let manifest = manifest.unwrap_or_else(|| Manifest { recording_id: recording_id.to_string(), ..Manifest::default() });
    tracing::info!(segments = manifest.segments.len(), timeline = timeline.is_some(), "carrying on the recording");
    (manifest, timeline)
}

/// Pure: the whole recording of a successor: its predecessor's segments (the store's manifest
/// as it was left, then those stored after), then its own, each once, in order.
pub fn merge_manifests(earlier: &Manifest, inherited: &[ManifestSegment], own: &Manifest) -> Manifest {
    let mut whole = Manifest {
        recording_id: own.recording_id.clone(),
        init: earlier.init.clone().or_else(|| own.init.clone()),
        complete: own.complete,
        generations: merge_generations(&earlier.generations, own.generations.clone()),
        ..Manifest::default()
    };
    let inits = earlier.inits.iter().chain(&own.inits).chain(inherited.iter().filter(|s| recfleet_media::is_init(&s.name)));
    for init in inits {
        whole.add_init(init.clone());
    }
    let media = earlier.segments.iter().chain(inherited.iter().filter(|s| !recfleet_media::is_init(&s.name))).chain(&own.segments);
    for seg in media {
        if !whole.segments.iter().any(|s| s.name == seg.name) {
            whole.segments.push(seg.clone());
        }
    }
    whole.segments.sort_by_key(|s| s.sequence);
    whole
}

impl Job<'_> {
    /// The predecessor's end: the successor records on, so this bot stops its capture, leaves,
    /// stores what is left, and makes no MP4 and no status change. Also a successor's whose
    /// handoff was called off (`successor` is `None`): the first bot finishes the recording.
    pub(super) async fn hand_over(
        &self,
        capture: Capture,
        session: Session,
        end: End,
        mut spool: Spool,
        uploader: Option<Uploader>,
        successor: Option<&str>,
    ) -> Summary {
        let stats = capture.stats_handle();
        self.stop_in_time(capture, session, &end).await;
        let mut last = spool.scan().unwrap_or_else(|err| {
            tracing::warn!(error = %err, "cannot read the playlist a last time");
            Vec::new()
        });
        last.extend(spool.adopt_orphans(u64::MAX));
        if let Some(up) = &uploader {
            last.iter().for_each(|seg| up.closed(seg));
        }
        let last_sequence = spool.manifest().segments.last().map_or(0, |s| s.sequence);
        match successor {
            Some(successor) => {
                tracing::info!(%successor, last_sequence, detail = %end.detail, "handed over; storing what is left");
                self.journal.record(EventKind::HandedOff { to_bot: successor.to_string(), last_sequence });
            }
            None => tracing::info!(last_sequence, "the handoff was called off; the first bot finishes the recording"),
        }
        let upload = match uploader {
            Some(up) => Some(up.finish(&[]).await),
            None => None,
        };
        let path = |name: &str| self.out_dir.join(name).to_string_lossy().into_owned();
        let stats = stats.lock().expect("stats lock").clone();
        Summary {
            recording_id: self.cfg.recording_id.clone(),
            status: RecordingStatus::Recording,
            sub_code: SubCode::StoppedBySignal,
            duration_secs: spool.manifest().duration_secs(),
            segments: spool.manifest().segments.len(),
            paths: OutputPaths {
                dir: self.out_dir.to_string_lossy().into_owned(),
                mp4: None,
                playlist: path(PLAYLIST),
                manifest: path(MANIFEST),
                events: path(EVENTS),
            },
            capture: Some(stats),
            upload,
        }
    }

    /// The successor's whole recording, to make the MP4 from: once the predecessor is done
    /// storing (or has had its time), what it stored and this bot lacks is fetched from the
    /// store and checked against its hash. A file that cannot be fetched is left out, with a
    /// warning: the MP4 covers the rest.
    pub(super) async fn with_predecessor(&self, own: &Manifest, store: &Store) -> Result<Manifest, String> {
        let link = self.cfg.handoff.as_ref();
        if let Some(link) = link {
            if !link.wait_predecessor(PREDECESSOR_WAIT).await {
                tracing::warn!(
                    wait_secs = PREDECESSOR_WAIT.as_secs(),
                    "the predecessor is not done storing; finalizing with what it stored"
                );
            }
        }
        let earlier = self.upload.as_ref().and_then(|u| u.seed.clone()).unwrap_or_default();
        let inherited = link.map(|l| l.inherited()).unwrap_or_default();
        let mut whole = merge_manifests(&earlier, &inherited, own);
        let mut missing = Vec::new();
        let files: Vec<ManifestSegment> = whole.init.iter().chain(&whole.inits).chain(&whole.segments).cloned().collect();
        for file in files {
            let path = self.out_dir.join(&file.name);
            if path.exists() {
                continue;
            }
            let fetched = match store.get_to_file(&recording_key(&self.cfg.recording_id, &file.name), &path).await {
                Ok(true) => recfleet_media::hash_file(&path).map_err(|e| e.to_string()).and_then(|(_, sha)| {
                    (sha == file.sha256).then_some(()).ok_or_else(|| format!("its sha256 is {sha}, not {}", file.sha256))
                }),
                Ok(false) => Err("not in the store".to_string()),
                Err(err) => Err(err.to_string()),
            };
            if let Err(reason) = fetched {
                tracing::warn!(file = %file.name, %reason, "cannot fetch the predecessor's file; the MP4 goes without it");
                let _ = std::fs::remove_file(&path);
                missing.push(file.name);
            }
        }
        whole.segments.retain(|s| !missing.contains(&s.name) && !missing.iter().any(|m| m == s.init_name()));
        if whole.segments.is_empty() {
            return Err("no segment of the recording is at hand".into());
        }
        let fetched = whole.segments.len().saturating_sub(own.segments.len());
        tracing::info!(fetched, segments = whole.segments.len(), "the predecessor's part is at hand; one MP4 of the whole meeting");
        Ok(whole)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recfleet_proto::CaptureGeneration;

    #[test]
    fn a_successor_makes_one_recording_of_both_parts() {
        let seg = |n: u64| recfleet_media::describe(&recfleet_media::segment_name(n), 2.0, 10, format!("{n}"));
        let init = |name: &str| recfleet_media::describe(name, 0.0, 5, "i".into());
        let generation = |g: u32, first: u64| CaptureGeneration {
            generation: g,
            init: recfleet_media::init_name(g),
            first_sequence: first,
            first_frame_unix_ms: 1000 * first as i64,
        };
        let earlier = Manifest {
            recording_id: "r".into(),
            init: Some(init("init.mp4")),
            segments: vec![seg(1), seg(2)],
            generations: vec![generation(1, 1)],
            ..Manifest::default()
        };
        let second = |n: u64| ManifestSegment { init: Some("init_2.mp4".into()), discontinuity: n == 20, ..seg(n) };
        let own = Manifest {
            recording_id: "r".into(),
            segments: vec![second(20), second(21)],
            inits: vec![init("init_2.mp4")],
            generations: vec![generation(2, 20)],
            complete: true,
            ..Manifest::default()
        };
        let whole = merge_manifests(&earlier, &[seg(3), seg(2), seg(4)], &own);
        let names: Vec<u64> = whole.segments.iter().map(|s| s.sequence).collect();
        assert_eq!(names, [1, 2, 3, 4, 20, 21], "each once, in order");
        assert_eq!(whole.init.as_ref().map(|i| i.name.as_str()), Some("init.mp4"));
        assert_eq!(whole.inits.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["init_2.mp4"]);
        assert_eq!(whole.generations.iter().map(|g| g.generation).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(recfleet_media::parts(&whole), [0..4, 4..6], "the successor's part is cut from its predecessor's");
        assert!(whole.complete);
    }
}
