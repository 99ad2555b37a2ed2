//! Telemetry from bots: heartbeats turned into rates and gauges, and bots' warn and error events
//! re-logged with their ids and counted, from one call site each. Label values come from enums
//! (`BotState::as_str`, `LogLevel`), never from ids.
//!
//! This module reads state and writes metrics and logs; the only state it changes is each bot's
//! last heartbeat figures (to turn cumulative counts into deltas).

use std::time::Instant;

use recfleet_proto::protocol::LogLevel;

use super::{Heartbeat, Manager};
use crate::fleet::BotState;
use crate::metrics::ACTIVE_STATUSES;

impl Manager {
    /// The pool and backlog gauges, from the state as it is now.
    pub(super) fn update_gauges(&self) {
        let m = &self.cfg.metrics;
        let o = self.observed();
        for (state, n) in [(BotState::Starting, o.starting), (BotState::Idle, o.idle), (BotState::Busy, o.busy)] {
            m.pool_bots.with_label_values(&[state.as_str()]).set(n as i64);
        }
        m.pool_max_bots.set(self.cfg.max as i64);
        m.target_idle.set(crate::pool::target_idle(self.desired()) as i64);
        m.pool_queued.set(self.queue.len() as i64);
        let mut active = [0i64; ACTIVE_STATUSES.len()];
        for entry in self.recordings.values() {
            if let Some(i) = ACTIVE_STATUSES.iter().position(|s| *s == entry.stored.view.status) {
                active[i] += 1;
            }
        }
        for (status, n) in ACTIVE_STATUSES.iter().zip(active) {
            m.recordings_active.with_label_values(&[status.as_str()]).set(n);
        }
        m.launch_backoff.set(self.launch_held_for(Instant::now()).map_or(0.0, |d| d.as_secs_f64()));
        m.upload_backlog_segments.set(self.bots.values().map(|b| b.vitals.backlog_files).sum::<u64>() as i64);
        m.upload_backlog_bytes.set(self.bots.values().map(|b| b.vitals.backlog_bytes).sum::<u64>() as i64);
    }

    /// Turns a heartbeat's cumulative figures into metrics.
    pub(super) fn on_heartbeat(&mut self, bot_id: &str, hb: Heartbeat) {
        let m = self.cfg.metrics.clone();
        let Some(bot) = self.bots.get_mut(bot_id) else { return };
        if let Some(cpu) = hb.cpu_cores {
            m.bot_cpu.observe(cpu);
        }
        if let Some(rss) = hb.rss_bytes {
            m.bot_rss.observe(rss as f64);
        }
        if let Some(capture) = hb.capture {
            if let Some(fps) = capture.fps {
                m.capture_fps.observe(fps);
            }
            if let Some(speed) = capture.last_speed {
                m.capture_speed.observe(speed);
            }
            m.capture_dropped.inc_by(capture.dropped_frames.saturating_sub(bot.vitals.dropped));
            bot.vitals.dropped = bot.vitals.dropped.max(capture.dropped_frames);
        }
        if let Some(upload) = hb.upload {
            m.upload_failed_requests.inc_by(upload.failed_attempts.saturating_sub(bot.vitals.failed_uploads));
            bot.vitals.failed_uploads = bot.vitals.failed_uploads.max(upload.failed_attempts);
            bot.vitals.backlog_files = upload.backlog;
            bot.vitals.backlog_bytes = upload.backlog_bytes;
        }
    }

    /// A bot's warn or error event: logged again with the bot's ids, and counted (alerts fire
    /// from the counts).
    pub(super) fn on_bot_log(&mut self, bot_id: &str, level: LogLevel, message: &str, fields: serde_json::Map<String, serde_json::Value>) {
        let recording_id = fields
            .get("recording_id")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .or_else(|| self.bots.get(bot_id).and_then(|b| b.recording.clone()))
            .unwrap_or_default();
        let fields = serde_json::Value::Object(fields).to_string();
        match level {
            LogLevel::Warn => {
                self.cfg.metrics.bot_log_events.with_label_values(&["warn"]).inc();
                tracing::warn!(bot_id, recording_id = %recording_id, bot_fields = %fields, "bot: {message}");
            }
            LogLevel::Error => {
                self.cfg.metrics.bot_log_events.with_label_values(&["error"]).inc();
                tracing::error!(bot_id, recording_id = %recording_id, bot_fields = %fields, "bot: {message}");
            }
        }
    }
}
