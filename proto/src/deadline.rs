//! Every non-terminal status has a deadline, so that nothing (a page that spins when asked to
//! leave, an encoder that hangs, a store that never answers) holds a bot forever
//! (docs/BOT.md#deadlines). The bot keeps each one itself; the controller enforces it again,
//! `CONTROLLER_MARGIN` later, on a bot that kept none (stuck, or an older build).
//!
//! The waiting room's deadline is the recipe's own `waiting_room_timeout_secs`. `queued` waits
//! for a bot, not in one, and `recording` lasts as long as the meeting (`max_duration_secs`).

use std::time::Duration;

use crate::RecordingStatus;

/// A deadline's setting: its flag, its environment variable (the controller passes its values
/// to the bots it launches through these), its default and its least value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub status: RecordingStatus,
    pub flag: &'static str,
    pub env: &'static str,
    pub default_secs: u64,
    pub min_secs: u64,
}

/// From the assignment to the call (page loads, every join attempt, a rejoin), without the
/// time in a waiting room.
pub const JOINING: Setting = Setting {
    status: RecordingStatus::Joining,
    flag: "--joining-deadline-secs",
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
    env: "RECFLEET_STOPPING_DEADLINE_SECS",
    default_secs: 30,
    // FFmpeg gets 5 s to close its last segment after `q`, then 5 s after SIGINT.
    min_secs: 15,
};

/// From the stopped capture to the MP4 made and checked and the uploads drained.
pub const FINALIZING: Setting = Setting {
    status: RecordingStatus::Finalizing,
    flag: "--finalizing-deadline-secs",
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
                return Err(DeadlineError { flag: setting.flag, min_secs: setting.min_secs, got_secs: value.as_secs() });
            }
        }
        Ok(())
    }

    /// The bot's deadline for `status`, if it has one of these (the waiting room's is the
    /// recipe's).
    pub fn of(&self, status: RecordingStatus) -> Option<Duration> {
        self.each().into_iter().find(|(s, _)| s.status == status).map(|(_, d)| d)
    }

    /// The environment that gives a launched bot these deadlines.
    pub fn env(&self) -> Vec<(String, String)> {
        self.each().into_iter().map(|(s, d)| (s.env.to_string(), d.as_secs().to_string())).collect()
    }
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
            assert!(err.to_string().starts_with(flag), "{err}");
        }
    }

    #[test]
    fn each_status_with_a_deadline_finds_it_and_the_bots_get_them_all() {
        let d = Deadlines { joining: Duration::from_secs(40), ..Default::default() };
        assert_eq!(d.of(RecordingStatus::Joining), Some(Duration::from_secs(40)));
        assert_eq!(d.of(RecordingStatus::Stopping), Some(Duration::from_secs(30)));
        assert_eq!(d.of(RecordingStatus::Recording), None);
        let env = d.env();
        assert!(env.contains(&("RECFLEET_JOINING_DEADLINE_SECS".into(), "40".into())), "{env:?}");
        assert_eq!(env.len(), ALL.len());
    }
}
