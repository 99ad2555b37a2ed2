//! The local spool: the folder FFmpeg writes segments into. This module notices each closed
//! segment (it appears in the playlist only once FFmpeg has renamed it into place), hashes it,
//! and keeps `manifest.json` current, so the folder is a complete, checkable recording at any
//! moment.
//!
//! It reads what FFmpeg wrote and never changes a segment. Uploading is a later stage that
//! consumes what `scan` returns.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use recfleet_proto::{Manifest, ManifestSegment};

use crate::capture::{INIT_SEGMENT, PLAYLIST};

pub use recfleet_media::MANIFEST;

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
}

impl Spool {
    pub fn new(dir: &Path, recording_id: &str) -> Self {
        Self {
            dir: dir.to_path_buf(),
            manifest: Manifest { recording_id: recording_id.to_string(), ..Manifest::default() },
            seen: HashSet::new(),
            ended: false,
        }
    }

    /// Reads the playlist and records every segment closed since the last scan. Returns the
    /// new ones, in order; writes `manifest.json` when anything changed.
    pub fn scan(&mut self) -> Result<Vec<ManifestSegment>, SpoolError> {
        let path = self.dir.join(PLAYLIST);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(SpoolError::Read { path, source }),
        };
        let playlist =
            m3u8_rs::parse_media_playlist_res(&bytes).map_err(|e| SpoolError::Playlist { path: path.clone(), reason: e.to_string() })?;
        let mut new = Vec::new();
        if self.manifest.init.is_none() && !playlist.segments.is_empty() {
            let init = self.describe(INIT_SEGMENT, 0, 0.0)?;
            self.manifest.init = Some(init.clone());
            new.push(init);
        }
        for seg in &playlist.segments {
            if self.seen.contains(&seg.uri) {
                continue;
            }
            let sequence = sequence_of(&seg.uri).unwrap_or(self.manifest.segments.len() as u64 + 1);
            let entry = self.describe(&seg.uri, sequence, f64::from(seg.duration))?;
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

    /// True once FFmpeg wrote `EXT-X-ENDLIST`.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Marks the manifest complete after the playlist was sealed by hand.
    pub fn mark_complete(&mut self) -> Result<(), SpoolError> {
        self.manifest.complete = true;
        self.write_manifest()
    }

    fn describe(&self, name: &str, sequence: u64, duration_secs: f64) -> Result<ManifestSegment, SpoolError> {
        let path = self.dir.join(name);
        let (bytes, sha256) = hash_file(&path).map_err(|source| SpoolError::Read { path, source })?;
        Ok(ManifestSegment { name: name.to_string(), sequence, duration_secs, bytes, sha256 })
    }

    fn write_manifest(&self) -> Result<(), SpoolError> {
        let path = self.dir.join(MANIFEST);
        let json = serde_json::to_vec_pretty(&self.manifest).expect("the manifest serializes");
        write_atomically(&path, &json).map_err(|source| SpoolError::Write { path, source })
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
        std::fs::write(dir.path().join(PLAYLIST), LIVE).unwrap();
        let mut spool = Spool::new(dir.path(), "r1");
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
        std::fs::write(dir.path().join(PLAYLIST), ended).unwrap();
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
        assert!(Spool::new(dir.path(), "r1").scan().unwrap().is_empty());
    }

    #[test]
    fn sequence_numbers_come_from_names() {
        assert_eq!(sequence_of("seg_000042.m4s"), Some(42));
        assert_eq!(sequence_of("init.mp4"), None);
    }
}
