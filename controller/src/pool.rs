//! The warm pool's decision: a pure `plan(desired, observed)` that says how many bots to launch
//! or retire, and the pure estimates it is fed (`expected_starts`, `estimated_start`). The
//! runtime executes the plan and the pool re-plans on every change and on a tick.
//!
//! This module decides only; it must not launch, stop or assign anything.

use std::time::Duration;

/// `--pool-idle-ttl-secs`'s default: an idle bot above the target stays a minute, so demand
/// that comes and goes within one does not launch and retire bots over and over.
pub const DEFAULT_IDLE_TTL_SECS: u64 = 60;
/// `--pool-demand-window-secs`'s default: demand is read from the last minute's requests.
pub const DEFAULT_DEMAND_WINDOW_SECS: u64 = 60;

/// What the operator asked for, plus the demand: waiting now, and expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desired {
    /// Warm bots to keep idle when nothing waits (`--pool-min-idle`).
    pub min_idle: usize,
    /// Bots in all, whatever they do (`--pool-max`).
    pub max: usize,
    /// Recordings waiting for a bot.
    pub queued: usize,
    /// Requests expected while one launch takes (`expected_starts`): warm bots to keep on top
    /// of `min_idle`, so that a burst finds them rather than waiting a launch.
    pub expected: usize,
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
    /// Of the idle bots, those idle for longer than `--pool-idle-ttl-secs`: only these are
    /// retired when the pool has more idle than it wants.
    pub idle_expired: usize,
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

/// The actions that move `observed` toward `desired`. Queued recordings and expected requests
/// count as demand for idle bots on top of `min_idle`; bots already starting count as supply.
/// Never more than `max` bots in all; never retire a bot that is starting or busy. Idle bots
/// above what is wanted are retired once their idle TTL is over; above `max`, at once.
/// Refilling `min_idle` waits while a bot is joining; queued requests never wait for that.
pub fn plan(desired: Desired, observed: Observed) -> Vec<Action> {
    let wanted_idle = desired.min_idle + desired.expected + desired.queued;
    let coming = observed.idle + observed.starting;
    let defer_refill = observed.joining > 0 && desired.queued == 0;
    if coming < wanted_idle && !defer_refill {
        let room = desired.max.saturating_sub(observed.total());
        let launch = (wanted_idle - coming).min(room);
        return if launch > 0 { vec![Action::Launch(launch)] } else { Vec::new() };
    }
    // Too many: shrink idle bots down to what is wanted (those past their TTL), and the whole
    // pool down to max.
    let over_idle = observed.idle.saturating_sub(wanted_idle).min(observed.idle_expired);
    let over_max = observed.total().saturating_sub(desired.max).min(observed.idle);
    let retire = over_idle.max(over_max);
    if retire > 0 {
        vec![Action::Retire(retire)]
    } else {
        Vec::new()
    }
}

/// Requests expected while one launch takes: `requests` in the last `window`, times the
/// measured launch time, rounded. A pool that starts bots in 3 s and gets a request a minute
/// expects none; one on Fargate (a minute a launch) that got 8 in the last minute expects 8.
/// Nothing is expected without a window or a measured launch.
pub fn expected_starts(requests: usize, window: Duration, launch: Option<Duration>) -> usize {
    match launch {
        Some(launch) if !window.is_zero() => (requests as f64 * launch.as_secs_f64() / window.as_secs_f64()).round() as usize,
        _ => 0,
    }
}

/// The idle bots the pool keeps when nothing is queued: `min_idle` plus the expected requests,
/// within `max` (what `/v1/pool` and `recfleet_pool_target_idle_bots` show).
pub fn target_idle(desired: Desired) -> usize {
    (desired.min_idle + desired.expected).min(desired.max)
}

/// The launch time's moving average: each new launch weighs a fifth, so one slow start (a cold
/// host, a new image pulled) moves the estimate without taking it over.
pub fn moving_average(average: Option<Duration>, sample: Duration) -> Duration {
    match average {
        None => sample,
        Some(avg) => avg.mul_f64(0.8) + sample.mul_f64(0.2),
    }
}

/// When the `position`-th queued request (1 = next) is expected to get a bot, in seconds from
/// now: when the bot launched for it should be warm. `starting` holds how long each starting
/// bot has been starting, and `launch` the measured launch time. `None` when no bot is coming
/// for it (the pool is at `--pool-max`: it waits for a recording to end) or nothing was
/// measured yet.
pub fn estimated_start(position: usize, starting: &[Duration], launch: Option<Duration>) -> Option<f64> {
    let launch = launch?;
    let mut left: Vec<f64> = starting.iter().map(|age| launch.saturating_sub(*age).as_secs_f64()).collect();
    left.sort_by(f64::total_cmp);
    left.get(position.checked_sub(1)?).map(|secs| (secs * 10.0).round() / 10.0)
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
        Desired { min_idle, max, queued, expected: 0 }
    }

    fn expecting(mut desired: Desired, n: usize) -> Desired {
        desired.expected = n;
        desired
    }

    /// Idle bots all past their TTL unless `fresh` says otherwise.
    fn o(idle: usize, starting: usize, busy: usize) -> Observed {
        Observed { idle, starting, busy, joining: 0, idle_expired: idle }
    }

    fn fresh(mut obs: Observed, n: usize) -> Observed {
        obs.idle_expired = obs.idle - n;
        obs
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
            ("expected requests keep more warm", expecting(d(1, 8, 0), 2), o(1, 0, 0), &[Launch(2)]),
            ("expected and queued add up, capped by max", expecting(d(1, 8, 7), 2), o(0, 0, 1), &[Launch(7)]),
            ("expected bots are kept while expected", expecting(d(1, 8, 0), 2), o(3, 0, 0), &[]),
            ("idle bots within their TTL stay", d(1, 8, 0), fresh(o(3, 0, 0), 3), &[]),
            ("only those past their TTL retire", d(1, 8, 0), fresh(o(4, 0, 0), 2), &[Retire(2)]),
            ("past their TTL, down to what is wanted", d(1, 8, 0), fresh(o(4, 0, 0), 0), &[Retire(3)]),
            ("over max retires at once, TTL or not", d(0, 2, 0), fresh(o(3, 0, 1), 3), &[Retire(2)]),
        ];
        for (name, desired, observed, want) in cases {
            assert_eq!(plan(*desired, *observed), want.to_vec(), "{name}");
        }
    }

    #[test]
    fn expected_starts_table() {
        let s = Duration::from_secs;
        let cases: &[(&str, usize, Duration, Option<Duration>, usize)] = &[
            ("a request a minute, 3 s launches", 1, s(60), Some(s(3)), 0),
            ("a burst of 8, a minute a launch", 8, s(60), Some(s(60)), 8),
            ("8 a minute, 10 s launches", 8, s(60), Some(s(10)), 1),
            ("8 in 10 s, 10 s launches", 8, s(10), Some(s(10)), 8),
            ("nothing measured yet", 8, s(60), None, 0),
            ("no window: off", 8, Duration::ZERO, Some(s(10)), 0),
            ("no requests", 0, s(60), Some(s(60)), 0),
        ];
        for (name, requests, window, launch, want) in cases {
            assert_eq!(expected_starts(*requests, *window, *launch), *want, "{name}");
        }
    }

    #[test]
    fn the_launch_time_average_moves_a_fifth_toward_each_launch() {
        let s = Duration::from_secs;
        assert_eq!(moving_average(None, s(10)), s(10), "the first launch is the estimate");
        assert_eq!(moving_average(Some(s(10)), s(60)), s(20), "one slow launch moves it a fifth of the way");
        let settled = (0..30).fold(s(10), |avg, _| moving_average(Some(avg), s(60)));
        assert!((settled.as_secs_f64() - 60.0).abs() < 0.1, "launches that stay slow take it over: {settled:?}");
        assert_eq!(target_idle(expecting(d(2, 8, 5), 3)), 5, "min_idle plus the expected, queued aside");
        assert_eq!(target_idle(expecting(d(2, 4, 0), 9)), 4, "within max");
    }

    #[test]
    fn estimated_start_table() {
        let s = Duration::from_secs;
        // (name, position, how long each starting bot has been starting, launch time, want)
        type Case<'a> = (&'a str, usize, &'a [Duration], Option<Duration>, Option<f64>);
        let cases: &[Case] = &[
            ("the next one gets the bot closest to warm", 1, &[s(2), s(8)], Some(s(10)), Some(2.0)),
            ("the second the next closest", 2, &[s(2), s(8)], Some(s(10)), Some(8.0)),
            ("a bot past its expected time: any moment", 1, &[s(15)], Some(s(10)), Some(0.0)),
            ("no bot coming for it (at max)", 3, &[s(2), s(8)], Some(s(10)), None),
            ("nothing measured yet", 1, &[s(2)], None, None),
        ];
        for (name, position, starting, launch, want) in cases {
            assert_eq!(estimated_start(*position, starting, *launch), *want, "{name}");
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
                                for (expected, fresh_idle) in [(0, 0), (2, 0), (0, idle), (3, idle / 2)] {
                                    let obs = fresh(joining(o(idle, starting, busy), busy.min(1)), fresh_idle);
                                    let desired = expecting(d(min_idle, max, queued), expected);
                                    for action in plan(desired, obs) {
                                        match action {
                                            Action::Launch(n) => assert!(obs.total() + n <= max, "{obs:?} + {n} > {max}"),
                                            Action::Retire(n) => {
                                                assert!(n <= idle, "retires {n} of {idle} idle");
                                                // Within their TTL, idle bots go only to get under max.
                                                let over_max = obs.total().saturating_sub(max);
                                                assert!(n <= obs.idle_expired.max(over_max), "{desired:?} {obs:?}: retires {n}");
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
    }
}
