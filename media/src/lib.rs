//! A recording's files, the same on a bot's disk and in the store: the playlist, the
//! manifest, and the one `recording.mp4` made from the segments by stream copy with
//! `+faststart`, checked with ffprobe before anyone is told it exists.
//!
//! Works from the files alone, so the bot finalizing its own recording and the controller
//! recovering a dead bot's recording from the store run the same code. It must not delete or
//! rewrite a segment: the segments are the recording.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use recfleet_proto::{Manifest, ManifestSegment};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::process::Command;

pub const PLAYLIST: &str = "index.m3u8";
pub const INIT_SEGMENT: &str = "init.mp4";
pub const MANIFEST: &str = "manifest.json";
pub const EVENTS: &str = "events.json";
/// Target segment length, in seconds.
pub const SEGMENT_SECS: u32 = 2;
pub const MP4: &str = "recording.mp4";
/// Remuxing is I/O-bound: 1.7 s for an hour here. A generous bound still catches a hang.
const REMUX_TIMEOUT: Duration = Duration::from_secs(600);
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum FinalizeError {
    #[error("cannot seal the playlist {path}: {source}")]
    Seal { path: PathBuf, source: std::io::Error },
    #[error("cannot run {tool}: {source}; is FFmpeg installed? (run `make setup`)")]
    Spawn { tool: &'static str, source: std::io::Error },
    #[error("{tool} did not finish within {secs} s")]
    Timeout { tool: &'static str, secs: u64 },
    #[error("ffmpeg could not make {path}: {stderr}")]
    Remux { path: PathBuf, stderr: String },
    #[error("the MP4 fails its check: {0}")]
    Check(String),
}

/// What ffprobe says about the finished file.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Mp4Info {
    pub duration_secs: f64,
    pub video_codec: String,
    pub pix_fmt: String,
    pub width: u64,
    pub height: u64,
    pub audio_codec: Option<String>,
}

/// Makes the playlist a finished VOD: `EXT-X-PLAYLIST-TYPE:VOD` and `EXT-X-ENDLIST`. FFmpeg
/// writes the end tag on a clean stop; a killed FFmpeg did not, and players then wait forever.
pub fn seal_playlist(dir: &Path) -> Result<(), FinalizeError> {
    let path = dir.join(PLAYLIST);
    let seal_err = |source| FinalizeError::Seal { path: path.clone(), source };
    let text = std::fs::read_to_string(&path).map_err(seal_err)?;
    let sealed = sealed_text(&text);
    if sealed != text {
        write_atomically(&path, sealed.as_bytes()).map_err(seal_err)?;
    }
    Ok(())
}

/// Pure: the sealed form of a playlist's text.
pub fn sealed_text(text: &str) -> String {
    let mut out: String = text
        .lines()
        .map(|l| if l.trim() == "#EXT-X-PLAYLIST-TYPE:EVENT" { "#EXT-X-PLAYLIST-TYPE:VOD" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    if !text.lines().any(|l| l.trim() == "#EXT-X-ENDLIST") {
        out.push_str("\n#EXT-X-ENDLIST");
    }
    out.push('\n');
    out
}

/// Stream-copies the segments of `dir` into `dir/recording.mp4` and checks the result.
pub async fn make_mp4(dir: &Path) -> Result<Mp4Info, FinalizeError> {
    make_mp4_from(dir, PLAYLIST).await
}

/// Stream-copies the segments `playlist` (a file in `dir`) names into `dir/recording.mp4`.
pub async fn make_mp4_from(dir: &Path, playlist: &str) -> Result<Mp4Info, FinalizeError> {
    let out = dir.join(MP4);
    let part = dir.join(format!("{MP4}.part"));
    let mut cmd = Command::new("ffmpeg");
    cmd.current_dir(dir)
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", playlist])
        .args(["-map", "0", "-c", "copy", "-movflags", "+faststart", "-f", "mp4"])
        .arg(&part)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = run(cmd, "ffmpeg", REMUX_TIMEOUT).await?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&part);
        return Err(FinalizeError::Remux { path: out, stderr: String::from_utf8_lossy(&output.stderr).trim().to_string() });
    }
    let info = probe(&part).await?;
    std::fs::rename(&part, &out).map_err(|source| FinalizeError::Seal { path: out.clone(), source })?;
    Ok(info)
}

/// Runs ffprobe on `path` and checks what a player needs: H.264 in yuv420p, AAC, a duration.
pub async fn probe(path: &Path) -> Result<Mp4Info, FinalizeError> {
    let mut cmd = Command::new("ffprobe");
    cmd.args(["-v", "error", "-print_format", "json", "-show_format", "-show_streams"]).arg(path).stdin(Stdio::null()).kill_on_drop(true);
    let output = run(cmd, "ffprobe", PROBE_TIMEOUT).await?;
    if !output.status.success() {
        return Err(FinalizeError::Check(format!("ffprobe refused it: {}", String::from_utf8_lossy(&output.stderr).trim())));
    }
    let json: Value = serde_json::from_slice(&output.stdout).map_err(|e| FinalizeError::Check(format!("ffprobe output: {e}")))?;
    check_probe(&json)
}

/// Pure: judges ffprobe's JSON.
pub fn check_probe(json: &Value) -> Result<Mp4Info, FinalizeError> {
    let streams = json["streams"].as_array().cloned().unwrap_or_default();
    let of_type = |t: &str| streams.iter().find(|s| s["codec_type"] == t).cloned();
    let video = of_type("video").ok_or_else(|| FinalizeError::Check("no video stream".into()))?;
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_string();
    let info = Mp4Info {
        duration_secs: json["format"]["duration"].as_str().and_then(|d| d.parse().ok()).unwrap_or(0.0),
        video_codec: text(&video, "codec_name"),
        pix_fmt: text(&video, "pix_fmt"),
        width: video["width"].as_u64().unwrap_or(0),
        height: video["height"].as_u64().unwrap_or(0),
        audio_codec: of_type("audio").map(|a| text(&a, "codec_name")),
    };
    if info.video_codec != "h264" || info.pix_fmt != "yuv420p" {
        return Err(FinalizeError::Check(format!("video is {} {}, not h264 yuv420p", info.video_codec, info.pix_fmt)));
    }
    if info.audio_codec.as_deref() != Some("aac") {
        return Err(FinalizeError::Check(format!("audio is {:?}, not aac", info.audio_codec)));
    }
    if info.duration_secs <= 0.0 {
        return Err(FinalizeError::Check("the duration is zero".into()));
    }
    Ok(info)
}

/// `seg_000042.m4s` → 42.
pub fn sequence_of(name: &str) -> Option<u64> {
    name.strip_prefix("seg_")?.strip_suffix(".m4s")?.parse().ok()
}

/// Size and sha256 of a file, streamed (segments can be large at high bitrates).
pub fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hex::encode(hasher.finalize())))
}

/// sha256 of bytes in memory, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes `bytes` to `path` through a temp file and a rename, so a reader never sees half.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or("part")));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    std::fs::rename(&tmp, path)
}

/// Pure: an HLS playlist (fMP4, `init.mp4`) of exactly the manifest's segments, in order:
/// EVENT while the recording goes on, VOD with `EXT-X-ENDLIST` once it is over.
pub fn playlist_text(manifest: &Manifest, ended: bool) -> String {
    use m3u8_rs::{Map, MediaPlaylist, MediaPlaylistType, MediaSegment};
    let target = manifest.segments.iter().map(|s| s.duration_secs.ceil() as u64).max().unwrap_or(0).max(u64::from(SEGMENT_SECS));
    let segments = manifest
        .segments
        .iter()
        .enumerate()
        .map(|(i, seg)| MediaSegment {
            uri: seg.name.clone(),
            duration: seg.duration_secs as f32,
            // The gap a lost segment leaves is marked, so players do not splice across it.
            discontinuity: i > 0 && manifest.segments[i - 1].sequence + 1 != seg.sequence,
            map: (i == 0).then(|| Map { uri: INIT_SEGMENT.to_string(), ..Map::default() }),
            ..MediaSegment::default()
        })
        .collect();
    let playlist = MediaPlaylist {
        version: Some(7),
        target_duration: target,
        media_sequence: manifest.segments.first().map_or(1, |s| s.sequence),
        playlist_type: Some(if ended { MediaPlaylistType::Vod } else { MediaPlaylistType::Event }),
        independent_segments: true,
        end_list: ended,
        segments,
        ..MediaPlaylist::default()
    };
    let mut out = Vec::new();
    playlist.write_to(&mut out).expect("writing to memory cannot fail");
    String::from_utf8(out).expect("playlists are UTF-8")
}

/// Pure: the segment a manifest should list for a file, from its name, bytes and hash.
pub fn describe(name: &str, duration_secs: f64, bytes: u64, sha256: String) -> ManifestSegment {
    ManifestSegment { name: name.to_string(), sequence: sequence_of(name).unwrap_or(0), duration_secs, bytes, sha256 }
}

async fn run(mut cmd: Command, tool: &'static str, limit: Duration) -> Result<std::process::Output, FinalizeError> {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|source| FinalizeError::Spawn { tool, source })?;
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(source)) => Err(FinalizeError::Spawn { tool, source }),
        Err(_) => Err(FinalizeError::Timeout { tool, secs: limit.as_secs() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealing_turns_event_into_vod_once() {
        let live = "#EXTM3U\n#EXT-X-PLAYLIST-TYPE:EVENT\n#EXTINF:2.0,\nseg_000001.m4s\n";
        let sealed = sealed_text(live);
        assert!(sealed.contains("#EXT-X-PLAYLIST-TYPE:VOD\n"));
        assert!(sealed.ends_with("#EXT-X-ENDLIST\n"));
        assert_eq!(sealed_text(&sealed), sealed, "sealing twice changes nothing");
    }

    #[test]
    fn playlists_list_exactly_the_manifest() {
        let seg = |n: u64| describe(&format!("seg_{n:06}.m4s"), 2.0, 10, "00".into());
        let manifest = Manifest { recording_id: "r".into(), init: None, segments: vec![seg(1), seg(2), seg(4)], complete: false };
        let live = playlist_text(&manifest, false);
        assert!(live.contains("#EXT-X-PLAYLIST-TYPE:EVENT"), "{live}");
        assert!(live.contains("#EXT-X-MAP:URI=\"init.mp4\""), "{live}");
        assert!(!live.contains("ENDLIST"));
        assert_eq!(live.matches("#EXT-X-DISCONTINUITY").count(), 1, "one gap: {live}");
        let parsed = m3u8_rs::parse_media_playlist_res(live.as_bytes()).unwrap();
        let uris: Vec<&str> = parsed.segments.iter().map(|s| s.uri.as_str()).collect();
        assert_eq!(uris, ["seg_000001.m4s", "seg_000002.m4s", "seg_000004.m4s"]);
        let vod = playlist_text(&manifest, true);
        assert!(vod.contains("#EXT-X-PLAYLIST-TYPE:VOD") && vod.contains("#EXT-X-ENDLIST"), "{vod}");
    }

    #[test]
    fn probe_check_wants_h264_yuv420p_and_aac() {
        let good = serde_json::json!({
            "streams": [
                {"codec_type": "video", "codec_name": "h264", "pix_fmt": "yuv420p", "width": 1280, "height": 720},
                {"codec_type": "audio", "codec_name": "aac"}
            ],
            "format": {"duration": "8.033"}
        });
        let info = check_probe(&good).unwrap();
        assert_eq!((info.width, info.height), (1280, 720));
        assert!((info.duration_secs - 8.033).abs() < 1e-9);

        let mut no_audio = good.clone();
        no_audio["streams"].as_array_mut().unwrap().pop();
        assert!(check_probe(&no_audio).unwrap_err().to_string().contains("aac"));
        let mut yuv444 = good.clone();
        yuv444["streams"][0]["pix_fmt"] = "yuv444p".into();
        assert!(check_probe(&yuv444).is_err());
        let mut empty = good;
        empty["format"]["duration"] = "0.000".into();
        assert!(check_probe(&empty).is_err());
    }
}
