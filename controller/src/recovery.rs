//! Recovery: when a bot dies, the segments it already stored are the recording. This module
//! lists them in the store, checks each against the manifest's sha256, stream-copies them into
//! `recording.mp4` (`+faststart`, ffprobe-checked) and writes the final manifest and VOD
//! playlist back, all without the bot.
//!
//! It reads and writes the store and a scratch folder; it must not change a recording's status
//! (the manager does, from what this returns).

use std::path::Path;

use recfleet_media::{describe, hash_file, is_init, playlist_text, sequence_of, INIT_SEGMENT, MANIFEST, MP4, PLAYLIST, SEGMENT_SECS};
use recfleet_proto::{Manifest, ManifestSegment};
use recfleet_storage::{recording_key, ObjectStore, Store};

/// What a recovery made.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovered {
    pub segments: usize,
    pub duration_secs: f64,
    /// Stored files left out: their bytes do not match the manifest's sha256, or (segments) the
    /// init segment they need is missing or was left out.
    pub corrupt: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("nothing usable was stored (no init segment or no media segment)")]
    NothingStored,
    #[error("the store failed: {0}")]
    Store(#[from] recfleet_storage::StoreError),
    #[error("cannot use the scratch folder {path}: {source}")]
    Scratch { path: String, source: std::io::Error },
    #[error("cannot make the MP4: {0}")]
    Finalize(#[from] recfleet_media::FinalizeError),
}

impl RecoveryError {
    pub fn code(&self) -> &'static str {
        match self {
            RecoveryError::NothingStored => "nothing_stored",
            RecoveryError::Store(_) => "store_unavailable",
            RecoveryError::Scratch { .. } | RecoveryError::Finalize(_) => "recovery_failed",
        }
    }
}

/// Builds `recording.mp4` for `recording_id` from what the store holds. `scratch` is an empty
/// folder of this call's own; it is removed afterwards.
pub async fn recover(store: &Store, recording_id: &str, scratch: &Path) -> Result<Recovered, RecoveryError> {
    let result = recover_in(store, recording_id, scratch).await;
    if let Err(err) = tokio::fs::remove_dir_all(scratch).await {
        tracing::debug!(error = %err, dir = %scratch.display(), "cannot remove the recovery folder");
    }
    result
}

async fn recover_in(store: &Store, recording_id: &str, scratch: &Path) -> Result<Recovered, RecoveryError> {
    let scratch_err = |source| RecoveryError::Scratch { path: scratch.display().to_string(), source };
    tokio::fs::create_dir_all(scratch).await.map_err(scratch_err)?;
    let key = |name: &str| recording_key(recording_id, name);
    let listed = store.list(&key("")).await?;
    let stored_manifest: Option<Manifest> = match store.get(&key(MANIFEST)).await? {
        Some(bytes) => serde_json::from_slice(&bytes).ok(),
        None => None,
    };
    let known = |name: &str| -> Option<ManifestSegment> {
        let m = stored_manifest.as_ref()?;
        m.init_named(name).or_else(|| m.segments.iter().find(|s| s.name == name)).cloned()
    };
    let mut names: Vec<(u64, String)> = listed.iter().filter_map(|o| sequence_of(&o.name).map(|n| (n, o.name.clone()))).collect();
    names.sort();
    if names.is_empty() || !listed.iter().any(|o| o.name == INIT_SEGMENT) {
        return Err(RecoveryError::NothingStored);
    }
    // The first capture's init, then each restarted capture's, then the segments.
    let mut inits: Vec<String> = listed.iter().filter(|o| is_init(&o.name) && o.name != INIT_SEGMENT).map(|o| o.name.clone()).collect();
    inits.sort_by_key(|n| (n.len(), n.clone()));

    let mut manifest = Manifest {
        recording_id: recording_id.to_string(),
        generations: stored_manifest.as_ref().map(|m| m.generations.clone()).unwrap_or_default(),
        ..Manifest::default()
    };
    let mut corrupt = Vec::new();
    let files = std::iter::once(INIT_SEGMENT.to_string()).chain(inits).chain(names.into_iter().map(|(_, n)| n));
    for name in files {
        let path = scratch.join(&name);
        if !store.get_to_file(&key(&name), &path).await? {
            continue; // deleted while we listed
        }
        let (bytes, sha256) = hash_file(&path).map_err(scratch_err)?;
        let expected = known(&name);
        if let Some(exp) = &expected {
            if exp.sha256 != sha256 {
                tracing::warn!(recording_id, file = %name, "a stored file does not match its manifest sha256; left out");
                corrupt.push(name);
                let _ = std::fs::remove_file(&path);
                continue;
            }
        }
        if is_init(&name) {
            manifest.add_init(expected.unwrap_or_else(|| describe(&name, 0.0, bytes, sha256)));
            continue;
        }
        match (expected, manifest.generation_of(sequence_of(&name).unwrap_or(0)).cloned()) {
            (Some(known), _) => manifest.segments.push(known),
            // Not in the stored manifest yet: it belongs to the capture that started at or
            // before its number.
            (None, Some(generation)) => manifest.push_segment(describe(&name, f64::from(SEGMENT_SECS), bytes, sha256), &generation),
            // A manifest without generations: the capture of the segment before it.
            (None, None) => {
                let init = manifest.segments.last().and_then(|s| s.init.clone());
                manifest.segments.push(ManifestSegment { init, ..describe(&name, f64::from(SEGMENT_SECS), bytes, sha256) });
            }
        }
    }
    // A segment is playable only with its init.
    let (playable, orphaned): (Vec<_>, Vec<_>) =
        std::mem::take(&mut manifest.segments).into_iter().partition(|s| manifest.init_named(s.init_name()).is_some());
    for seg in &orphaned {
        tracing::warn!(recording_id, file = %seg.name, init = seg.init_name(), "a stored segment's init is missing; left out");
        corrupt.push(seg.name.clone());
    }
    manifest.segments = playable;
    if manifest.init.is_none() || manifest.segments.is_empty() {
        return Err(RecoveryError::NothingStored);
    }
    manifest.complete = true;
    let playlist = playlist_text(&manifest, true);
    tokio::fs::write(scratch.join(PLAYLIST), &playlist).await.map_err(scratch_err)?;
    let info = recfleet_media::make_mp4(scratch, &manifest).await?;
    store.put_file(&key(MP4), &scratch.join(MP4)).await?;
    store.put_bytes(&key(MANIFEST), serde_json::to_vec_pretty(&manifest).expect("the manifest serializes")).await?;
    store.put_bytes(&key(PLAYLIST), playlist.into_bytes()).await?;
    tracing::info!(
        recording_id,
        segments = manifest.segments.len(),
        duration_secs = info.duration_secs,
        "recovered the recording from the store"
    );
    Ok(Recovered { segments: manifest.segments.len(), duration_secs: info.duration_secs, corrupt })
}
