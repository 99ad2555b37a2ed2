//! The controller's Prometheus metrics, served at `/metrics`. Every name lives in `names` and
//! nowhere else, following `recfleet_<subsystem>_<name>_<unit>[_total]`; dashboards, alert rules
//! and their tests refer to these names. Ids (recording, bot) are never label values: labels
//! are small closed sets (state, status, sub_code, level, result, route).
//!
//! This module defines and renders metrics; the manager, the API and the webhook sender
//! observe them.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use recfleet_proto::{RecordingStatus, SubCode};

/// Every metric name the controller exports (histograms add `_bucket`, `_sum`, `_count`).
pub mod names {
    pub const POOL_BOTS: &str = "recfleet_pool_bots";
    pub const POOL_MAX_BOTS: &str = "recfleet_pool_max_bots";
    pub const POOL_QUEUED_RECORDINGS: &str = "recfleet_pool_queued_recordings";
    pub const POOL_BOTS_LOST_TOTAL: &str = "recfleet_pool_bots_lost_total";
    pub const POOL_BOTS_PREEMPTED_TOTAL: &str = "recfleet_pool_bots_preempted_total";
    pub const RECORDINGS_ACTIVE: &str = "recfleet_recordings_active";
    pub const RECORDINGS_FINISHED_TOTAL: &str = "recfleet_recordings_finished_total";
    pub const RECORDING_START_LATENCY_SECONDS: &str = "recfleet_recording_start_latency_seconds";
    pub const RECORDING_JOIN_DURATION_SECONDS: &str = "recfleet_recording_join_duration_seconds";
    pub const RECORDING_TIME_TO_VIEW_SECONDS: &str = "recfleet_recording_time_to_view_seconds";
    pub const RECOVERY_RUNS_TOTAL: &str = "recfleet_recovery_runs_total";
    pub const UPLOAD_SEGMENTS_STORED_TOTAL: &str = "recfleet_upload_segments_stored_total";
    pub const UPLOAD_FAILED_REQUESTS_TOTAL: &str = "recfleet_upload_failed_requests_total";
    pub const UPLOAD_LAG_SECONDS: &str = "recfleet_upload_lag_seconds";
    pub const UPLOAD_BACKLOG_SEGMENTS: &str = "recfleet_upload_backlog_segments";
    pub const UPLOAD_BACKLOG_BYTES: &str = "recfleet_upload_backlog_bytes";
    pub const CAPTURE_FRAME_RATE_FPS: &str = "recfleet_capture_frame_rate_fps";
    pub const CAPTURE_ENCODER_SPEED_RATIO: &str = "recfleet_capture_encoder_speed_ratio";
    pub const CAPTURE_DROPPED_FRAMES_TOTAL: &str = "recfleet_capture_dropped_frames_total";
    pub const BOT_CPU_CORES: &str = "recfleet_bot_cpu_cores";
    pub const BOT_RSS_BYTES: &str = "recfleet_bot_rss_bytes";
    pub const BOT_LOG_EVENTS_TOTAL: &str = "recfleet_bot_log_events_total";
    pub const BOT_MESSAGES_TOTAL: &str = "recfleet_bot_messages_total";
    pub const WEBHOOK_DELIVERIES_TOTAL: &str = "recfleet_webhook_deliveries_total";
    pub const API_REQUESTS_TOTAL: &str = "recfleet_api_requests_total";
    pub const API_REQUEST_DURATION_SECONDS: &str = "recfleet_api_request_duration_seconds";
    pub const RECORDING_TRANSITIONS_REFUSED_TOTAL: &str = "recfleet_recording_transitions_refused_total";
    pub const STATE_WRITE_FAILURES_TOTAL: &str = "recfleet_state_write_failures_total";
    pub const CONTROLLER_DRAINING: &str = "recfleet_controller_draining";
    pub const CONTROLLER_STANDBY: &str = "recfleet_controller_standby";
    pub const POOL_LAUNCH_FAILURES_TOTAL: &str = "recfleet_pool_launch_failures_total";
    pub const POOL_LAUNCH_BACKOFF_SECONDS: &str = "recfleet_pool_launch_backoff_seconds";
    pub const POOL_TARGET_IDLE_BOTS: &str = "recfleet_pool_target_idle_bots";
    pub const POOL_LAUNCH_DURATION_SECONDS: &str = "recfleet_pool_launch_duration_seconds";
    pub const ECS_RECONCILE_DURATION_SECONDS: &str = "recfleet_ecs_reconcile_duration_seconds";
    pub const BOT_BROWSER_LOST_TOTAL: &str = "recfleet_bot_browser_lost_total";
    pub const BOT_CAPTURE_RESTARTS_TOTAL: &str = "recfleet_bot_capture_restarts_total";
    pub const POOL_BOTS_SILENT: &str = "recfleet_pool_bots_silent";
    pub const BOT_CAPTURE_SILENT_TOTAL: &str = "recfleet_bot_capture_silent_total";
    pub const RECORDING_DEADLINES_EXCEEDED_TOTAL: &str = "recfleet_recording_deadlines_exceeded_total";
    pub const RECORDING_HANDOFFS_TOTAL: &str = "recfleet_recording_handoffs_total";
    pub const BOT_REQUESTS_REFUSED_TOTAL: &str = "recfleet_bot_requests_refused_total";

    /// All of them, for checks that dashboards and rules name only what exists.
    pub const ALL: &[&str] = &[
        POOL_BOTS,
        POOL_MAX_BOTS,
        POOL_QUEUED_RECORDINGS,
        POOL_BOTS_LOST_TOTAL,
        POOL_BOTS_PREEMPTED_TOTAL,
        RECORDINGS_ACTIVE,
        RECORDINGS_FINISHED_TOTAL,
        RECORDING_START_LATENCY_SECONDS,
        RECORDING_JOIN_DURATION_SECONDS,
        RECORDING_TIME_TO_VIEW_SECONDS,
        RECOVERY_RUNS_TOTAL,
        UPLOAD_SEGMENTS_STORED_TOTAL,
        UPLOAD_FAILED_REQUESTS_TOTAL,
        UPLOAD_LAG_SECONDS,
        UPLOAD_BACKLOG_SEGMENTS,
        UPLOAD_BACKLOG_BYTES,
        CAPTURE_FRAME_RATE_FPS,
        CAPTURE_ENCODER_SPEED_RATIO,
        CAPTURE_DROPPED_FRAMES_TOTAL,
        BOT_CPU_CORES,
        BOT_RSS_BYTES,
        BOT_LOG_EVENTS_TOTAL,
        BOT_MESSAGES_TOTAL,
        WEBHOOK_DELIVERIES_TOTAL,
        API_REQUESTS_TOTAL,
        API_REQUEST_DURATION_SECONDS,
        RECORDING_TRANSITIONS_REFUSED_TOTAL,
        STATE_WRITE_FAILURES_TOTAL,
        CONTROLLER_DRAINING,
        CONTROLLER_STANDBY,
        POOL_LAUNCH_FAILURES_TOTAL,
        POOL_LAUNCH_BACKOFF_SECONDS,
        POOL_TARGET_IDLE_BOTS,
        POOL_LAUNCH_DURATION_SECONDS,
        ECS_RECONCILE_DURATION_SECONDS,
        BOT_BROWSER_LOST_TOTAL,
        BOT_CAPTURE_RESTARTS_TOTAL,
        POOL_BOTS_SILENT,
        BOT_CAPTURE_SILENT_TOTAL,
        RECORDING_DEADLINES_EXCEEDED_TOTAL,
        RECORDING_HANDOFFS_TOTAL,
    ];
}

/// Bot states as the pool counts them.
pub const BOT_STATES: [crate::fleet::BotState; 3] =
    [crate::fleet::BotState::Starting, crate::fleet::BotState::Idle, crate::fleet::BotState::Busy];
/// Non-terminal statuses (terminal ones are counted by `recordings_finished_total`).
pub const ACTIVE_STATUSES: [RecordingStatus; 6] = [
    RecordingStatus::Queued,
    RecordingStatus::Joining,
    RecordingStatus::WaitingRoom,
    RecordingStatus::Recording,
    RecordingStatus::Stopping,
    RecordingStatus::Finalizing,
];

/// Who kept a deadline (the `enforced_by` label of `recfleet_recording_deadlines_exceeded_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnforcedBy {
    /// The bot cut its own phase short.
    Bot,
    /// The bot kept none: the controller stopped it.
    Controller,
}

impl EnforcedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            EnforcedBy::Bot => "bot",
            EnforcedBy::Controller => "controller",
        }
    }
}

/// How a handoff went (the `result` label of `recfleet_recording_handoffs_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffResult {
    /// A successor was assigned.
    Started,
    /// None could be: the bot finished the recording as a signal says.
    Refused,
    /// Called off before the successor recorded: the first bot finished the recording.
    Failed,
    /// The first bot handed over and left.
    Completed,
}

impl HandoffResult {
    pub const ALL: [HandoffResult; 4] = [HandoffResult::Started, HandoffResult::Refused, HandoffResult::Failed, HandoffResult::Completed];

    pub fn as_str(self) -> &'static str {
        match self {
            HandoffResult::Started => "started",
            HandoffResult::Refused => "refused",
            HandoffResult::Failed => "failed",
            HandoffResult::Completed => "completed",
        }
    }
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub pool_bots: IntGaugeVec,
    pub pool_max_bots: IntGauge,
    pub pool_queued: IntGauge,
    pub bots_lost: IntCounter,
    pub bots_preempted: IntCounter,
    pub recordings_active: IntGaugeVec,
    pub recordings_finished: IntCounterVec,
    pub start_latency: Histogram,
    pub join_duration: Histogram,
    pub time_to_view: Histogram,
    pub recoveries: IntCounterVec,
    pub segments_stored: IntCounter,
    pub upload_failed_requests: IntCounter,
    pub upload_lag: Histogram,
    pub upload_backlog_segments: IntGauge,
    pub upload_backlog_bytes: IntGauge,
    pub capture_fps: Histogram,
    pub capture_speed: Histogram,
    pub capture_dropped: IntCounter,
    pub bot_cpu: Histogram,
    pub bot_rss: Histogram,
    pub bot_log_events: IntCounterVec,
    pub bot_messages: IntCounterVec,
    pub webhook_deliveries: IntCounterVec,
    pub api_requests: IntCounterVec,
    pub api_duration: HistogramVec,
    pub transitions_refused: IntCounterVec,
    pub state_write_failures: IntCounter,
    pub draining: IntGauge,
    pub standby: IntGauge,
    pub launch_failures: IntCounter,
    pub launch_backoff: prometheus::Gauge,
    pub target_idle: IntGauge,
    pub launch_duration: Histogram,
    pub ecs_reconcile: Histogram,
    pub browser_lost: IntCounter,
    pub capture_restarts: IntCounter,
    pub bots_silent: IntGauge,
    pub capture_silent: IntCounter,
    pub deadlines_exceeded: IntCounterVec,
    pub handoffs: IntCounterVec,
    pub requests_refused: IntCounterVec,
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid histogram");
    registry.register(Box::new(h.clone())).expect("unique metric");
    h
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid counter");
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid gauge");
    registry.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
    registry.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        use names::*;
        let r = Registry::new();
        let seconds = vec![0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0];
        let m = Metrics {
            pool_bots: gauge_vec(&r, POOL_BOTS, "Bots in the pool by state (starting, idle, busy).", &["state"]),
            pool_max_bots: gauge(&r, POOL_MAX_BOTS, "The most bots the pool may run."),
            pool_queued: gauge(&r, POOL_QUEUED_RECORDINGS, "Recordings waiting for a bot."),
            bots_lost: counter(&r, POOL_BOTS_LOST_TOTAL, "Bots declared lost (silent too long) or that exited before finishing."),
            bots_preempted: counter(
                &r,
                POOL_BOTS_PREEMPTED_TOTAL,
                "Bots whose host was taken back (Spot interruptions, termination notices).",
            ),
            recordings_active: gauge_vec(&r, RECORDINGS_ACTIVE, "Recordings not yet finished, by status.", &["status"]),
            recordings_finished: counter_vec(
                &r,
                RECORDINGS_FINISHED_TOTAL,
                "Recordings that reached completed or failed, by status and sub_code.",
                &["status", "sub_code"],
            ),
            start_latency: histogram(&r, RECORDING_START_LATENCY_SECONDS, "API call to the recording's first frame.", seconds.clone()),
            join_duration: histogram(
                &r,
                RECORDING_JOIN_DURATION_SECONDS,
                "Assignment to a bot until the bot is in the call.",
                seconds.clone(),
            ),
            time_to_view: histogram(
                &r,
                RECORDING_TIME_TO_VIEW_SECONDS,
                "API call until the first segment is in the store (the live playlist plays).",
                seconds.clone(),
            ),
            recoveries: counter_vec(
                &r,
                RECOVERY_RUNS_TOTAL,
                "Recordings finalized from the store without their bot, by result.",
                &["result"],
            ),
            segments_stored: counter(&r, UPLOAD_SEGMENTS_STORED_TOTAL, "Media segments the bots stored."),
            upload_failed_requests: counter(&r, UPLOAD_FAILED_REQUESTS_TOTAL, "Store requests that failed (each is retried)."),
            upload_lag: histogram(
                &r,
                UPLOAD_LAG_SECONDS,
                "Segment closed on a bot's disk until stored.",
                vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0],
            ),
            upload_backlog_segments: gauge(&r, UPLOAD_BACKLOG_SEGMENTS, "Files recorded but not yet stored, over all bots."),
            upload_backlog_bytes: gauge(&r, UPLOAD_BACKLOG_BYTES, "Bytes recorded but not yet stored, over all bots."),
            capture_fps: histogram(
                &r,
                CAPTURE_FRAME_RATE_FPS,
                "Frames encoded per second, each bot each heartbeat.",
                vec![1.0, 5.0, 10.0, 15.0, 20.0, 24.0, 27.0, 29.0, 30.0, 31.0, 45.0, 60.0],
            ),
            capture_speed: histogram(
                &r,
                CAPTURE_ENCODER_SPEED_RATIO,
                "FFmpeg's speed (1.0 is realtime), each bot each heartbeat.",
                vec![0.5, 0.8, 0.9, 0.95, 0.98, 1.0, 1.02, 1.1, 1.5],
            ),
            capture_dropped: counter(&r, CAPTURE_DROPPED_FRAMES_TOTAL, "Frames FFmpeg dropped because the encoder fell behind."),
            bot_cpu: histogram(
                &r,
                BOT_CPU_CORES,
                "CPU cores a bot (all its processes) used, each heartbeat.",
                vec![0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0],
            ),
            bot_rss: histogram(
                &r,
                BOT_RSS_BYTES,
                "Resident memory of a bot (all its processes), each heartbeat.",
                vec![256e6, 512e6, 768e6, 1e9, 1.5e9, 2e9, 3e9, 4e9, 8e9],
            ),
            bot_log_events: counter_vec(&r, BOT_LOG_EVENTS_TOTAL, "Warn and error events the bots forwarded.", &["level"]),
            bot_messages: counter_vec(&r, BOT_MESSAGES_TOTAL, "Messages from bots the manager processed, by type.", &["kind"]),
            webhook_deliveries: counter_vec(
                &r,
                WEBHOOK_DELIVERIES_TOTAL,
                "Webhook delivery attempts by result (delivered, failed, refused by the address policy, gave_up).",
                &["result"],
            ),
            api_requests: counter_vec(&r, API_REQUESTS_TOTAL, "API requests by route, method and status.", &["route", "method", "status"]),
            api_duration: {
                let opts = HistogramOpts::new(API_REQUEST_DURATION_SECONDS, "API request latency by route and method.")
                    .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]);
                let h = HistogramVec::new(opts, &["route", "method"]).expect("valid histogram");
                r.register(Box::new(h.clone())).expect("unique metric");
                h
            },
            transitions_refused: counter_vec(
                &r,
                RECORDING_TRANSITIONS_REFUSED_TOTAL,
                "Recording status changes the transition table refused (never applied), by status and event.",
                &["status", "event"],
            ),
            state_write_failures: counter(&r, STATE_WRITE_FAILURES_TOTAL, "Writes to the state database that failed."),
            draining: gauge(&r, CONTROLLER_DRAINING, "1 while the controller drains before it exits (SIGTERM, SIGINT)."),
            standby: gauge(&r, CONTROLLER_STANDBY, "1 while another controller leads and this one stands by."),
            launch_failures: counter(&r, POOL_LAUNCH_FAILURES_TOTAL, "Bots that could not be launched or exited before they were warm."),
            launch_backoff: {
                let g = prometheus::Gauge::new(POOL_LAUNCH_BACKOFF_SECONDS, "Seconds until launches resume after failures (0: none held).")
                    .expect("valid gauge");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            target_idle: gauge(
                &r,
                POOL_TARGET_IDLE_BOTS,
                "Idle bots the pool keeps now: --pool-min-idle plus the demand expected during one launch.",
            ),
            launch_duration: histogram(
                &r,
                POOL_LAUNCH_DURATION_SECONDS,
                "A launch until the bot is warm (its moving average sets the pool's demand term).",
                vec![1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 240.0, 300.0],
            ),
            ecs_reconcile: histogram(
                &r,
                ECS_RECONCILE_DURATION_SECONDS,
                "One pass of the ECS runtime over its tracked tasks (DescribeTasks in batches of 100).",
                vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            ),
            browser_lost: counter(
                &r,
                BOT_BROWSER_LOST_TOTAL,
                "Browsers lost mid-meeting (crashed, killed, frozen); each is followed by a rejoin or a page_crashed end.",
            ),
            capture_restarts: counter(
                &r,
                BOT_CAPTURE_RESTARTS_TOTAL,
                "Encoders that died mid-meeting and were restarted into the same recording (a discontinuity in its playlist).",
            ),
            capture_silent: counter(
                &r,
                BOT_CAPTURE_SILENT_TOTAL,
                "Captures whose audio went digitally silent while the bot was in the call (a muted or broken sink); the recording goes on.",
            ),
            deadlines_exceeded: counter_vec(
                &r,
                RECORDING_DEADLINES_EXCEEDED_TOTAL,
                "Recordings that outlasted a status's deadline (docs/BOT.md#deadlines), by status and by who enforced it (bot, or controller: the bot was stopped).",
                &["status", "enforced_by"],
            ),
            handoffs: counter_vec(
                &r,
                RECORDING_HANDOFFS_TOTAL,
                "Recordings whose bot was taken away (SIGTERM) and asked for a successor, by result: started (a successor joins), refused (none; the recording ended), failed (the successor could not join; the first bot finished the recording), completed (the predecessor handed over and left).",
                &["result"],
            ),
            requests_refused: counter_vec(
                &r,
                BOT_REQUESTS_REFUSED_TOTAL,
                "Destinations (host:port) a bot's browser was refused by the address policy, once per destination and recording, by reason (metadata, link_local, loopback, private, reserved): a meeting page that tried to reach what it must not.",
                &["reason"],
            ),
            bots_silent: gauge(
                &r,
                POOL_BOTS_SILENT,
                "Busy bots whose socket is silent but whose recording may still grow in the store (not lost until the lost window passes without a new segment).",
            ),
            registry: r,
        };
        // Closed label sets start at zero, so rules and panels see them before the first event.
        for state in BOT_STATES {
            m.pool_bots.with_label_values(&[state.as_str()]).set(0);
        }
        for status in ACTIVE_STATUSES {
            m.recordings_active.with_label_values(&[status.as_str()]).set(0);
        }
        for level in ["warn", "error"] {
            m.bot_log_events.with_label_values(&[level]).inc_by(0);
        }
        for kind in recfleet_proto::protocol::BotMessage::KINDS {
            m.bot_messages.with_label_values(&[kind]).inc_by(0);
        }
        for result in ["delivered", "failed", "refused", "gave_up"] {
            m.webhook_deliveries.with_label_values(&[result]).inc_by(0);
        }
        for refusal in recfleet_proto::address::Refusal::ALL {
            m.requests_refused.with_label_values(&[refusal.as_str()]).inc_by(0);
        }
        for result in ["completed", "failed"] {
            m.recoveries.with_label_values(&[result]).inc_by(0);
        }
        m.recordings_finished.with_label_values(&["failed", "bot_crashed"]).inc_by(0);
        for setting in recfleet_proto::deadline::ALL {
            for by in [EnforcedBy::Bot, EnforcedBy::Controller] {
                m.deadlines_exceeded.with_label_values(&[setting.status.as_str(), by.as_str()]).inc_by(0);
            }
        }
        for result in HandoffResult::ALL {
            m.handoffs.with_label_values(&[result.as_str()]).inc_by(0);
        }
        m.state_write_failures.inc_by(0);
        m.launch_failures.inc_by(0);
        for status in RecordingStatus::ALL {
            for event in recfleet_proto::RecordingEvent::ALL.into_iter().filter(|e| status.next(*e).is_err()) {
                m.transitions_refused.with_label_values(&[status.as_str(), event.as_str()]).inc_by(0);
            }
        }
        m
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("encoding to memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    pub fn finished(&self, status: RecordingStatus, sub_code: Option<SubCode>) {
        let sub = sub_code.map_or("none", |s| s.as_str());
        self.recordings_finished.with_label_values(&[status.as_str(), sub]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention_and_all_are_exported() {
        let m = Metrics::new();
        m.start_latency.observe(0.3);
        m.finished(RecordingStatus::Completed, Some(SubCode::MeetingEnded));
        m.api_requests.with_label_values(&["/v1/pool", "GET", "200"]).inc();
        m.api_duration.with_label_values(&["/v1/pool", "GET"]).observe(0.001);
        let text = m.render();
        for name in names::ALL {
            assert!(name.starts_with("recfleet_"), "{name}");
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} is not exported:\n{text}");
        }
        assert!(text.contains(r#"recfleet_recordings_finished_total{status="completed",sub_code="meeting_ended"} 1"#), "{text}");
    }
}
