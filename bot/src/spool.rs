//! The local spool: the folder FFmpeg writes segments into. This module notices each closed
//! segment (it appears in its capture's playlist only once FFmpeg has renamed it into place),
//! hashes it, and keeps `manifest.json` and `index.m3u8` current, so the folder is a complete,
//! checkable, playable recording at any moment. A restarted capture is a new generation: its
//! segments name their init segment, and the first is marked as a discontinuity.
//!
//! It reads what FFmpeg wrote and never changes a segment. Uploading is a later stage that
//! consumes what `scan` returns.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::capture::capture_playlist;
use recfleet_proto::{CaptureGeneration, Manifest, ManifestSegment};

pub use recfleet_media::{MANIFEST, PLAYLIST};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the playlist {path} does not parse: {reason}")]
    Playlist { path: PathBuf, reason: String },
}

/// Follows one recording's folder.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    manifest: Manifest,
    seen: HashSet<String>,
    ended: bool,
    /// The capture generation whose playlist is read.
    generation: CaptureGeneration,
}

impl Spool {
    /// Follows the first capture.
    pub fn new(dir: &Path, recording_id: &str, first: CaptureGeneration) -> Self {
        let mut spool = Self::empty(dir, recording_id, first.clone());
        spool.manifest.generations.push(first);
        spool
    }

    fn empty(dir: &Path, recording_id: &str, generation: CaptureGeneration) -> Self {
        Self {
            dir: dir.to_path_buf(),
            manifest: Manifest { recording_id: recording_id.to_string(), ..Manifest::default() },
            seen: HashSet::new(),
            ended: false,
            generation,
        }
    }

    /// Picks up a folder a recording left behind (a dead bot, an expired drain): what its
    /// manifest lists, then whatever its last encoder closed after, listed or not. Returns the
    /// spool and every closed file in upload order (each init before the first segment that
    /// needs it).
    pub fn reopen(dir: &Path, recording_id: &str) -> Result<(Self, Vec<ManifestSegment>), SpoolError> {
        let path = dir.join(MANIFEST);
        let earlier: Option<Manifest> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(SpoolError::Read { path, source }),
        };
        let last = earlier.as_ref().and_then(|m| m.generations.last().cloned());
        let mut spool = Self::empty(dir, recording_id, last.unwrap_or_else(|| first_generation(0)));
        let mut closed: Vec<ManifestSegment> = Vec::new();
        if let Some(m) = earlier {
            for seg in &m.segments {
                if !closed.iter().any(|c| c.name == seg.init_name()) {
                    closed.extend(m.init_named(seg.init_name()).cloned());
                }
                spool.seen.insert(seg.name.clone());
                closed.push(seg.clone());
            }
            spool.manifest = Manifest { recording_id: recording_id.to_string(), ..m };
        }
        closed.extend(spool.scan()?);
        closed.extend(spool.adopt_orphans(u64::MAX));
        Ok((spool, closed))
    }

    /// Moves on to a restarted capture's playlist, after a last scan of the one that died and
    /// the adoption of what it closed but did not live to list. Returns the segments found.
    /// Never fails: what cannot be read is logged, and the new capture is followed regardless.
    pub fn begin_generation(&mut self, next: CaptureGeneration) -> Vec<ManifestSegment> {
        let mut last = self.scan().unwrap_or_else(|err| {
            tracing::warn!(error = %err, "cannot read the dead encoder's playlist a last time");
            Vec::new()
        });
        last.extend(self.adopt_orphans(next.first_sequence));
        self.generation = next.clone();
        self.ended = false;
        self.manifest.generations.push(next);
        self.write_manifest_or_warn();
        last
    }

    /// Lists the segments below `below` that the current encoder closed but did not list
    /// before it died: complete (FFmpeg renames a segment into place only once it is written),
    /// with the nominal duration. Only for an encoder that is gone.
    pub fn adopt_orphans(&mut self, below: u64) -> Vec<ManifestSegment> {
        let listed = self.manifest.segments.last().map_or(0, |s| s.sequence);
        let names = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>(),
            Err(err) => {
                tracing::warn!(error = %err, dir = %self.dir.display(), "cannot look for unlisted segments");
                return Vec::new();
            }
        };
        let mut orphans: Vec<(u64, String)> = names
            .into_iter()
            .filter_map(|name| sequence_of(&name).map(|n| (n, name)))
            .filter(|(n, name)| *n > listed && *n < below && !self.seen.contains(name))
            .collect();
        orphans.sort();
        let mut adopted = Vec::new();
        for (sequence, name) in orphans {
            match self.add(&name, sequence, f64::from(recfleet_media::SEGMENT_SECS)) {
                Ok(seg) => {
                    tracing::info!(segment = %name, "adopted a segment the dead encoder closed but did not list");
                    adopted.push(seg);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot adopt an unlisted segment");
                    break;
                }
            }
        }
        if !adopted.is_empty() {
            self.write_manifest_or_warn();
        }
        adopted
    }

    /// Reads the current capture's playlist and records every segment closed since the last
    /// scan. Returns the new ones, in order (an init segment before the first segment that needs
    /// it), and writes `manifest.json` and `index.m3u8` when anything changed. A segment that
    /// cannot be read stops the scan there: it and those after it are found by the next one.
    pub fn scan(&mut self) -> Result<Vec<ManifestSegment>, SpoolError> {
        let path = self.dir.join(capture_playlist(self.generation.generation));
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(SpoolError::Read { path, source }),
        };
        let playlist =
            m3u8_rs::parse_media_playlist_res(&bytes).map_err(|e| SpoolError::Playlist { path: path.clone(), reason: e.to_string() })?;
        let mut new = Vec::new();
        let listed = self.list_new(&playlist, &mut new);
        self.ended = listed.is_ok() && playlist.end_list;
        self.manifest.complete = self.ended;
        if !new.is_empty() || self.ended {
            self.write_manifest_or_warn();
        }
        match listed {
            Err(err) if new.is_empty() => Err(err),
            Err(err) => {
                tracing::warn!(error = %err, "a closed segment cannot be read yet");
                Ok(new)
            }
            Ok(()) => Ok(new),
        }
    }

    fn list_new(&mut self, playlist: &m3u8_rs::MediaPlaylist, new: &mut Vec<ManifestSegment>) -> Result<(), SpoolError> {
        let init = self.generation.init.clone();
        if self.manifest.init_named(&init).is_none() && !playlist.segments.is_empty() {
            let described = self.describe(&init, 0, 0.0)?;
            self.manifest.add_init(described.clone());
            new.push(described);
        }
        for seg in &playlist.segments {
            if self.seen.contains(&seg.uri) {
                continue;
            }
            let sequence = sequence_of(&seg.uri).unwrap_or(self.manifest.segments.len() as u64 + 1);
            new.push(self.add(&seg.uri, sequence, f64::from(seg.duration))?);
        }
        Ok(())
    }

    /// Hashes a closed segment of the current generation into the manifest.
    fn add(&mut self, name: &str, sequence: u64, duration_secs: f64) -> Result<ManifestSegment, SpoolError> {
        let described = self.describe(name, sequence, duration_secs)?;
        self.seen.insert(name.to_string());
        self.manifest.push_segment(described, &self.generation);
        Ok(self.manifest.segments.last().expect("just pushed").clone())
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// True once the current capture's FFmpeg wrote `EXT-X-ENDLIST`.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Marks the manifest complete (and `index.m3u8` a VOD) once the last scan is done.
    pub fn mark_complete(&mut self) -> Result<(), SpoolError> {
        self.manifest.complete = true;
        self.write_manifest()
    }

    fn describe(&self, name: &str, sequence: u64, duration_secs: f64) -> Result<ManifestSegment, SpoolError> {
        let path = self.dir.join(name);
        let (bytes, sha256) = hash_file(&path).map_err(|source| SpoolError::Read { path, source })?;
        Ok(ManifestSegment { sequence, ..recfleet_media::describe(name, duration_secs, bytes, sha256) })
    }

    fn write_manifest_or_warn(&self) {
        if let Err(err) = self.write_manifest() {
            tracing::warn!(error = %err, "cannot update the manifest yet; the next change writes it");
        }
    }

    /// The manifest, then the playlist made from it: a reader never finds a name the manifest
    /// does not hash.
    fn write_manifest(&self) -> Result<(), SpoolError> {
        let path = self.dir.join(MANIFEST);
        let json = serde_json::to_vec_pretty(&self.manifest).expect("the manifest serializes");
        write_atomically(&path, &json).map_err(|source| SpoolError::Write { path, source })?;
        if self.manifest.segments.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(PLAYLIST);
        let text = recfleet_media::playlist_text(&self.manifest, self.manifest.complete);
        write_atomically(&path, text.as_bytes()).map_err(|source| SpoolError::Write { path, source })
    }
}

pub use recfleet_media::{hash_file, sequence_of, write_atomically};

/// The first capture of a recording, its first frame at `first_frame_unix_ms`.
pub fn first_generation(first_frame_unix_ms: i64) -> CaptureGeneration {
    CaptureGeneration { generation: 1, init: recfleet_media::init_name(1), first_sequence: 1, first_frame_unix_ms }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: &str = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:1\n\
        #EXT-X-PLAYLIST-TYPE:EVENT\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-MAP:URI=\"init.mp4\"\n\
        #EXTINF:2.000000,\nseg_000001.m4s\n#EXTINF:2.000000,\nseg_000002.m4s\n";

    fn folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("init.mp4"), b"init").unwrap();
        std::fs::write(dir.path().join("seg_000001.m4s"), b"one").unwrap();
        std::fs::write(dir.path().join("seg_000002.m4s"), b"two").unwrap();
        dir
    }

    #[test]
    fn scan_hashes_each_new_segment_once() {
        let dir = folder();
        std::fs::write(dir.path().join("capture_1.m3u8"), LIVE).unwrap();
        let mut spool = Spool::new(dir.path(), "r1", first_generation(0));
        let new = spool.scan().unwrap();
        let names: Vec<&str> = new.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["init.mp4", "seg_000001.m4s", "seg_000002.m4s"]);
        // sha256("one")
        assert_eq!(new[1].sha256, "7692c3ad3540bb803c020b3aee66cd8887123234ea0c6e7143c0add73ff431ed");
        assert_eq!(new[1].bytes, 3);
        assert_eq!(new[2].sequence, 2);
        assert!(spool.scan().unwrap().is_empty());
        assert!(!spool.ended());

        std::fs::write(dir.path().join("seg_000003.m4s"), b"three").unwrap();
        let ended = format!("{LIVE}#EXTINF:1.500000,\nseg_000003.m4s\n#EXT-X-ENDLIST\n");
        std::fs::write(dir.path().join("capture_1.m3u8"), ended).unwrap();
        let new = spool.scan().unwrap();
        assert_eq!(new.len(), 1);
        assert!(spool.ended());
        let on_disk: Manifest = serde_json::from_slice(&std::fs::read(dir.path().join(MANIFEST)).unwrap()).unwrap();
        assert_eq!(on_disk.segments.len(), 3);
        assert!(on_disk.complete);
        assert!((on_disk.duration_secs() - 5.5).abs() < 1e-6);
    }

    #[test]
    fn a_segment_that_cannot_be_read_is_found_by_the_next_scan_and_none_before_it_is_dropped() {
        let dir = folder();
        std::fs::remove_file(dir.path().join("seg_000002.m4s")).unwrap();
        std::fs::write(dir.path().join("capture_1.m3u8"), LIVE).unwrap();
        let mut spool = Spool::new(dir.path(), "r1", first_generation(0));
        let names = |v: Vec<ManifestSegment>| v.into_iter().map(|s| s.name).collect::<Vec<_>>();
        assert_eq!(names(spool.scan().unwrap()), ["init.mp4", "seg_000001.m4s"]);
        std::fs::write(dir.path().join("seg_000002.m4s"), b"two").unwrap();
        assert_eq!(names(spool.scan().unwrap()), ["seg_000002.m4s"]);
        // A dead encoder's closed but unlisted segment is adopted at the end.
        std::fs::write(dir.path().join("seg_000003.m4s"), b"three").unwrap();
        assert_eq!(names(spool.adopt_orphans(u64::MAX)), ["seg_000003.m4s"]);
        let (_, closed) = Spool::reopen(dir.path(), "r1").unwrap();
        assert_eq!(names(closed), ["init.mp4", "seg_000001.m4s", "seg_000002.m4s", "seg_000003.m4s"], "a reopened folder holds them all");
    }

    #[test]
    fn no_playlist_yet_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Spool::new(dir.path(), "r1", first_generation(0)).scan().unwrap().is_empty());
    }

    #[test]
    fn a_restarted_capture_continues_the_manifest_with_its_own_init_and_a_break() {
        let dir = folder();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("capture_1.m3u8"), LIVE).unwrap();
        let mut spool = Spool::new(dir.path(), "r1", first_generation(10_000));
        assert_eq!(spool.scan().unwrap().len(), 3);
        // The first encoder died after closing seg 3 but before listing it.
        std::fs::write(path("seg_000003.m4s"), b"three").unwrap();
        std::fs::write(path("init_2.mp4"), b"init2").unwrap();
        std::fs::write(path("seg_000004.m4s"), b"four").unwrap();
        std::fs::write(path("seg_000005.m4s"), b"five").unwrap();
        let second = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:4\n\
            #EXT-X-MAP:URI=\"init_2.mp4\"\n#EXTINF:2.000000,\nseg_000004.m4s\n#EXTINF:2.000000,\nseg_000005.m4s\n";
        std::fs::write(path("capture_2.m3u8"), second).unwrap();

        let second_generation =
            CaptureGeneration { generation: 2, init: "init_2.mp4".into(), first_sequence: 4, first_frame_unix_ms: 15_000 };
        let adopted: Vec<String> = spool.begin_generation(second_generation).into_iter().map(|s| s.name).collect();
        assert_eq!(adopted, ["seg_000003.m4s"], "closed, not listed, and below the new encoder's numbers");
        let new: Vec<String> = spool.scan().unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(new, ["init_2.mp4", "seg_000004.m4s", "seg_000005.m4s"]);
        let m: Manifest = serde_json::from_slice(&std::fs::read(path(MANIFEST)).unwrap()).unwrap();
        assert_eq!(m.inits.len(), 1);
        assert_eq!(m.init_named("init_2.mp4").unwrap().bytes, 5);
        let flags: Vec<(u64, &str, bool)> = m.segments.iter().map(|s| (s.sequence, s.init_name(), s.discontinuity)).collect();
        assert_eq!(
            flags,
            [(1, "init.mp4", false), (2, "init.mp4", false), (3, "init.mp4", false), (4, "init_2.mp4", true), (5, "init_2.mp4", false)]
        );
        assert_eq!(m.generations.iter().map(|g| (g.generation, g.first_sequence)).collect::<Vec<_>>(), [(1, 1), (2, 4)]);
        assert_eq!(m.generation_of(3).unwrap().init, "init.mp4");
        assert_eq!(m.generation_of(9).unwrap().init, "init_2.mp4");
        assert_eq!(m.generations[1].first_frame_unix_ms - m.generations[0].first_frame_unix_ms, 5000);

        let index = std::fs::read_to_string(path(PLAYLIST)).unwrap();
        assert_eq!(index.matches("#EXT-X-DISCONTINUITY").count(), 1, "{index}");
        assert!(index.contains("URI=\"init.mp4\"") && index.contains("URI=\"init_2.mp4\""), "{index}");
        assert!(!index.contains("ENDLIST"), "live while recording: {index}");
        spool.mark_complete().unwrap();
        assert!(std::fs::read_to_string(path(PLAYLIST)).unwrap().contains("#EXT-X-ENDLIST"));
    }

    #[test]
    fn sequence_numbers_come_from_names() {
        assert_eq!(sequence_of("seg_000042.m4s"), Some(42));
        assert_eq!(sequence_of("init.mp4"), None);
    }
}
