//! The warm pool's decision: a pure `plan(desired, observed)` that says how many bots to launch
//! or retire. The runtime executes it and the pool re-plans on every change and on error.
//!
//! This module decides only; it must not launch, stop or assign anything.

/// What the operator asked for, plus the demand waiting now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desired {
    /// Warm bots to keep idle when nothing waits (`--pool-min-idle`).
    pub min_idle: usize,
    /// Bots in all, whatever they do (`--pool-max`).
    pub max: usize,
    /// Recordings waiting for a bot.
    pub queued: usize,
}

/// What the pool has now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    /// Warm and connected, with no recording.
    pub idle: usize,
    /// Launched, not yet warm.
    pub starting: usize,
    /// Recording (single-use: they leave when done).
    pub busy: usize,
    /// Of the busy bots, those assigned but not yet recording. A new bot's start (Chromium
    /// takes about a core for a second) would slow their join and first frame on a small host.
    pub joining: usize,
}

impl Observed {
    pub fn total(&self) -> usize {
        self.idle + self.starting + self.busy
    }
}

/// One step toward the desired pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start this many new bots.
    Launch(usize),
    /// Stop this many idle bots (the pool shrank or has more idle than it needs).
    Retire(usize),
}

/// The actions that move `observed` toward `desired`. Queued recordings count as demand for
/// idle bots on top of `min_idle`; bots already starting count as supply. Never more than
/// `max` bots in all; never retire a bot that is starting or busy. Refilling `min_idle` waits
/// while a bot is joining; queued requests never wait for that.
pub fn plan(desired: Desired, observed: Observed) -> Vec<Action> {
    let wanted_idle = desired.min_idle + desired.queued;
    let coming = observed.idle + observed.starting;
    let defer_refill = observed.joining > 0 && desired.queued == 0;
    if coming < wanted_idle && !defer_refill {
        let room = desired.max.saturating_sub(observed.total());
        let launch = (wanted_idle - coming).min(room);
        return if launch > 0 { vec![Action::Launch(launch)] } else { Vec::new() };
    }
    // Too many: shrink idle bots down to what is wanted, and the whole pool down to max.
    let over_idle = observed.idle.saturating_sub(wanted_idle);
    let over_max = observed.total().saturating_sub(desired.max).min(observed.idle);
    let retire = over_idle.max(over_max);
    if retire > 0 {
        vec![Action::Retire(retire)]
    } else {
        Vec::new()
    }
}

/// The first wait after a launch failure; each further failure in a row doubles it.
pub const LAUNCH_BACKOFF_FIRST: std::time::Duration = std::time::Duration::from_secs(1);
/// The longest wait between launch attempts while launches keep failing.
pub const LAUNCH_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// How long to hold launches after `failures` launch failures in a row (a bot that exits before
/// it is warm, or a runtime that cannot start one): none after none, then 1 s, 2 s, 4 s, …
/// capped at a minute. A start that cannot succeed then costs a launch a minute, not one a tick.
pub fn launch_backoff(failures: u32) -> std::time::Duration {
    match failures {
        0 => std::time::Duration::ZERO,
        n => LAUNCH_BACKOFF_FIRST.saturating_mul(1u32 << (n - 1).min(16)).min(LAUNCH_BACKOFF_MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_backoff_doubles_and_is_capped() {
        let secs = |n| launch_backoff(n).as_secs();
        let cases: &[(u32, u64)] = &[(0, 0), (1, 1), (2, 2), (3, 4), (4, 8), (6, 32), (7, 60), (20, 60), (u32::MAX, 60)];
        for (failures, want) in cases {
            assert_eq!(secs(*failures), *want, "after {failures} failures");
        }
    }

    fn d(min_idle: usize, max: usize, queued: usize) -> Desired {
        Desired { min_idle, max, queued }
    }

    fn o(idle: usize, starting: usize, busy: usize) -> Observed {
        Observed { idle, starting, busy, joining: 0 }
    }

    fn joining(mut obs: Observed, n: usize) -> Observed {
        obs.joining = n;
        obs
    }

    #[test]
    fn table() {
        use Action::*;
        let cases: &[(&str, Desired, Observed, &[Action])] = &[
            ("empty pool fills to min_idle", d(1, 4, 0), o(0, 0, 0), &[Launch(1)]),
            ("warm pool at rest", d(1, 4, 0), o(1, 0, 0), &[]),
            ("a starting bot counts as supply", d(1, 4, 0), o(0, 1, 0), &[]),
            ("refill after an assignment", d(1, 4, 0), o(0, 0, 1), &[Launch(1)]),
            ("queued requests add demand", d(1, 4, 2), o(0, 0, 1), &[Launch(3)]),
            ("demand is capped by max", d(1, 4, 5), o(0, 0, 2), &[Launch(2)]),
            ("at max with requests queued: wait", d(1, 4, 3), o(0, 0, 4), &[]),
            ("starting bots already cover the queue", d(1, 4, 1), o(0, 2, 1), &[]),
            ("too many idle bots are retired", d(1, 4, 0), o(3, 0, 0), &[Retire(2)]),
            ("min_idle 0 keeps nothing warm", d(0, 4, 0), o(1, 0, 2), &[Retire(1)]),
            ("max lowered below busy: retire idle only", d(1, 2, 0), o(1, 0, 3), &[Retire(1)]),
            ("busy bots are never retired", d(0, 1, 0), o(0, 0, 3), &[]),
            ("max 0 launches nothing", d(1, 0, 1), o(0, 0, 0), &[]),
            ("refill waits while a bot joins", d(1, 4, 0), joining(o(0, 0, 1), 1), &[]),
            ("refill goes once it records", d(1, 4, 0), joining(o(0, 0, 1), 0), &[Launch(1)]),
            ("queued requests do not wait for a join", d(1, 4, 1), joining(o(0, 0, 1), 1), &[Launch(2)]),
        ];
        for (name, desired, observed, want) in cases {
            assert_eq!(plan(*desired, *observed), want.to_vec(), "{name}");
        }
    }

    #[test]
    fn plan_never_exceeds_max() {
        for min_idle in 0..4 {
            for max in 0..5 {
                for queued in 0..5 {
                    for idle in 0..5 {
                        for starting in 0..3 {
                            for busy in 0..5 {
                                let obs = joining(o(idle, starting, busy), busy.min(1));
                                for action in plan(d(min_idle, max, queued), obs) {
                                    match action {
                                        Action::Launch(n) => assert!(obs.total() + n <= max, "{obs:?} + {n} > {max}"),
                                        Action::Retire(n) => assert!(n <= idle, "retires {n} of {idle} idle"),
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
