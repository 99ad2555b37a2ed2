//! A bot's warm environment: Xvfb, a private PulseAudio and Chromium on `about:blank`, ready
//! before any meeting is known (FFmpeg run once on the same inputs), so a recording starts with
//! only a navigation.
//!
//! This module owns acquiring and releasing the three children. Teardown runs once, in reverse
//! order of acquisition; a partial start cleans up after itself (fields drop in declaration
//! order, which is the reverse of start order).

use std::time::Instant;

use tempfile::TempDir;

use crate::audio::Audio;
use crate::browser::{profile_dir, BrowserConfig, BrowserError, Chromium, CHROMIUM_BIN};
use crate::child::ChildError;
use crate::config::{VideoConfig, BROWSER_READY_TIMEOUT, CHILD_READY_TIMEOUT, CHILD_STOP_GRACE};
use crate::display::Display;

/// The FFmpeg warm-up is not needed to record: it may not hold the bot's readiness up for long.
const FFMPEG_WARM_UP_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot make the bot's runtime folder: {0}")]
    RuntimeDir(std::io::Error),
    #[error(transparent)]
    Child(#[from] ChildError),
    #[error(transparent)]
    Browser(#[from] BrowserError),
    #[error("cannot start the browser's egress proxy: {0}")]
    Egress(std::io::Error),
}

/// The warm environment. Field order is teardown order.
#[derive(Debug)]
pub struct Session {
    pub chromium: Chromium,
    pub audio: Audio,
    pub display: Display,
    pub video: VideoConfig,
    /// Every request of every browser of this session goes through it; it outlives them.
    pub egress: crate::egress::Egress,
    browser_cfg: BrowserConfig,
    /// How many times Chromium was replaced (0: the first browser).
    browser_generation: u32,
    runtime_dir: TempDir,
}

impl Session {
    pub async fn start(video: &VideoConfig, network: recfleet_proto::NetworkPolicy) -> Result<Self, SessionError> {
        let started = Instant::now();
        let runtime_dir = tempfile::Builder::new().prefix("recfleet-bot-").tempdir().map_err(SessionError::RuntimeDir)?;
        // Xvfb and PulseAudio do not depend on each other: start both at once.
        let (display, audio) = tokio::join!(
            Display::start(video.width, video.height, CHILD_READY_TIMEOUT),
            Audio::start(runtime_dir.path(), CHILD_READY_TIMEOUT)
        );
        let (display, audio) = (display?, audio?);
        let egress = crate::egress::Egress::start(network).await.map_err(SessionError::Egress)?;
        let browser_cfg = BrowserConfig {
            binary: CHROMIUM_BIN.into(),
            width: video.width,
            height: video.height,
            user_data_dir: profile_dir(runtime_dir.path(), 0),
            small_shm: crate::browser::shm_is_small(),
            proxy: egress.addr,
        };
        // The audio warm-up waits on PulseAudio's clock, not the CPU: run it beside Chromium.
        let (chromium, warmed) = tokio::join!(
            Chromium::start(&browser_cfg, &display.display, &audio.server, audio.sink, BROWSER_READY_TIMEOUT),
            audio.warm_up(CHILD_READY_TIMEOUT)
        );
        let chromium = chromium?;
        warmed?;
        // After Chromium, not beside it: on a cold page cache both read hundreds of MB from disk.
        let monitor = audio.monitor_source();
        if let Err(err) = crate::capture::warm_up(&display.display, &audio.server, &monitor, video, FFMPEG_WARM_UP_LIMIT).await {
            // Not fatal: the capture itself says what is wrong, with its own error code.
            tracing::warn!(error = %err, "the FFmpeg warm-up failed");
        }
        let x_display = display.display.clone();
        tracing::info!(ready_ms = started.elapsed().as_millis() as u64, display = %x_display, "bot environment ready");
        Ok(Self { chromium, audio, display, video: video.clone(), egress, browser_cfg, browser_generation: 0, runtime_dir })
    }

    /// Replaces a lost Chromium with a fresh one on the same display and sound server, with a
    /// fresh profile. The capture does not depend on the browser and keeps running meanwhile.
    pub async fn restart_browser(&mut self) -> Result<(), BrowserError> {
        self.browser_generation += 1;
        let cfg =
            BrowserConfig { user_data_dir: profile_dir(self.runtime_dir.path(), self.browser_generation), ..self.browser_cfg.clone() };
        // The new window maps above the old one (no window manager), so the old browser can go
        // after: a start that fails leaves the dead one in place for the caller to report.
        let fresh = Chromium::start(&cfg, &self.display.display, &self.audio.server, self.audio.sink, BROWSER_READY_TIMEOUT).await?;
        let lost = std::mem::replace(&mut self.chromium, fresh);
        lost.discard(CHILD_STOP_GRACE).await;
        tracing::info!(generation = self.browser_generation, "browser restarted");
        Ok(())
    }

    /// Stops Chromium, then PulseAudio, then Xvfb, each politely first.
    pub async fn shutdown(self) {
        let Session { chromium, mut audio, mut display, egress: _egress, runtime_dir: _runtime_dir, .. } = self;
        chromium.shutdown(CHILD_STOP_GRACE).await;
        audio.shutdown(CHILD_STOP_GRACE).await;
        display.child.stop(libc::SIGTERM, CHILD_STOP_GRACE).await;
        tracing::debug!("bot environment stopped");
    }
}
