//! Every non-terminal status has a deadline, so that nothing (a page that spins when asked to
//! leave, an encoder that hangs, a store that never answers) holds a bot forever
//! (docs/BOT.md#deadlines). The bot keeps each one itself; the controller enforces it again,
//! `CONTROLLER_MARGIN` later, on a bot that kept none (stuck, or an older build).
//!
//! The waiting room's deadline is the recipe's own `waiting_room_timeout_secs`, and the join is
//! timed as one phase with it: the bot bounds the whole join (`join_limit`), the controller the
//! time in `joining` and `waiting_room` together. `queued` waits for a bot, not in one, and
//! `recording` lasts as long as the meeting (`max_duration_secs`).
//!
//! This module holds the rules only, pure: it must not keep time or act on a recording.

use std::time::{Duration, Instant};

use crate::RecordingStatus;

/// A deadline's setting: its flag, its environment variable (the controller passes its values
/// to the bots it launches through these), its default and its least value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub status: RecordingStatus,
    pub flag: &'static str,
    /// The setting's name in config errors (`joining_deadline_secs`).
    pub field: &'static str,
    pub env: &'static str,
    pub default_secs: u64,
    pub min_secs: u64,
}

/// From the assignment to the call (page loads, every join attempt, a rejoin), without the
/// time in a waiting room.
pub const JOINING: Setting = Setting {
    status: RecordingStatus::Joining,
    flag: "--joining-deadline-secs",
    field: "joining_deadline_secs",
    env: "RECFLEET_JOINING_DEADLINE_SECS",
    default_secs: 300,
    // One page load (30 s) must fit.
    min_secs: 30,
};

/// From the end of the meeting for the bot (a stop, the meeting's end, a limit) to the capture
/// stopped, the call left (the recipe's `leave`) and the browser, the sound server and the
/// display stopped.
pub const STOPPING: Setting = Setting {
    status: RecordingStatus::Stopping,
    flag: "--stopping-deadline-secs",
    field: "stopping_deadline_secs",
    env: "RECFLEET_STOPPING_DEADLINE_SECS",
    default_secs: 30,
    // FFmpeg's stop takes about 0.3 s and at worst 12 s (5 s after `q`, 5 s after SIGINT, 2 s
    // after SIGKILL); closing the browser and the other children takes about 1 s. Past the
    // deadline what still runs is killed, so a short one only cuts the polite steps short.
    min_secs: 15,
};

/// From the stopped capture to the MP4 made and checked and the uploads drained.
pub const FINALIZING: Setting = Setting {
    status: RecordingStatus::Finalizing,
    flag: "--finalizing-deadline-secs",
    field: "finalizing_deadline_secs",
    env: "RECFLEET_FINALIZING_DEADLINE_SECS",
    default_secs: 900,
    // The upload drain's default 30 s, and an MP4 of a short meeting.
    min_secs: 60,
};

pub const ALL: [Setting; 3] = [JOINING, STOPPING, FINALIZING];

/// How much later than the bot the controller enforces a deadline: time for the bot's own
/// enforcement and its report to arrive.
pub const CONTROLLER_MARGIN: Duration = Duration::from_secs(30);

/// The deadlines one bot keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    pub joining: Duration,
    pub stopping: Duration,
    pub finalizing: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            joining: Duration::from_secs(JOINING.default_secs),
            stopping: Duration::from_secs(STOPPING.default_secs),
            finalizing: Duration::from_secs(FINALIZING.default_secs),
        }
    }
}

/// A deadline below its least value, named by its flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} must be at least {min_secs} s, got {got_secs} s")]
pub struct DeadlineError {
    pub flag: &'static str,
    pub field: &'static str,
    pub min_secs: u64,
    pub got_secs: u64,
}

impl Deadlines {
    fn each(&self) -> [(Setting, Duration); 3] {
        [(JOINING, self.joining), (STOPPING, self.stopping), (FINALIZING, self.finalizing)]
    }

    /// Refuses a deadline below its least value.
    pub fn check(&self) -> Result<(), DeadlineError> {
        for (setting, value) in self.each() {
            if value < Duration::from_secs(setting.min_secs) {
                let (flag, field, min_secs) = (setting.flag, setting.field, setting.min_secs);
                return Err(DeadlineError { flag, field, min_secs, got_secs: value.as_secs() });
            }
        }
        Ok(())
    }

    /// How long the whole join may take: every attempt, and the waiting room's own limit when
    /// the recipe has one. The bot's bound, and the controller's on `joining` and
    /// `waiting_room` together.
    pub fn join_limit(&self, waiting_room: Option<Duration>) -> Duration {
        self.joining + waiting_room.unwrap_or_default()
    }

    /// How long a recording may stay in `status`'s phase (`phase`) with its bot, as the bot
    /// keeps it; `None` for the statuses without a deadline. The controller's `finalizing`
    /// begins at the bot's `ended`, before the bot stops, so it covers stopping too.
    pub fn limit_of(&self, status: RecordingStatus, waiting_room: Option<Duration>) -> Option<Duration> {
        match status {
            RecordingStatus::Joining | RecordingStatus::WaitingRoom => Some(self.join_limit(waiting_room)),
            RecordingStatus::Stopping => Some(self.stopping),
            RecordingStatus::Finalizing => Some(self.stopping + self.finalizing),
            RecordingStatus::Queued | RecordingStatus::Recording | RecordingStatus::Completed | RecordingStatus::Failed => None,
        }
    }

    /// The environment that gives a launched bot these deadlines.
    pub fn env(&self) -> Vec<(String, String)> {
        self.each().into_iter().map(|(s, d)| (s.env.to_string(), d.as_secs().to_string())).collect()
    }
}

/// The phase whose clock a status runs on: `waiting_room` is part of the join.
pub fn phase(status: RecordingStatus) -> RecordingStatus {
    match status {
        RecordingStatus::WaitingRoom => RecordingStatus::Joining,
        other => other,
    }
}

/// Pure: whether a phase entered at `since` has, at `now`, outlasted `limit` and the `margin`
/// the controller gives the bot on top.
pub fn is_overdue(since: Instant, now: Instant, limit: Duration, margin: Duration) -> bool {
    now.saturating_duration_since(since) > limit + margin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_pass_and_each_too_short_deadline_is_named_by_its_flag() {
        Deadlines::default().check().unwrap();
        let short = Duration::from_secs(5);
        for (deadlines, flag) in [
            (Deadlines { joining: short, ..Default::default() }, "--joining-deadline-secs"),
            (Deadlines { stopping: short, ..Default::default() }, "--stopping-deadline-secs"),
            (Deadlines { finalizing: short, ..Default::default() }, "--finalizing-deadline-secs"),
        ] {
            let err = deadlines.check().unwrap_err();
            assert_eq!(err.flag, flag);
            assert_eq!(err.field, flag.trim_start_matches('-').replace('-', "_"));
            assert!(err.to_string().starts_with(flag), "{err}");
        }
    }

    #[test]
    fn each_status_has_its_limit_and_the_join_is_one_phase_with_the_waiting_room() {
        let d = Deadlines { joining: Duration::from_secs(40), ..Default::default() };
        let room = Some(Duration::from_secs(120));
        assert_eq!(d.join_limit(None), Duration::from_secs(40));
        assert_eq!(d.limit_of(RecordingStatus::Joining, room), Some(Duration::from_secs(160)));
        assert_eq!(d.limit_of(RecordingStatus::WaitingRoom, room), Some(Duration::from_secs(160)));
        assert_eq!(phase(RecordingStatus::WaitingRoom), RecordingStatus::Joining);
        assert_eq!(phase(RecordingStatus::Stopping), RecordingStatus::Stopping);
        assert_eq!(d.limit_of(RecordingStatus::Stopping, None), Some(Duration::from_secs(30)));
        assert_eq!(d.limit_of(RecordingStatus::Finalizing, None), Some(Duration::from_secs(930)), "the bot's stop is in it");
        for none in [RecordingStatus::Queued, RecordingStatus::Recording, RecordingStatus::Completed, RecordingStatus::Failed] {
            assert_eq!(d.limit_of(none, room), None, "{none:?}");
        }
        let env = d.env();
        assert!(env.contains(&("RECFLEET_JOINING_DEADLINE_SECS".into(), "40".into())), "{env:?}");
        assert_eq!(env.len(), ALL.len());
    }

    #[test]
    fn overdue_means_past_the_limit_and_the_margin() {
        let (since, limit, margin) = (Instant::now(), Duration::from_secs(30), Duration::from_secs(30));
        for (after, overdue) in [(0, false), (30, false), (60, false), (61, true)] {
            assert_eq!(is_overdue(since, since + Duration::from_secs(after), limit, margin), overdue, "{after} s");
        }
        assert!(!is_overdue(since + Duration::from_secs(5), since, limit, margin), "a clock that went back is not overdue");
    }
}
