//! What a user would check about a recording: ffprobe's view (codecs, pixel format, frame
//! rate, duration), what frames show, whether frames change, and whether the audio is silent.
//! Uses the real ffmpeg and ffprobe; a missing tool fails loudly with how to install it.

use std::path::Path;
use std::process::Command;

/// ffprobe's facts about a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub video_codec: String,
    pub pix_fmt: String,
    pub width: u64,
    pub height: u64,
    /// Frames per second over the whole file (`avg_frame_rate`): lower than the stream's rate
    /// when the file has a hole.
    pub fps: f64,
    /// The stream's own rate (`r_frame_rate`).
    pub frame_rate: f64,
    pub duration_secs: f64,
    pub audio_codec: Option<String>,
    pub faststart: bool,
}

fn run(cmd: &mut Command) -> std::process::Output {
    let name = cmd.get_program().to_string_lossy().into_owned();
    cmd.output().unwrap_or_else(|e| panic!("cannot run {name}: {e}; install it with `make setup` (apt-get install ffmpeg)"))
}

pub fn probe(path: &Path) -> Probe {
    let out = run(Command::new("ffprobe").args(["-v", "error", "-print_format", "json", "-show_format", "-show_streams"]).arg(path));
    assert!(out.status.success(), "ffprobe refused {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe prints JSON");
    let streams = json["streams"].as_array().cloned().unwrap_or_default();
    let video = streams.iter().find(|s| s["codec_type"] == "video").expect("a video stream").clone();
    let audio = streams.iter().find(|s| s["codec_type"] == "audio").cloned();
    let rate = |key: &str| {
        video[key]
            .as_str()
            .and_then(|r| r.split_once('/'))
            .and_then(|(n, d)| Some(n.parse::<f64>().ok()? / d.parse::<f64>().ok()?))
            .unwrap_or(0.0)
    };
    let (fps, frame_rate) = (rate("avg_frame_rate"), rate("r_frame_rate"));
    Probe {
        video_codec: video["codec_name"].as_str().unwrap_or("").into(),
        pix_fmt: video["pix_fmt"].as_str().unwrap_or("").into(),
        width: video["width"].as_u64().unwrap_or(0),
        height: video["height"].as_u64().unwrap_or(0),
        fps,
        frame_rate,
        duration_secs: json["format"]["duration"].as_str().and_then(|d| d.parse().ok()).unwrap_or(0.0),
        audio_codec: audio.map(|a| a["codec_name"].as_str().unwrap_or("").to_string()),
        faststart: moov_before_mdat(path),
    }
}

/// True when the `moov` box comes before `mdat` (`+faststart`): players start before the end.
pub fn moov_before_mdat(path: &Path) -> bool {
    let bytes = std::fs::read(path).expect("read the mp4");
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let size = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let kind = &bytes[at + 4..at + 8];
        if kind == b"moov" {
            return true;
        }
        if kind == b"mdat" {
            return false;
        }
        if size < 8 {
            return false;
        }
        at += size;
    }
    false
}

/// A small RGB picture of the frame at `at_secs`.
#[derive(Debug, Clone)]
pub struct Frame {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

pub const FRAME_W: usize = 160;
pub const FRAME_H: usize = 90;

pub fn frame_at(path: &Path, at_secs: f64) -> Frame {
    let out = run(Command::new("ffmpeg").args(["-v", "error", "-ss", &format!("{at_secs:.3}"), "-i"]).arg(path).args([
        "-frames:v",
        "1",
        "-vf",
        &format!("scale={FRAME_W}:{FRAME_H}"),
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-",
    ]));
    assert!(out.status.success(), "ffmpeg could not grab a frame at {at_secs}s: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout.len(), FRAME_W * FRAME_H * 3, "no frame at {at_secs}s of {}", path.display());
    Frame { width: FRAME_W, height: FRAME_H, rgb: out.stdout }
}

/// Every frame at `fps` frames per second, small, in one pass over the file.
pub fn frames(path: &Path, fps: f64) -> Vec<Frame> {
    let out = run(Command::new("ffmpeg").args(["-v", "error", "-i"]).arg(path).args([
        "-vf",
        &format!("fps={fps},scale={FRAME_W}:{FRAME_H}"),
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-",
    ]));
    assert!(out.status.success(), "ffmpeg could not decode {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    out.stdout.chunks_exact(FRAME_W * FRAME_H * 3).map(|rgb| Frame { width: FRAME_W, height: FRAME_H, rgb: rgb.to_vec() }).collect()
}

/// The longest run of consecutive frames for which `pred` is false, in frames.
pub fn longest_gap(frames: &[Frame], pred: impl Fn(&Frame) -> bool) -> usize {
    let (mut longest, mut run) = (0, 0);
    for f in frames {
        run = if pred(f) { 0 } else { run + 1 };
        longest = longest.max(run);
    }
    longest
}

impl Frame {
    /// Mean brightness, 0 to 255.
    pub fn mean_luma(&self) -> f64 {
        let px = self.rgb.chunks(3);
        let n = (self.width * self.height) as f64;
        px.map(|p| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64).sum::<f64>() / n
    }

    /// Share of pixels near `rgb` (each channel within `tol`).
    pub fn share_near(&self, rgb: [u8; 3], tol: u8) -> f64 {
        let near = self.rgb.chunks(3).filter(|p| (0..3).all(|i| (p[i] as i16 - rgb[i] as i16).unsigned_abs() <= tol as u16)).count();
        near as f64 / (self.width * self.height) as f64
    }

    /// Mean absolute difference per channel from another frame, 0 to 255.
    pub fn diff(&self, other: &Frame) -> f64 {
        let sum: u64 = self.rgb.iter().zip(&other.rgb).map(|(a, b)| (*a as i16 - *b as i16).unsigned_abs() as u64).sum();
        sum as f64 / self.rgb.len() as f64
    }
}

/// The audio's mean volume in dB (ffmpeg's `volumedetect`); digital silence is -91 dB.
pub fn mean_volume_db(path: &Path) -> f64 {
    let out = run(Command::new("ffmpeg").args(["-v", "info", "-nostats", "-i"]).arg(path).args([
        "-map",
        "0:a:0",
        "-af",
        "volumedetect",
        "-f",
        "null",
        "-",
    ]));
    let log = String::from_utf8_lossy(&out.stderr);
    log.lines()
        .find_map(|l| l.split("mean_volume:").nth(1))
        .and_then(|v| v.trim().trim_end_matches("dB").trim().parse().ok())
        .unwrap_or_else(|| panic!("volumedetect printed no mean_volume for {}:\n{log}", path.display()))
}

/// Downloads a finished recording's MP4 through its presigned link (`outputs.mp4_url`) and
/// checks it plays as every common player needs: H.264 in yuv420p, AAC, faststart.
pub async fn playable(http: &reqwest::Client, done: &serde_json::Value) -> Probe {
    let url = done["outputs"]["mp4_url"].as_str().unwrap_or_else(|| panic!("no outputs: {done:#}"));
    let resp = http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "presigned GET");
    let file = tempfile::Builder::new().suffix(".mp4").tempfile().unwrap();
    std::fs::write(file.path(), resp.bytes().await.unwrap()).unwrap();
    let p = probe(file.path());
    assert_eq!((p.video_codec.as_str(), p.pix_fmt.as_str(), p.audio_codec.as_deref()), ("h264", "yuv420p", Some("aac")));
    assert!(p.faststart);
    p
}

/// Each stream's decode timestamps in order, in seconds (`ffprobe -show_packets`), by codec type.
pub fn packet_times(path: &Path, codec_type: &str) -> Vec<f64> {
    let select = if codec_type == "video" { "v:0" } else { "a:0" };
    let out = run(Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", select, "-show_entries", "packet=dts_time", "-of", "csv=p=0"])
        .arg(path));
    assert!(out.status.success(), "ffprobe could not list packets of {}", path.display());
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().trim_end_matches(',').parse().ok()).collect()
}

/// The mean brightness (0-255) of every frame at `fps`, counted from the file's time 0 (a
/// timestamp hole holds the frame before it, as a player shows it).
pub fn luma_track(path: &Path, fps: f64) -> Vec<f64> {
    let out = run(Command::new("ffmpeg").args(["-v", "error", "-i"]).arg(path).args([
        "-map",
        "0:v:0",
        "-vf",
        &format!("fps={fps}:start_time=0,scale=32:18,format=gray"),
        "-f",
        "rawvideo",
        "-",
    ]));
    assert!(out.status.success(), "ffmpeg could not decode {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    out.stdout.chunks_exact(32 * 18).map(|px| px.iter().map(|p| f64::from(*p)).sum::<f64>() / px.len() as f64).collect()
}

/// When the picture turns bright (mean luma above `threshold`), in seconds of the file.
pub fn flashes(luma: &[f64], fps: f64, threshold: f64) -> Vec<f64> {
    (0..luma.len()).filter(|&i| luma[i] > threshold && (i == 0 || luma[i - 1] <= threshold)).map(|i| i as f64 / fps).collect()
}

/// The audio decoded at this rate, mono, from time 0.
const AUDIO_TRACK_RATE: f64 = 8000.0;

/// The audio as mono 16-bit samples at `AUDIO_TRACK_RATE` from the file's time 0, a timestamp
/// hole filled with silence.
fn audio_track(path: &Path) -> Vec<i16> {
    let out = run(Command::new("ffmpeg").args(["-v", "error", "-i"]).arg(path).args([
        "-map",
        "0:a:0",
        "-af",
        "aresample=async=1:first_pts=0",
        "-ac",
        "1",
        "-ar",
        &AUDIO_TRACK_RATE.to_string(),
        "-f",
        "s16le",
        "-",
    ]));
    assert!(out.status.success(), "ffmpeg could not decode the audio of {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    out.stdout.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
}

/// When a sound starts after at least 0.3 s of quiet (a sample above `threshold` of full
/// scale), in seconds of the file.
pub fn sound_onsets(path: &Path, threshold: f64) -> Vec<f64> {
    let level = (threshold * f64::from(i16::MAX)) as i32;
    let quiet_needed = (0.3 * AUDIO_TRACK_RATE) as usize;
    let (mut onsets, mut quiet) = (Vec::new(), quiet_needed);
    for (i, s) in audio_track(path).into_iter().map(i32::from).enumerate() {
        if s.abs() > level {
            if quiet >= quiet_needed {
                onsets.push(i as f64 / AUDIO_TRACK_RATE);
            }
            quiet = 0;
        } else {
            quiet += 1;
        }
    }
    onsets
}

/// The audio's peak (0 to 1 of full scale) in each `window_secs` of the file, from time 0.
pub fn peak_track(path: &Path, window_secs: f64) -> Vec<f64> {
    let window = (window_secs * AUDIO_TRACK_RATE) as usize;
    audio_track(path)
        .chunks(window)
        .map(|w| w.iter().map(|s| f64::from(s.unsigned_abs())).fold(0.0, f64::max) / f64::from(i16::MAX))
        .collect()
}
