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

use recfleet_proto::{CaptureGeneration, Manifest, ManifestSegment};
use time::OffsetDateTime;

use crate::capture::{capture_playlist, init_name};

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
    generation: u32,
}

impl Spool {
    /// Follows the first capture, whose first frame was grabbed at `first_frame_at`.
    pub fn new(dir: &Path, recording_id: &str, first_frame_at: OffsetDateTime) -> Self {
        let mut spool = Self {
            dir: dir.to_path_buf(),
            manifest: Manifest { recording_id: recording_id.to_string(), ..Manifest::default() },
            seen: HashSet::new(),
            ended: false,
            generation: 0,
        };
        spool.note_generation(1, 1, first_frame_at);
        spool
    }

    /// Picks up a folder a recording left behind (a dead bot, an expired drain): what its
    /// manifest lists, then whatever its last encoder closed after. Returns the spool and every
    /// closed file in upload order (each init before the first segment that needs it).
    pub fn reopen(dir: &Path, recording_id: &str) -> Result<(Self, Vec<ManifestSegment>), SpoolError> {
        let path = dir.join(MANIFEST);
        let earlier: Option<Manifest> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(SpoolError::Read { path, source }),
        };
        let mut spool = Self {
            dir: dir.to_path_buf(),
            manifest: Manifest { recording_id: recording_id.to_string(), ..Manifest::default() },
            seen: HashSet::new(),
            ended: false,
            generation: 1,
        };
        let mut closed: Vec<ManifestSegment> = Vec::new();
        if let Some(m) = earlier {
            spool.generation = m.generations.last().map_or(1, |g| g.generation);
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
        Ok((spool, closed))
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Moves on to a restarted capture's playlist (its numbers start at `start_number`), after
    /// a last scan of the one that died. A segment the dead encoder closed but did not live to
    /// list is complete (FFmpeg renames a segment into place only once it is written): it is
    /// adopted, with the nominal duration. Returns the segments found.
    pub fn begin_generation(
        &mut self,
        generation: u32,
        start_number: u64,
        first_frame_at: OffsetDateTime,
    ) -> Result<Vec<ManifestSegment>, SpoolError> {
        let mut last = self.scan()?;
        let listed = self.manifest.segments.last().map_or(0, |s| s.sequence);
        let read_err = |source| SpoolError::Read { path: self.dir.clone(), source };
        let mut orphans: Vec<(u64, String)> = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(read_err)? {
            let name = entry.map_err(read_err)?.file_name().to_string_lossy().into_owned();
            if let Some(n) = sequence_of(&name).filter(|n| *n > listed && *n < start_number && !self.seen.contains(&name)) {
                orphans.push((n, name));
            }
        }
        orphans.sort();
        for (sequence, name) in orphans {
            tracing::info!(segment = %name, "adopting a segment the dead encoder closed but did not list");
            let mut entry = self.describe(&name, sequence, f64::from(recfleet_media::SEGMENT_SECS))?;
            if self.generation > 1 {
                entry.init = Some(init_name(self.generation));
            }
            self.seen.insert(name);
            self.manifest.segments.push(entry.clone());
            last.push(entry);
        }
        self.note_generation(generation, start_number, first_frame_at);
        self.write_manifest()?;
        Ok(last)
    }

    fn note_generation(&mut self, generation: u32, first_sequence: u64, first_frame_at: OffsetDateTime) {
        self.generation = generation;
        self.ended = false;
        self.manifest.generations.push(CaptureGeneration {
            generation,
            init: init_name(generation),
            first_sequence,
            first_frame_unix_ms: (first_frame_at.unix_timestamp_nanos() / 1_000_000) as i64,
        });
    }

    /// Reads the current capture's playlist and records every segment closed since the last
    /// scan. Returns the new ones, in order (an init segment before the first segment that needs
    /// it); writes `manifest.json` and `index.m3u8` when anything changed.
    pub fn scan(&mut self) -> Result<Vec<ManifestSegment>, SpoolError> {
        let path = self.dir.join(capture_playlist(self.generation));
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(SpoolError::Read { path, source }),
        };
        let playlist =
            m3u8_rs::parse_media_playlist_res(&bytes).map_err(|e| SpoolError::Playlist { path: path.clone(), reason: e.to_string() })?;
        let mut new = Vec::new();
        let init = init_name(self.generation);
        let restarted = self.generation > 1;
        if self.manifest.init_named(&init).is_none() && !playlist.segments.is_empty() {
            let described = self.describe(&init, 0, 0.0)?;
            if restarted {
                self.manifest.inits.push(described.clone());
            } else {
                self.manifest.init = Some(described.clone());
            }
            new.push(described);
        }
        for seg in &playlist.segments {
            if self.seen.contains(&seg.uri) {
                continue;
            }
            let first_of_generation = self.manifest.segments.last().is_none_or(|s| s.init_name() != init);
            let sequence = sequence_of(&seg.uri).unwrap_or(self.manifest.segments.len() as u64 + 1);
            let mut entry = self.describe(&seg.uri, sequence, f64::from(seg.duration))?;
            if restarted {
                entry.init = Some(init.clone());
                entry.discontinuity = first_of_generation;
            }
            self.seen.insert(seg.uri.clone());
            self.manifest.segments.push(entry.clone());
            new.push(entry);
        }
        self.ended = playlist.end_list;
        self.manifest.complete = self.ended;
        if !new.is_empty() || self.ended {
            self.write_manifest()?;
        }
        Ok(new)
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
        Ok(ManifestSegment { name: name.to_string(), sequence, duration_secs, bytes, sha256, init: None, discontinuity: false })
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
        let mut spool = Spool::new(dir.path(), "r1", OffsetDateTime::now_utc());
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
    fn no_playlist_yet_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Spool::new(dir.path(), "r1", OffsetDateTime::now_utc()).scan().unwrap().is_empty());
    }

    #[test]
    fn a_restarted_capture_continues_the_manifest_with_its_own_init_and_a_break() {
        let dir = folder();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("capture_1.m3u8"), LIVE).unwrap();
        let t0 = OffsetDateTime::now_utc();
        let mut spool = Spool::new(dir.path(), "r1", t0);
        assert_eq!(spool.scan().unwrap().len(), 3);
        // The first encoder died after closing seg 3 but before listing it.
        std::fs::write(path("seg_000003.m4s"), b"three").unwrap();
        std::fs::write(path("init_2.mp4"), b"init2").unwrap();
        std::fs::write(path("seg_000004.m4s"), b"four").unwrap();
        std::fs::write(path("seg_000005.m4s"), b"five").unwrap();
        let second = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:4\n\
            #EXT-X-MAP:URI=\"init_2.mp4\"\n#EXTINF:2.000000,\nseg_000004.m4s\n#EXTINF:2.000000,\nseg_000005.m4s\n";
        std::fs::write(path("capture_2.m3u8"), second).unwrap();

        let adopted: Vec<String> =
            spool.begin_generation(2, 4, t0 + time::Duration::seconds(5)).unwrap().into_iter().map(|s| s.name).collect();
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
