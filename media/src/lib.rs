//! A recording's files, the same on a bot's disk and in the store: the playlist, the
//! manifest, and the one `recording.mp4` made from the segments by stream copy with
//! `+faststart`, checked with ffprobe before anyone is told it exists.
//!
//! Works from the files alone, so the bot finalizing its own recording and the controller
//! recovering a dead bot's recording from the store run the same code. Its scratch files
//! (`finalize_*`) live in the recording's folder while it works and are removed after. It must
//! not delete or rewrite a segment: the segments are the recording.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use recfleet_proto::{Manifest, ManifestSegment};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::process::Command;

pub const PLAYLIST: &str = "index.m3u8";
pub const INIT_SEGMENT: &str = recfleet_proto::INIT_SEGMENT_NAME;
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
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
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

/// The init segment of capture `generation`: `init.mp4` for the first, `init_<g>.mp4` after.
pub fn init_name(generation: u32) -> String {
    if generation <= 1 {
        INIT_SEGMENT.to_string()
    } else {
        format!("init_{generation}.mp4")
    }
}

/// `init.mp4` and `init_<g>.mp4`.
pub fn is_init(name: &str) -> bool {
    name == INIT_SEGMENT
        || name.strip_prefix("init_").and_then(|r| r.strip_suffix(".mp4")).is_some_and(|g| g.parse::<u32>().is_ok_and(|g| g > 1))
}

/// The playlist FFmpeg writes for capture `generation`: internal to the bot, which publishes
/// `index.m3u8` of all generations itself.
pub fn capture_playlist(generation: u32) -> String {
    format!("capture_{generation}.m3u8")
}

/// The sequence number a new capture must start at so that no name is ever reused: one past
/// the highest segment in `dir`, listed or not, closed or still `.tmp`.
pub fn next_sequence(dir: &Path) -> std::io::Result<u64> {
    let mut max = 0;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = sequence_of(name.strip_suffix(".tmp").unwrap_or(&name)) {
            max = max.max(n);
        }
    }
    Ok(max + 1)
}

/// Pure: the manifest's segments cut where the capture restarted (a new init, or a segment
/// marked as a discontinuity), as index ranges. A missing segment alone does not cut: its
/// neighbours share one timeline.
pub fn parts(manifest: &Manifest) -> Vec<std::ops::Range<usize>> {
    let segs = &manifest.segments;
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..segs.len() {
        if restarts_at(&segs[i - 1], &segs[i]) {
            out.push(start..i);
            start = i;
        }
    }
    if !segs.is_empty() {
        out.push(start..segs.len());
    }
    out
}

/// Pure: whether `seg` begins a new capture after `prev` (a new init, or marked as a break).
fn restarts_at(prev: &ManifestSegment, seg: &ManifestSegment) -> bool {
    seg.discontinuity || seg.init_name() != prev.init_name()
}

/// Stream-copies the manifest's segments (files in `dir`) into `dir/recording.mp4` and checks
/// the result. A recording whose capture restarted is made part by part (FFmpeg's HLS reader
/// does not rebase timestamps at a discontinuity), and the parts are joined with the concat
/// demuxer, each placed at its generation's wall-clock start when the manifest has it: the
/// MP4's clock stays the meeting's, the time the encoder was down is a held frame, and where
/// two bots recorded the same moments (a handoff) the earlier part ends where the next begins.
pub async fn make_mp4(dir: &Path, manifest: &Manifest) -> Result<Mp4Info, FinalizeError> {
    let out = dir.join(MP4);
    let tmp = dir.join(format!("{MP4}.part"));
    let ranges = parts(manifest);
    let mut scratch = Vec::new();
    let made = async {
        if ranges.len() <= 1 {
            let playlist = write_part_playlist(dir, manifest, 0..manifest.segments.len(), &mut scratch)?;
            remux(dir, &["-i", &playlist], &tmp, true).await?;
        } else {
            let mut concat = String::from("ffconcat version 1.0\n");
            for (k, range) in ranges.iter().enumerate() {
                let playlist = write_part_playlist(dir, manifest, range.clone(), &mut scratch)?;
                let part = format!("finalize_part_{}.mp4", k + 1);
                scratch.push(part.clone());
                remux(dir, &["-i", &playlist], &dir.join(&part), false).await?;
                let probed = probe(&dir.join(&part)).await?.duration_secs;
                concat.push_str(&format!("file '{part}'\n"));
                if let Some(next) = ranges.get(k + 1) {
                    concat.push_str(&part_timing(probed, wall_clock_gap(manifest, range.start, next.start)));
                }
            }
            let list = "finalize_parts.ffconcat";
            scratch.push(list.to_string());
            std::fs::write(dir.join(list), concat).map_err(|source| FinalizeError::Write { path: dir.join(list), source })?;
            remux(dir, &["-f", "concat", "-i", list], &tmp, true).await?;
        }
        probe(&tmp).await
    };
    let result = made.await;
    for name in scratch {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let info = match result {
        Ok(info) => info,
        Err(err) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(err);
        }
    };
    std::fs::rename(&tmp, &out).map_err(|source| FinalizeError::Write { path: out.clone(), source })?;
    Ok(info)
}

/// Pure: the concat directives that place the next part, given this part's probed length and
/// the wall-clock time from its first frame to the next part's. A gap (the encoder was down)
/// stretches the part to the wall clock; an overlap (a successor bot started recording before
/// its predecessor stopped) cuts the part where the next one begins, so nothing plays twice.
fn part_timing(probed: f64, wall: Option<f64>) -> String {
    match wall {
        Some(w) if w < probed => format!("duration {w:.3}\noutpoint {w:.3}\n"),
        Some(w) => format!("duration {w:.3}\n"),
        None => format!("duration {probed:.3}\n"),
    }
}

/// Seconds from the first frame of the generation segment `from` belongs to, to that of
/// segment `to`'s; `None` when the manifest does not date both.
fn wall_clock_gap(manifest: &Manifest, from: usize, to: usize) -> Option<f64> {
    let started = |i: usize| {
        let init = manifest.segments[i].init_name();
        manifest.generations.iter().find(|g| g.init == init).map(|g| g.first_frame_unix_ms)
    };
    let (a, b) = (started(from)?, started(to)?);
    (b > a).then(|| (b - a) as f64 / 1000.0)
}

/// Writes the VOD playlist of `range` of the manifest's segments into `dir`; returns its name.
fn write_part_playlist(
    dir: &Path,
    manifest: &Manifest,
    range: std::ops::Range<usize>,
    scratch: &mut Vec<String>,
) -> Result<String, FinalizeError> {
    let part = Manifest { segments: manifest.segments[range.clone()].to_vec(), ..manifest.clone() };
    let name = format!("finalize_{}.m3u8", range.start);
    scratch.push(name.clone());
    std::fs::write(dir.join(&name), playlist_text(&part, true)).map_err(|source| FinalizeError::Write { path: dir.join(&name), source })?;
    Ok(name)
}

/// `ffmpeg <input> -c copy` into `out` (an MP4), run in `dir`.
async fn remux(dir: &Path, input: &[&str], out: &Path, faststart: bool) -> Result<(), FinalizeError> {
    let mut cmd = Command::new("ffmpeg");
    cmd.current_dir(dir).args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"]).args(input).args(["-map", "0", "-c", "copy"]);
    if faststart {
        cmd.args(["-movflags", "+faststart"]);
    }
    cmd.args(["-f", "mp4"]).arg(out).stdin(Stdio::null()).kill_on_drop(true);
    let output = run(cmd, "ffmpeg", REMUX_TIMEOUT).await?;
    if !output.status.success() {
        return Err(FinalizeError::Remux { path: out.to_path_buf(), stderr: String::from_utf8_lossy(&output.stderr).trim().to_string() });
    }
    Ok(())
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

/// 42 → `seg_000042.m4s`, as FFmpeg names them (`seg_%06d.m4s`): names sort by number.
pub fn segment_name(sequence: u64) -> String {
    format!("seg_{sequence:06}.m4s")
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

/// Pure: an HLS playlist (fMP4) of exactly the manifest's segments, in order: EVENT while the
/// recording goes on, VOD with `EXT-X-ENDLIST` once it is over. A break (a restarted capture,
/// or a lost segment) is an `EXT-X-DISCONTINUITY`, and an `EXT-X-MAP` names each new init.
pub fn playlist_text(manifest: &Manifest, ended: bool) -> String {
    use m3u8_rs::{Map, MediaPlaylist, MediaPlaylistType, MediaSegment};
    let target = manifest.segments.iter().map(|s| s.duration_secs.ceil() as u64).max().unwrap_or(0).max(u64::from(SEGMENT_SECS));
    let segments = manifest
        .segments
        .iter()
        .enumerate()
        .map(|(i, seg)| {
            let prev = i.checked_sub(1).map(|p| &manifest.segments[p]);
            let new_init = prev.is_none_or(|p| p.init_name() != seg.init_name());
            MediaSegment {
                uri: seg.name.clone(),
                duration: seg.duration_secs as f32,
                // Players must not splice across a restart or the gap a lost segment leaves.
                discontinuity: prev.is_some_and(|p| restarts_at(p, seg) || p.sequence + 1 != seg.sequence),
                map: new_init.then(|| Map { uri: seg.init_name().to_string(), ..Map::default() }),
                ..MediaSegment::default()
            }
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
    ManifestSegment {
        name: name.to_string(),
        sequence: sequence_of(name).unwrap_or(0),
        duration_secs,
        bytes,
        sha256,
        init: None,
        discontinuity: false,
    }
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
    use recfleet_proto::CaptureGeneration;

    #[test]
    fn playlists_list_exactly_the_manifest() {
        let seg = |n: u64| describe(&format!("seg_{n:06}.m4s"), 2.0, 10, "00".into());
        let manifest = Manifest { recording_id: "r".into(), segments: vec![seg(1), seg(2), seg(4)], ..Manifest::default() };
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

    /// Segments 1-3 of the first capture, then 5-6 of a restarted one (4 was lost with it).
    fn restarted() -> Manifest {
        let seg = |n: u64| describe(&format!("seg_{n:06}.m4s"), 2.0, 10, "00".into());
        let second = |n: u64| ManifestSegment { init: Some(init_name(2)), discontinuity: n == 5, ..seg(n) };
        Manifest { recording_id: "r".into(), segments: vec![seg(1), seg(2), seg(3), second(5), second(6)], ..Manifest::default() }
    }

    #[test]
    fn a_restarted_capture_is_a_discontinuity_with_its_own_init() {
        let text = playlist_text(&restarted(), true);
        let parsed = m3u8_rs::parse_media_playlist_res(text.as_bytes()).unwrap();
        let maps: Vec<Option<&str>> = parsed.segments.iter().map(|s| s.map.as_ref().map(|m| m.uri.as_str())).collect();
        assert_eq!(maps, [Some("init.mp4"), None, None, Some("init_2.mp4"), None], "{text}");
        let breaks: Vec<bool> = parsed.segments.iter().map(|s| s.discontinuity).collect();
        assert_eq!(breaks, [false, false, false, true, false], "{text}");
        assert_eq!(parts(&restarted()), [0..3, 3..5]);
    }

    #[test]
    fn a_lost_segment_alone_does_not_cut_the_recording() {
        let seg = |n: u64| describe(&format!("seg_{n:06}.m4s"), 2.0, 10, "00".into());
        let manifest = Manifest { segments: vec![seg(1), seg(3)], ..Manifest::default() };
        assert_eq!(parts(&manifest).len(), 1, "one part of both segments");
        assert_eq!(parts(&manifest)[0], 0..2);
        assert!(parts(&Manifest::default()).is_empty());
    }

    #[test]
    fn segment_names_round_trip_and_sort_by_number() {
        assert_eq!(segment_name(42), "seg_000042.m4s");
        assert_eq!(sequence_of(&segment_name(42)), Some(42));
        assert!(segment_name(9) < segment_name(10));
    }

    #[test]
    fn init_names_follow_the_generation() {
        assert_eq!((init_name(1), init_name(3)), ("init.mp4".to_string(), "init_3.mp4".to_string()));
        assert!(is_init("init.mp4") && is_init("init_2.mp4"));
        assert!(!is_init("init_1.mp4") && !is_init("init_x.mp4") && !is_init("seg_000001.m4s"));
        assert_eq!(capture_playlist(2), "capture_2.m3u8");
    }

    #[test]
    fn the_next_capture_starts_past_every_segment_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(next_sequence(dir.path()).unwrap(), 1);
        for name in ["seg_000003.m4s", "seg_000005.m4s.tmp", "init.mp4", "capture_1.m3u8"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(next_sequence(dir.path()).unwrap(), 6, "a half-written segment's number is not reused either");
    }

    #[test]
    fn the_wall_clock_gap_comes_from_the_generations() {
        let mut m = restarted();
        assert_eq!(wall_clock_gap(&m, 0, 3), None, "no generations, no gap");
        let generation = |g: u32, first: u64, ms: i64| CaptureGeneration {
            generation: g,
            init: init_name(g),
            first_sequence: first,
            first_frame_unix_ms: ms,
        };
        m.generations = vec![generation(1, 1, 10_000), generation(2, 5, 17_250)];
        assert_eq!(wall_clock_gap(&m, 0, 3), Some(7.25));
    }

    #[test]
    fn a_gap_stretches_a_part_and_an_overlap_cuts_it() {
        assert_eq!(part_timing(6.0, Some(7.25)), "duration 7.250\n", "the encoder was down 1.25 s");
        assert_eq!(part_timing(10.0, Some(7.5)), "duration 7.500\noutpoint 7.500\n", "2.5 s recorded twice");
        assert_eq!(part_timing(6.0, None), "duration 6.000\n", "undated parts follow each other");
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
