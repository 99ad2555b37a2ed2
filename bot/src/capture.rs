//! The capture: one FFmpeg (through ffmpeg-sidecar) grabbing the display and the sink's
//! monitor into HLS with fMP4 segments, a keyframe at every segment boundary.
//!
//! Queues are bounded (`-thread_queue_size`), so a starved encoder drops frames instead of
//! growing by gigabytes; speed, dropped (FFmpeg's, and those a starved encoder never grabbed)
//! and duplicated frames are reported. The capture measures its own audio (`silencedetect`)
//! and reports digital silence as `AudioLevel`s; it must not act on them (silence never ends a
//! recording). Readiness is FFmpeg's first progress report with a frame. An encoder that dies
//! is replaced by the next generation, which continues the segment numbers (docs/FAULTS.md).
//! This module owns the FFmpeg process and clears its half-written files; it must not read or
//! move closed segments (that is `spool`'s job).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ffmpeg_sidecar::child::FfmpegChild;
use ffmpeg_sidecar::command::FfmpegCommand;
use ffmpeg_sidecar::event::{FfmpegEvent, LogLevel};
use recfleet_proto::CaptureStats;
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::child::{describe_exit, set_parent_death_signal};
use crate::config::{VideoConfig, CAPTURE_STOP_GRACE, SEGMENT_SECS};

pub use recfleet_media::{capture_playlist, init_name};
/// Raw frames FFmpeg may queue between grabbing and encoding: about 1 s, 32 x 3.7 MB at 720p.
/// Enough to ride out the encoder's start-up (8 froze the picture several times in the first
/// seconds), small enough that a starved encoder drops frames instead of growing by gigabytes.
const VIDEO_QUEUE: u32 = 32;
const AUDIO_QUEUE: u32 = 256;
/// 20 ms of 48 kHz stereo s16.
const AUDIO_FRAGMENT_BYTES: u32 = 3840;
/// How often FFmpeg reports progress; it dates the first frame to within this.
const STATS_PERIOD_SECS: f32 = 0.25;
/// Below this the encoder is not keeping up with realtime.
const SLOW_SPEED: f64 = 0.95;
/// How often the capture's health is logged (and a slow encoder warned about, at most).
const HEALTH_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// Speed is judged only after the encoder has warmed up.
const SPEED_WARMUP_FRAMES: u64 = 90;
/// Audio at or below this level is digital silence: nothing reaches the sink (a muted or
/// broken sink, a page that plays nothing). Speech, room noise and comfort noise are far above
/// it; 16-bit audio's smallest step is -90.3 dBFS.
const SILENCE_NOISE_DB: i32 = -90;

/// What FFmpeg records and where.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    pub display: String,
    pub pulse_server: String,
    pub audio_source: String,
    pub video: VideoConfig,
    pub out_dir: PathBuf,
    /// 1 for the first capture of a recording, one more for each restart.
    pub generation: u32,
    /// The first segment's number: segment numbers only grow within a recording.
    pub start_number: u64,
    /// Digital silence this long is reported (`AudioLevel::Silent`).
    pub silence_after: Duration,
}

/// Pure: FFmpeg's arguments (after the program name). FFmpeg runs in the spool folder, so the
/// playlist names its segments relative to itself. Each generation has its own playlist
/// (`capture_<g>.m3u8`) and init segment; the bot publishes `index.m3u8` of them all.
pub fn ffmpeg_args(cfg: &CaptureConfig) -> Vec<String> {
    let v = &cfg.video;
    let mut args: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(|s| s.to_string()));
    push(&["-hide_banner", "-stats_period", &STATS_PERIOD_SECS.to_string(), "-stats"]);
    // Inputs need no probing: their formats are given. Probing the pulse input took ~1 s
    // after x11grab had grabbed its first frame, and the picture froze for that long.
    let no_probe = ["-analyzeduration", "0", "-probesize", "32"];
    // Audio first: everything the page plays, in small steady fragments.
    push(&no_probe);
    push(&["-thread_queue_size", &AUDIO_QUEUE.to_string(), "-f", "pulse", "-sample_rate", "48000", "-channels", "2"]);
    push(&["-fragment_size", &AUDIO_FRAGMENT_BYTES.to_string(), "-i", &cfg.audio_source]);
    // Video second, so its first frame is grabbed when the pipeline is about to run: the whole
    // screen, no pointer, a bounded queue.
    push(&no_probe);
    push(&[
        "-thread_queue_size",
        &VIDEO_QUEUE.to_string(),
        "-f",
        "x11grab",
        "-draw_mouse",
        "0",
        "-framerate",
        &v.fps.to_string(),
        "-video_size",
        &format!("{}x{}", v.width, v.height),
        "-i",
        &format!("{}.0+0,0", cfg.display),
    ]);
    push(&["-map", "1:v:0", "-map", "0:a:0"]);
    let gop = v.gop().to_string();
    push(&[
        "-c:v",
        "libx264",
        "-preset",
        &v.x264_preset,
        "-crf",
        &v.x264_crf.to_string(),
        "-pix_fmt",
        "yuv420p",
        "-fps_mode",
        "cfr",
        "-r",
        &v.fps.to_string(),
        "-g",
        &gop,
        "-keyint_min",
        &gop,
        "-sc_threshold",
        "0",
        "-force_key_frames",
        &format!("expr:gte(t,n_forced*{SEGMENT_SECS})"),
    ]);
    // The capture measures its own audio: `silencedetect` passes the samples through untouched
    // and logs when digital silence has lasted `silence_after`, and when it ends.
    push(&["-af", &format!("silencedetect=noise={SILENCE_NOISE_DB}dB:d={}", cfg.silence_after.as_secs_f64())]);
    push(&["-c:a", "aac", "-b:a", &format!("{}k", crate::config::DEFAULT_AUDIO_BITRATE_KBPS), "-ar", "48000", "-ac", "2"]);
    push(&[
        "-f",
        "hls",
        "-hls_time",
        &SEGMENT_SECS.to_string(),
        "-hls_list_size",
        "0",
        "-hls_segment_type",
        "fmp4",
        "-hls_fmp4_init_filename",
        &init_name(cfg.generation),
        "-hls_playlist_type",
        "event",
        // temp_file: a segment appears under its name only once it is closed.
        "-hls_flags",
        "independent_segments+temp_file",
        "-start_number",
        &cfg.start_number.to_string(),
        "-hls_segment_filename",
        "seg_%06d.m4s",
        &capture_playlist(cfg.generation),
    ]);
    args
}

/// Pure: the arguments of the warm-up run, the capture's inputs and encoders for a few frames
/// into nothing. See `warm_up`.
pub fn warm_up_args(display: &str, audio_source: &str, video: &VideoConfig) -> Vec<String> {
    let size = format!("{}x{}", video.width, video.height);
    let fps = video.fps.to_string();
    let screen = format!("{display}.0+0,0");
    [
        &["-hide_banner", "-loglevel", "error", "-analyzeduration", "0", "-probesize", "32"][..],
        &["-f", "pulse", "-sample_rate", "48000", "-channels", "2", "-i", audio_source],
        &["-f", "x11grab", "-draw_mouse", "0", "-framerate", &fps, "-video_size", &size, "-i", &screen],
        &["-map", "1:v:0", "-map", "0:a:0", "-frames:v", "3", "-c:v", "libx264", "-preset", &video.x264_preset],
        &["-pix_fmt", "yuv420p", "-c:a", "aac", "-f", "null", "-"],
    ]
    .concat()
    .into_iter()
    .map(str::to_string)
    .collect()
}

/// Runs FFmpeg once on the capture's inputs and encoders (three frames, thrown away) while the
/// bot warms up, so the recording's FFmpeg finds its libraries, the display and the monitor
/// source ready: its start is on the path from the join to the first frame, and every
/// millisecond of it is meeting not recorded. With the page cache dropped, a bot container's
/// first frame came 0.88 s after the join without it and 0.44 s with it (one run each). A run
/// that does not finish within `within` is killed (logged by the caller).
pub async fn warm_up(
    display: &str,
    pulse_server: &str,
    audio_source: &str,
    video: &VideoConfig,
    within: Duration,
) -> Result<(), CaptureError> {
    let started = std::time::Instant::now();
    let mut cmd = tokio::process::Command::new("ffmpeg");
    cmd.args(warm_up_args(display, audio_source, video))
        .env("PULSE_SERVER", pulse_server)
        .env("DISPLAY", display)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(CaptureError::Spawn)?;
    let out = match tokio::time::timeout(within, child.wait_with_output()).await {
        Ok(out) => out.map_err(CaptureError::Spawn)?,
        Err(_) => return Err(CaptureError::WarmUp(format!("no exit within {within:?}; killed"))),
    };
    if !out.status.success() {
        return Err(CaptureError::Exited(format!(
            "warm-up: {}: {}",
            describe_exit(out.status),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    tracing::debug!(warm_up_ms = started.elapsed().as_millis() as u64, "ffmpeg warmed up");
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot start ffmpeg: {0}; is it installed? (run `make setup`)")]
    Spawn(std::io::Error),
    #[error("ffmpeg reported no frame within {0:?}: {1}")]
    NoFirstFrame(Duration, String),
    #[error("ffmpeg stopped: {0}")]
    Exited(String),
    #[error("the ffmpeg warm-up failed: {0}")]
    WarmUp(String),
    #[error("cannot prepare {path} for a new encoder: {source}")]
    Folder { path: PathBuf, source: std::io::Error },
}

/// What the capture's audio measurement says (FFmpeg's `silencedetect`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AudioLevel {
    /// The audio has been digital silence for the capture's `silence_after`.
    Silent,
    /// Sound again after `silent_secs` of digital silence.
    Sound { silent_secs: f64 },
    /// An encoder grabbed its first frame: a silence the one before it reported is over
    /// unless this one reports it too (an encoder says nothing of a silence it did not see
    /// begin).
    EncoderStarted,
}

/// What carries over from each encoder of a recording to the one that replaces it: the
/// capture statistics, so counters only grow, and where audio levels are reported.
#[derive(Debug, Clone)]
pub struct Totals {
    stats: Arc<Mutex<CaptureStats>>,
    began: std::time::Instant,
    levels: mpsc::UnboundedSender<AudioLevel>,
}

impl Totals {
    /// Totals for a new recording; its encoders report audio levels to `levels`.
    pub fn new(levels: mpsc::UnboundedSender<AudioLevel>) -> Self {
        Self { stats: Arc::default(), began: std::time::Instant::now(), levels }
    }
}

/// What the event thread tells the recording.
#[derive(Debug)]
enum Update {
    FirstFrame(OffsetDateTime),
    Ended,
}

/// A running capture.
pub struct Capture {
    cfg: CaptureConfig,
    totals: Totals,
    child: FfmpegChild,
    pid: u32,
    updates: mpsc::UnboundedReceiver<Update>,
    errors: Arc<Mutex<Vec<String>>>,
    /// Set once asked to stop: from then on the encoder's lag is the stop's, not missed frames.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    exited: Option<std::process::ExitStatus>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture").field("pid", &self.pid()).field("exited", &self.exited).finish()
    }
}

impl Capture {
    /// Starts FFmpeg and waits for its first frame; returns the capture and when that frame was
    /// grabbed. Its statistics add to `totals`.
    pub async fn start(cfg: &CaptureConfig, first_frame_within: Duration, totals: &Totals) -> Result<(Self, OffsetDateTime), CaptureError> {
        let mut cmd = FfmpegCommand::new();
        cmd.args(ffmpeg_args(cfg));
        cmd.as_inner_mut().current_dir(&cfg.out_dir).env("PULSE_SERVER", &cfg.pulse_server).env("DISPLAY", &cfg.display);
        set_parent_death_signal(cmd.as_inner_mut());
        let mut child = cmd.spawn().map_err(CaptureError::Spawn)?;
        let events = child.iter().map_err(|e| CaptureError::Spawn(std::io::Error::other(e.to_string())))?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (tx, updates) = mpsc::unbounded_channel();
        let (thread_totals, thread_errors, fps) = (totals.clone(), errors.clone(), cfg.video.fps);
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread_stopping = stopping.clone();
        std::thread::Builder::new()
            .name("ffmpeg-events".into())
            .spawn(move || consume(events, fps, &thread_totals, &thread_errors, &thread_stopping, &tx))
            .map_err(CaptureError::Spawn)?;
        let pid = child.as_inner().id();
        let mut capture = Self { cfg: cfg.clone(), totals: totals.clone(), child, pid, updates, errors, stopping, exited: None };
        match tokio::time::timeout(first_frame_within, capture.updates.recv()).await {
            Ok(Some(Update::FirstFrame(at))) => {
                tracing::info!(pid = capture.pid(), "capture started");
                Ok((capture, at))
            }
            Ok(Some(Update::Ended)) | Ok(None) => {
                let status = capture.stop().await;
                Err(CaptureError::Exited(format!("{status} before its first frame: {}", capture.last_errors())))
            }
            Err(_) => {
                let _ = capture.stop().await;
                Err(CaptureError::NoFirstFrame(first_frame_within, capture.last_errors()))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// 1 for the recording's first encoder, one more for each restart.
    pub fn generation(&self) -> u32 {
        self.cfg.generation
    }

    /// This encoder as the manifest records it, with its first frame's time.
    pub fn generation_info(&self, first_frame_at: OffsetDateTime) -> recfleet_proto::CaptureGeneration {
        recfleet_proto::CaptureGeneration {
            generation: self.cfg.generation,
            init: init_name(self.cfg.generation),
            first_sequence: self.cfg.start_number,
            first_frame_unix_ms: (first_frame_at.unix_timestamp_nanos() / 1_000_000) as i64,
        }
    }

    /// Replaces an encoder that died with the next generation: FFmpeg's half-written files are
    /// removed, segment numbers continue past every one on disk, and the new encoder writes its
    /// own init segment and playlist. Returns when its first frame was grabbed. The one that
    /// died is reaped; one that still runs is stopped first.
    pub async fn restart(&mut self, first_frame_within: Duration) -> Result<OffsetDateTime, CaptureError> {
        let _ = self.stop().await;
        let dir = &self.cfg.out_dir;
        let folder_err = |source| CaptureError::Folder { path: dir.clone(), source };
        // Numbered before the half-written files go, so that not even their numbers come back.
        let start_number = recfleet_media::next_sequence(dir).map_err(folder_err)?;
        let leftovers = remove_partial_files(dir).map_err(folder_err)?;
        let cfg = CaptureConfig { generation: self.cfg.generation + 1, start_number, ..self.cfg.clone() };
        tracing::debug!(generation = cfg.generation, start_number, leftovers, "starting the next encoder");
        let (next, first_frame_at) = Capture::start(&cfg, first_frame_within, &self.totals).await?;
        *self = next;
        Ok(first_frame_at)
    }

    /// Resolves when FFmpeg exits on its own (a crash, a lost display, a kill): the recording's
    /// cue to restart it or to end.
    pub async fn exited(&mut self) -> String {
        loop {
            match self.updates.recv().await {
                Some(Update::FirstFrame(_)) => continue,
                Some(Update::Ended) | None => return self.last_errors(),
            }
        }
    }

    /// Asks FFmpeg to finish (`q`: the last segment is closed and `EXT-X-ENDLIST` written),
    /// then SIGINT, then SIGKILL, each after a deadline.
    pub async fn stop(&mut self) -> String {
        if let Some(status) = self.exited {
            return describe_exit(status);
        }
        self.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.child.quit();
        let steps: [(Option<i32>, Duration); 3] =
            [(None, CAPTURE_STOP_GRACE), (Some(libc::SIGINT), CAPTURE_STOP_GRACE), (Some(libc::SIGKILL), Duration::from_secs(2))];
        for (signal, grace) in steps {
            if let Some(sig) = signal {
                tracing::warn!(signal = sig, "ffmpeg did not stop in time; signalling it");
                crate::child::send_signal(self.pid(), sig);
            }
            let deadline = std::time::Instant::now() + grace;
            while std::time::Instant::now() < deadline {
                if let Ok(Some(status)) = self.child.as_inner_mut().try_wait() {
                    self.exited = Some(status);
                    return describe_exit(status);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        "did not exit after SIGKILL".into()
    }

    /// The live statistics, for whoever reports them while the capture runs.
    pub fn stats_handle(&self) -> Arc<Mutex<CaptureStats>> {
        self.totals.stats.clone()
    }

    pub fn stats(&self) -> CaptureStats {
        self.totals.stats.lock().expect("stats lock").clone()
    }

    fn last_errors(&self) -> String {
        let errors = self.errors.lock().expect("errors lock");
        if errors.is_empty() {
            "no error was logged".into()
        } else {
            errors.iter().rev().take(3).rev().cloned().collect::<Vec<_>>().join(" | ")
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if self.exited.is_none() && matches!(self.child.as_inner_mut().try_wait(), Ok(None)) {
            tracing::debug!("ffmpeg killed on teardown");
            let _ = self.child.kill();
            let _ = self.child.as_inner_mut().wait();
        }
    }
}

/// Removes what a killed FFmpeg left half-written in `dir` (`seg_*.m4s.tmp`, its playlist's
/// `.tmp`): never listed, never complete. Returns how many.
fn remove_partial_files(dir: &std::path::Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.ends_with(".tmp") && (name.starts_with("seg_") || name.starts_with("capture_")) {
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Reads every event FFmpeg emits (the sidecar's channel has no buffer: an unread event
/// stalls FFmpeg), keeps the stats current (added to what earlier encoders of the recording
/// counted), tells the recording about the first frame and passes on the audio levels.
fn consume(
    events: ffmpeg_sidecar::iter::FfmpegIterator,
    fps: u32,
    totals: &Totals,
    errors: &Mutex<Vec<String>>,
    stopping: &std::sync::atomic::AtomicBool,
    tx: &mpsc::UnboundedSender<Update>,
) {
    let stats = &totals.stats;
    let base = stats.lock().expect("stats lock").clone();
    // When this encoder's first frame was grabbed, and the most frames it has missed so far.
    let mut first_frame: Option<std::time::Instant> = None;
    let mut missed = 0u64;
    let mut last_report = std::time::Instant::now();
    let mut last_slow_warning: Option<std::time::Instant> = None;
    for event in events {
        if let FfmpegEvent::Log(_, line) = &event {
            if let Some(level) = parse_audio_level(line) {
                let _ = totals.levels.send(level);
                continue;
            }
        }
        match event {
            FfmpegEvent::Progress(p) => {
                let now = OffsetDateTime::now_utc();
                // `time=N/A` says nothing of the lag (and dates a first frame as now).
                let recorded = parse_clock(&p.time);
                if first_frame.is_none() && p.frame > 0 {
                    let captured = Duration::from_secs_f64(recorded.unwrap_or(0.0));
                    first_frame = Some(std::time::Instant::now().checked_sub(captured).unwrap_or_else(std::time::Instant::now));
                    let _ = tx.send(Update::FirstFrame(now - captured));
                    let _ = totals.levels.send(AudioLevel::EncoderStarted);
                }
                if let (Some(at), Some(recorded)) = (first_frame, recorded) {
                    if !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                        missed = missed.max(frames_missed(at.elapsed().as_secs_f64(), recorded, fps));
                    }
                }
                let (dup, dropped) = parse_dup_drop(&p.raw_log_message);
                let warm = u64::from(p.frame) > SPEED_WARMUP_FRAMES;
                let mut s = stats.lock().expect("stats lock");
                s.frames = base.frames + u64::from(p.frame);
                s.progress_ms = Some(totals.began.elapsed().as_millis() as u64);
                s.duplicated_frames = base.duplicated_frames + dup;
                s.dropped_frames = base.dropped_frames + dropped + missed;
                if p.speed > 0.0 {
                    let speed = f64::from(p.speed);
                    s.last_speed = Some(speed);
                    if warm {
                        s.min_speed = Some(s.min_speed.map_or(speed, |m| m.min(speed)));
                    }
                }
                let health = s.clone();
                drop(s);
                let slow = warm && health.last_speed.is_some_and(|v| v < SLOW_SPEED);
                if slow && last_slow_warning.is_none_or(|t| t.elapsed() >= HEALTH_REPORT_EVERY) {
                    last_slow_warning = Some(std::time::Instant::now());
                    tracing::warn!(
                        speed = health.last_speed,
                        dropped_frames = health.dropped_frames,
                        "the encoder is below realtime: the machine is short of CPU and frames are being dropped"
                    );
                }
                if last_report.elapsed() >= HEALTH_REPORT_EVERY {
                    last_report = std::time::Instant::now();
                    tracing::info!(
                        frames = health.frames,
                        speed = health.last_speed,
                        dropped_frames = health.dropped_frames,
                        duplicated_frames = health.duplicated_frames,
                        "capture health"
                    );
                }
            }
            FfmpegEvent::Log(LogLevel::Error | LogLevel::Fatal, line) => {
                tracing::warn!(child = "ffmpeg", "{line}");
                let mut e = errors.lock().expect("errors lock");
                e.push(line);
                let excess = e.len().saturating_sub(20);
                e.drain(..excess);
            }
            FfmpegEvent::Log(LogLevel::Warning, line) => tracing::debug!(child = "ffmpeg", "{line}"),
            FfmpegEvent::Log(_, line) => tracing::trace!(child = "ffmpeg", "{line}"),
            // The sidecar says this whenever the output is files rather than stdout.
            FfmpegEvent::Error(msg) if msg.contains("No streams found") || msg.contains("No output streams") => {}
            FfmpegEvent::Error(msg) => tracing::debug!(child = "ffmpeg", "sidecar: {msg}"),
            FfmpegEvent::Done | FfmpegEvent::LogEOF => break,
            _ => {}
        }
    }
    let _ = tx.send(Update::Ended);
}

/// How far behind the meeting a starved encoder may run before frames count as missed: the
/// input queue (`VIDEO_QUEUE`, about 1 s) and a progress report's age.
const LAG_ALLOWANCE_SECS: f64 = 1.5;

/// Pure: the frames of the meeting a capture did not record, `wall_secs` after its first frame
/// with `recorded_secs` encoded. A starved encoder falls behind; the grab then waits on the full
/// queue and the frames of that time are never grabbed, so the recording comes out shorter
/// than the meeting. FFmpeg's own `drop=` does not count them.
pub fn frames_missed(wall_secs: f64, recorded_secs: f64, fps: u32) -> u64 {
    ((wall_secs - recorded_secs - LAG_ALLOWANCE_SECS).max(0.0) * f64::from(fps)).round() as u64
}

/// `dup=` and `drop=` from FFmpeg's stats line (the sidecar does not parse them).
pub fn parse_dup_drop(line: &str) -> (u64, u64) {
    let field =
        |name: &str| -> u64 { line.split_whitespace().find_map(|tok| tok.strip_prefix(name)).and_then(|v| v.parse().ok()).unwrap_or(0) };
    (field("dup="), field("drop="))
}

/// `silencedetect`'s lines: `[silencedetect @ 0x…] [info] silence_start: 4.01` once the
/// silence has lasted its `d`, and `… silence_end: 9.2 | silence_duration: 5.19` when it ends.
pub fn parse_audio_level(line: &str) -> Option<AudioLevel> {
    let (_, said) = line.split_once("[silencedetect @")?;
    if said.contains("silence_start:") {
        return Some(AudioLevel::Silent);
    }
    let secs = said.split_once("silence_duration:")?.1.trim().parse().ok()?;
    Some(AudioLevel::Sound { silent_secs: secs })
}

/// `HH:MM:SS.ss` to seconds.
pub fn parse_clock(clock: &str) -> Option<f64> {
    let mut parts = clock.trim().split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warm_up_uses_the_capture_inputs_and_encoders_and_writes_nothing() {
        let video = VideoConfig::default();
        let args = warm_up_args(":7", "recfleet.monitor", &video);
        let has = |pair: [&str; 2]| args.windows(2).any(|w| w[0] == pair[0] && w[1] == pair[1]);
        assert!(has(["-f", "pulse"]) && has(["-i", "recfleet.monitor"]) && has(["-f", "x11grab"]) && has(["-i", ":7.0+0,0"]));
        assert!(has(["-c:v", "libx264"]) && has(["-preset", &video.x264_preset]) && has(["-c:a", "aac"]));
        assert!(has(["-frames:v", "3"]) && has(["-f", "null"]) && args.last().map(String::as_str) == Some("-"), "{args:?}");
    }

    fn cfg() -> CaptureConfig {
        CaptureConfig {
            display: ":99".into(),
            pulse_server: "unix:/run/p".into(),
            audio_source: "recfleet.monitor".into(),
            video: VideoConfig::default(),
            out_dir: "/rec/out".into(),
            generation: 1,
            start_number: 1,
            silence_after: Duration::from_secs(60),
        }
    }

    fn has(args: &[String], pair: [&str; 2]) -> bool {
        args.windows(2).any(|w| w[0] == pair[0] && w[1] == pair[1])
    }

    #[test]
    fn segments_are_fmp4_with_a_keyframe_per_boundary() {
        let args = ffmpeg_args(&cfg());
        for pair in [
            ["-hls_segment_type", "fmp4"],
            ["-hls_time", "2"],
            ["-hls_list_size", "0"],
            ["-g", "60"],
            ["-keyint_min", "60"],
            ["-sc_threshold", "0"],
            ["-start_number", "1"],
            ["-hls_fmp4_init_filename", "init.mp4"],
            ["-hls_segment_filename", "seg_%06d.m4s"],
            ["-pix_fmt", "yuv420p"],
            ["-c:a", "aac"],
        ] {
            assert!(has(&args, pair), "missing {pair:?}");
        }
        assert_eq!(args.last().unwrap(), "capture_1.m3u8");
    }

    #[test]
    fn a_restarted_capture_continues_the_numbers_with_its_own_init_and_playlist() {
        let args = ffmpeg_args(&CaptureConfig { generation: 3, start_number: 42, ..cfg() });
        assert!(has(&args, ["-start_number", "42"]) && has(&args, ["-hls_fmp4_init_filename", "init_3.mp4"]), "{args:?}");
        assert!(has(&args, ["-hls_segment_filename", "seg_%06d.m4s"]));
        assert_eq!(args.last().unwrap(), "capture_3.m3u8");
    }

    #[test]
    fn grabs_the_whole_display_without_the_pointer_and_bounded_queues() {
        let args = ffmpeg_args(&cfg());
        assert!(has(&args, ["-i", ":99.0+0,0"]));
        assert!(has(&args, ["-draw_mouse", "0"]));
        assert!(has(&args, ["-video_size", "1280x720"]));
        assert!(has(&args, ["-i", "recfleet.monitor"]));
        assert!(has(&args, ["-thread_queue_size", "32"]));
        assert!(has(&args, ["-map", "1:v:0"]) && has(&args, ["-fragment_size", "3840"]));
    }

    #[test]
    fn gop_follows_the_frame_rate() {
        let mut c = cfg();
        c.video.fps = 25;
        assert!(has(&ffmpeg_args(&c), ["-g", "50"]));
    }

    #[test]
    fn the_audio_is_measured_for_digital_silence_and_passed_through() {
        let args = ffmpeg_args(&CaptureConfig { silence_after: Duration::from_millis(2500), ..cfg() });
        assert!(has(&args, ["-af", "silencedetect=noise=-90dB:d=2.5"]), "{args:?}");
    }

    #[test]
    fn silencedetect_lines_parse() {
        // As the sidecar has FFmpeg print them (`-loglevel level+info`).
        assert_eq!(parse_audio_level("[silencedetect @ 0x55d1c3a0] [info] silence_start: 4.01"), Some(AudioLevel::Silent));
        assert_eq!(
            parse_audio_level("[silencedetect @ 0x55d1c3a0] [info] silence_end: 9.2 | silence_duration: 5.19"),
            Some(AudioLevel::Sound { silent_secs: 5.19 })
        );
        for other in ["frame=1 fps=0", "[hls @ 0x1] Opening 'seg_000001.m4s' for writing", "silence_start: 3 (a page's log)"] {
            assert_eq!(parse_audio_level(other), None, "{other}");
        }
    }

    #[test]
    fn frames_the_encoder_fell_behind_on_count_as_missed() {
        assert_eq!(frames_missed(10.0, 9.8, 30), 0, "a healthy encoder runs a little behind");
        assert_eq!(frames_missed(38.6, 14.5, 30), 678, "0.4x realtime for 38 s");
        assert_eq!(frames_missed(0.5, 2.0, 30), 0);
    }

    #[test]
    fn stats_fields_parse() {
        let line = "frame=  301 fps= 30 q=-1.0 size=N/A time=00:00:10.03 bitrate=N/A dup=3 drop=12 speed=   1x";
        assert_eq!(parse_dup_drop(line), (3, 12));
        assert_eq!(parse_dup_drop("frame=1"), (0, 0));
        assert!((parse_clock("00:01:10.50").unwrap() - 70.5).abs() < 1e-9);
        assert_eq!(parse_clock("N/A"), None);
    }
}
