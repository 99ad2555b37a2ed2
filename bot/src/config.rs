//! What one recording needs to know, validated once and purely (no I/O) before anything
//! starts, with errors that name the offending field.
//!
//! Defaults live here as named constants and nowhere else.

use std::path::PathBuf;
use std::time::Duration;

use recfleet_proto::{Deadlines, NetworkPolicy, Recipe};

pub const DEFAULT_WIDTH: u32 = 1280;
pub const DEFAULT_HEIGHT: u32 = 720;
pub const DEFAULT_FPS: u32 = 30;
/// HLS segment length: a dead bot loses at most this much.
pub use recfleet_media::SEGMENT_SECS;
/// Measured on 2 cores (docs/BENCHMARKS.md): `ultrafast` holds realtime for three bots.
pub const DEFAULT_X264_PRESET: &str = "ultrafast";
pub const DEFAULT_X264_CRF: u32 = 23;
pub const DEFAULT_AUDIO_BITRATE_KBPS: u32 = 128;
pub const DEFAULT_BOT_NAME: &str = "Recorder";
/// Join attempts in all (the first plus retries) before `join_failed`.
pub const DEFAULT_JOIN_ATTEMPTS: u32 = 4;
/// First retry delay; each next one doubles, with jitter.
pub const JOIN_RETRY_MIN_DELAY: Duration = Duration::from_millis(500);
/// Times a lost browser (crashed, killed, frozen) is replaced and the meeting rejoined within
/// one recording before it ends with `page_crashed`.
pub const DEFAULT_MAX_REJOINS: u32 = 3;
/// Times an encoder that died (crashed, killed) is restarted within one recording, the
/// segments continuing, before it ends with `capture_failed`.
pub const DEFAULT_MAX_CAPTURE_RESTARTS: u32 = 3;
/// Digital silence in the capture this long, while the bot is in the call, is a capture fault
/// (`capture_silent`): reported, never a reason to leave. A minute: a meeting whose people are
/// all muted sends true zeros too, and a shorter quiet spell is not worth waking anyone for.
pub const DEFAULT_SILENCE_FAULT_SECS: u64 = 60;
/// The shortest silence worth reporting: one segment.
pub const MIN_SILENCE_FAULT_SECS: u64 = SEGMENT_SECS as u64;
/// How long a page load may take before the attempt counts as failed.
pub const PAGE_LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the page is asked whether the meeting ended.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// FFmpeg must report its first frame this soon after it starts.
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long FFmpeg gets to close its last segment after `q`.
pub const CAPTURE_STOP_GRACE: Duration = Duration::from_secs(5);
/// How long each other child gets after SIGTERM.
pub const CHILD_STOP_GRACE: Duration = Duration::from_secs(3);
/// Xvfb, PulseAudio and Chromium must prove readiness within this.
pub const CHILD_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Chromium's own limit. A warm start takes about 1.5 s, but once, in the first test after the
/// bot images had been written (gigabytes of disk writes, a cold page cache), it printed no
/// DevTools line within 15 s.
pub const BROWSER_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Capture geometry and encoder settings.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoConfig {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub x264_preset: String,
    pub x264_crf: u32,
}

impl Default for VideoConfig {
    fn default() -> Self {
        Self {
            width: DEFAULT_WIDTH,
            height: DEFAULT_HEIGHT,
            fps: DEFAULT_FPS,
            x264_preset: DEFAULT_X264_PRESET.into(),
            x264_crf: DEFAULT_X264_CRF,
        }
    }
}

/// One standalone recording (`recfleet-bot record`).
#[derive(Debug, Clone)]
pub struct RecordConfig {
    pub url: String,
    pub recipe: Option<Recipe>,
    pub bot_name: String,
    pub recording_id: String,
    pub out_dir: PathBuf,
    pub max_duration: Option<Duration>,
    pub video: VideoConfig,
    pub join_attempts: u32,
    /// Browser restarts and rejoins allowed in this recording (0: a lost browser ends it).
    pub max_rejoins: u32,
    /// Encoder restarts allowed in this recording (0: an encoder that dies ends it).
    pub max_capture_restarts: u32,
    /// Digital silence this long is reported as `capture_silent`.
    pub silence_fault: Duration,
    /// How long joining, stopping and finalizing may each take (docs/BOT.md#deadlines).
    pub deadlines: Deadlines,
    /// Where the segments go as they close; `None` keeps them in `out_dir` only.
    pub upload: Option<UploadSettings>,
    /// The recording stops (`disk_full`) before `out_dir`'s file system has less than this free.
    pub min_free_bytes: u64,
    /// Set when this bot carries on another bot's recording (a handoff).
    pub continuation: Option<recfleet_proto::protocol::Continuation>,
    /// Shared with the agent while a handoff goes on (either side); `None` standalone.
    pub handoff: Option<std::sync::Arc<crate::handoff::HandoffLink>>,
    /// Where the browser may go besides the public internet (`--allow-networks`).
    pub network: NetworkPolicy,
}

/// The object store a recording uploads to, and the disk it may use meanwhile.
#[derive(Debug, Clone)]
pub struct UploadSettings {
    pub store: recfleet_storage::StoreUrl,
    pub path_style: bool,
    /// Backlog (closed, not yet stored) the bot may hold on disk while the store is down.
    pub disk_budget_bytes: u64,
    /// How long the backlog gets to drain once the recording is over.
    pub drain_deadline: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

const X264_PRESETS: [&str; 10] =
    ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo"];

impl VideoConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, reason: String| Err(ConfigError { field, reason });
        // yuv420p needs even sizes; x11grab cannot grab more than the screen it asks for.
        if !(160..=3840).contains(&self.width) || !self.width.is_multiple_of(2) {
            return err("width", format!("must be even and between 160 and 3840, got {}", self.width));
        }
        if !(120..=2160).contains(&self.height) || !self.height.is_multiple_of(2) {
            return err("height", format!("must be even and between 120 and 2160, got {}", self.height));
        }
        if !(1..=60).contains(&self.fps) {
            return err("fps", format!("must be between 1 and 60, got {}", self.fps));
        }
        if !X264_PRESETS.contains(&self.x264_preset.as_str()) {
            return err("x264_preset", format!("unknown preset {:?}; one of {}", self.x264_preset, X264_PRESETS.join(", ")));
        }
        if self.x264_crf > 51 {
            return err("x264_crf", format!("must be between 0 and 51, got {}", self.x264_crf));
        }
        Ok(())
    }

    /// Frames between keyframes: one keyframe at every segment boundary.
    pub fn gop(&self) -> u32 {
        self.fps * SEGMENT_SECS
    }
}

impl RecordConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_meeting_url(&self.url, self.network)?;
        if self.bot_name.trim().is_empty() || self.bot_name.chars().count() > 100 {
            return Err(ConfigError { field: "bot_name", reason: "must be 1 to 100 characters".into() });
        }
        if let Some(recipe) = &self.recipe {
            recipe.validate().map_err(|e| ConfigError { field: "recipe", reason: e.to_string() })?;
        }
        if self.max_duration == Some(Duration::ZERO) {
            return Err(ConfigError { field: "max_duration_secs", reason: "must be at least 1".into() });
        }
        if self.join_attempts == 0 {
            return Err(ConfigError { field: "join_attempts", reason: "must be at least 1".into() });
        }
        if self.silence_fault < Duration::from_secs(MIN_SILENCE_FAULT_SECS) {
            let reason = format!("must be at least {MIN_SILENCE_FAULT_SECS} s, got {} s", self.silence_fault.as_secs_f64());
            return Err(ConfigError { field: "silence_fault_secs", reason });
        }
        self.deadlines
            .check()
            .map_err(|e| ConfigError { field: e.field, reason: format!("must be at least {} s, got {} s", e.min_secs, e.got_secs) })?;
        if let Some(upload) = &self.upload {
            check_drain_fits(upload.drain_deadline, self.deadlines.finalizing)?;
        }
        self.video.validate()
    }
}

/// The upload drain happens within finalizing: a drain as long as the finalizing deadline
/// would be cut short by it, and the upload summary lost.
pub fn check_drain_fits(drain: Duration, finalizing: Duration) -> Result<(), ConfigError> {
    if drain >= finalizing {
        let reason = format!("must be shorter than --finalizing-deadline-secs ({} s), got {} s", finalizing.as_secs(), drain.as_secs());
        return Err(ConfigError { field: "upload_drain_secs", reason });
    }
    Ok(())
}

/// Meeting URLs must be http(s) with a host, and a literal address (or `localhost`) one the
/// address policy allows. Where a host name leads is checked at every request the browser makes
/// (`egress`), this one included.
pub fn validate_meeting_url(url: &str, network: NetworkPolicy) -> Result<(), ConfigError> {
    let refused = |reason: String| ConfigError { field: "url", reason: format!("{reason}: {url:?}") };
    recfleet_proto::url::meeting_url_host(url).map_err(|r| refused(r.into()))?;
    network.check_url(url, &["http", "https"]).map(|_| ()).map_err(|r| refused(r.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RecordConfig {
        RecordConfig {
            url: "http://127.0.0.1:8080/m/1".into(),
            recipe: None,
            bot_name: DEFAULT_BOT_NAME.into(),
            recording_id: "r1".into(),
            out_dir: "/tmp/x".into(),
            max_duration: None,
            video: VideoConfig::default(),
            join_attempts: DEFAULT_JOIN_ATTEMPTS,
            max_rejoins: DEFAULT_MAX_REJOINS,
            max_capture_restarts: DEFAULT_MAX_CAPTURE_RESTARTS,
            silence_fault: Duration::from_secs(DEFAULT_SILENCE_FAULT_SECS),
            deadlines: Deadlines::default(),
            upload: None,
            min_free_bytes: 0,
            continuation: None,
            handoff: None,
            network: NetworkPolicy::LOCAL,
        }
    }

    #[test]
    fn defaults_are_valid() {
        config().validate().unwrap();
        assert_eq!(VideoConfig::default().gop(), 60);
    }

    #[test]
    fn the_upload_drain_must_fit_in_finalizing() {
        check_drain_fits(Duration::from_secs(30), Duration::from_secs(900)).unwrap();
        let err = check_drain_fits(Duration::from_secs(900), Duration::from_secs(900)).unwrap_err();
        assert_eq!(err.field, "upload_drain_secs");
        assert!(err.reason.contains("--finalizing-deadline-secs"), "{err}");
    }

    #[test]
    fn urls_must_be_http_with_a_host() {
        for ok in ["http://a", "https://meet.example.com/x?y=1", "HTTP://10.0.0.1:99/"] {
            validate_meeting_url(ok, NetworkPolicy::LOCAL).unwrap();
        }
        for bad in ["", "meet.example.com", "file:///etc/passwd", "javascript:alert(1)", "http://", "http:///x", "ftp://a/b", "http://a b"]
        {
            let err = validate_meeting_url(bad, NetworkPolicy::LOCAL).unwrap_err();
            assert_eq!(err.field, "url", "{bad}");
        }
        // Addresses: metadata always, loopback and private unless allowed.
        for bad in ["http://169.254.169.254/", "http://2852039166/", "http://[fd00:ec2::254]/"] {
            assert!(validate_meeting_url(bad, NetworkPolicy::LOCAL).is_err(), "{bad}");
        }
        for bad in ["http://127.0.0.1:8080/m", "http://localhost/m", "http://10.0.0.1/"] {
            assert!(validate_meeting_url(bad, NetworkPolicy::default()).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        type Mutation = Box<dyn Fn(&mut RecordConfig)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("width", Box::new(|c| c.video.width = 1281)),
            ("height", Box::new(|c| c.video.height = 0)),
            ("fps", Box::new(|c| c.video.fps = 0)),
            ("x264_preset", Box::new(|c| c.video.x264_preset = "warp".into())),
            ("x264_crf", Box::new(|c| c.video.x264_crf = 60)),
            ("bot_name", Box::new(|c| c.bot_name = " ".into())),
            ("max_duration_secs", Box::new(|c| c.max_duration = Some(Duration::ZERO))),
            ("join_attempts", Box::new(|c| c.join_attempts = 0)),
            ("silence_fault_secs", Box::new(|c| c.silence_fault = Duration::from_secs(1))),
            ("stopping_deadline_secs", Box::new(|c| c.deadlines.stopping = Duration::from_secs(3))),
            ("url", Box::new(|c| c.url = "chrome://crash".into())),
        ];
        for (field, mutate) in cases {
            let mut c = config();
            mutate(&mut c);
            assert_eq!(c.validate().unwrap_err().field, field);
        }
    }
}
