//! A bot's lifecycle as the controller sees it: a plain enum with a pure `next`, and the
//! liveness rule (how long a bot may be silent) as a pure function of a `now` passed in.
//!
//! This module decides; it must not do I/O, hold bots, or talk to a runtime (the manager does,
//! with what this module decides).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A launched (or re-adopted) bot must connect and warm up within this, unless its runtime
/// says otherwise (`Runtime::startup_timeout`: an ECS task takes longer).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// A connected bot silent this long is declared lost.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);
/// A warm or busy bot that lost its connection must be back within this (it keeps recording
/// meanwhile; its reconnection backoff tops out at 5 s).
pub const RECONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A busy bot is lost only after this long without a sign of life on its socket *or* a new
/// segment of its recording in the store (`--lost-window-secs`): a partition between it and the
/// controller must not get a live recording finalized.
pub const DEFAULT_LOST_WINDOW: Duration = Duration::from_secs(60);

/// Where a bot is in its (single-use) life. Bots that exit or are lost leave the fleet; they
/// have no state of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BotState {
    /// Launched; warming up (Xvfb, PulseAudio, Chromium) or not yet connected.
    Starting,
    /// Warm and connected: can take a recording at once.
    Idle,
    /// Has its one recording.
    Busy,
}

/// What can happen to a bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BotEvent {
    /// The bot says it is warm (`Ready`, or `Hello` with `ready`, again after a reconnection).
    Ready,
    /// A recording was given to it.
    Assigned,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bot cannot go from {from:?} on {event:?}")]
pub struct BotTransitionError {
    pub from: BotState,
    pub event: BotEvent,
}

impl BotState {
    pub fn as_str(self) -> &'static str {
        match self {
            BotState::Starting => "starting",
            BotState::Idle => "idle",
            BotState::Busy => "busy",
        }
    }

    /// The one place that says which bot transitions exist. A repeated `Ready` (after a
    /// reconnection) changes nothing.
    pub fn next(self, event: BotEvent) -> Result<BotState, BotTransitionError> {
        use BotEvent as E;
        use BotState as S;
        match (self, event) {
            (S::Starting, E::Ready) => Ok(S::Idle),
            (S::Idle, E::Ready) => Ok(S::Idle),
            (S::Busy, E::Ready) => Ok(S::Busy),
            (S::Idle, E::Assigned) => Ok(S::Busy),
            (S::Starting | S::Busy, E::Assigned) => Err(BotTransitionError { from: self, event }),
        }
    }

    /// The state as stored (`bots.state`).
    pub fn parse(s: &str) -> Result<BotState, serde_json::Error> {
        serde_json::from_value(serde_json::Value::String(s.to_string()))
    }
}

/// What the controller knows of a bot's liveness.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    pub state: BotState,
    pub connected: bool,
    pub last_seen: Instant,
    /// How long its runtime gives a launch to connect and warm up.
    pub startup: Duration,
    /// When a new segment of its recording was last seen in the store (busy bots).
    pub stored_at: Option<Instant>,
    /// How long a busy bot may show no sign of life at all.
    pub lost_window: Duration,
}

/// How long a bot in this situation may be silent before it is declared lost.
pub fn silence_limit(state: BotState, connected: bool, startup: Duration) -> Duration {
    match (state, connected) {
        (BotState::Starting, _) => startup,
        (BotState::Idle | BotState::Busy, false) => RECONNECT_TIMEOUT,
        (BotState::Idle | BotState::Busy, true) => HEARTBEAT_TIMEOUT,
    }
}

/// True when a bot's socket has been silent longer than its situation allows, at `now`.
fn is_silent(bot: Liveness, now: Instant) -> bool {
    now.saturating_duration_since(bot.last_seen) > silence_limit(bot.state, bot.connected, bot.startup)
}

/// True when a bot is lost at `now`: silent past its limit and, when it is busy, without a new
/// stored segment either for the lost window.
pub fn is_lost(bot: Liveness, now: Instant) -> bool {
    if !is_silent(bot, now) {
        return false;
    }
    if bot.state != BotState::Busy {
        return true;
    }
    let last_sign = bot.stored_at.map_or(bot.last_seen, |at| at.max(bot.last_seen));
    now.saturating_duration_since(last_sign) > bot.lost_window
}

/// True when a busy bot's socket is silent but the bot is not lost yet: the store is asked
/// whether its recording still grows.
pub fn is_suspect(bot: Liveness, now: Instant) -> bool {
    bot.state == BotState::Busy && is_silent(bot, now) && !is_lost(bot, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use BotEvent as E;
    use BotState as S;

    const ALL_STATES: [S; 3] = [S::Starting, S::Idle, S::Busy];
    const ALL_EVENTS: [E; 2] = [E::Ready, E::Assigned];
    const ALLOWED: &[(S, E, S)] =
        &[(S::Starting, E::Ready, S::Idle), (S::Idle, E::Ready, S::Idle), (S::Busy, E::Ready, S::Busy), (S::Idle, E::Assigned, S::Busy)];

    #[test]
    fn every_bot_pair_is_allowed_or_refused_as_the_table_says() {
        for from in ALL_STATES {
            for event in ALL_EVENTS {
                let expected = ALLOWED.iter().find(|(f, e, _)| *f == from && *e == event).map(|(_, _, to)| *to);
                match (from.next(event), expected) {
                    (Ok(to), Some(want)) => assert_eq!(to, want, "{from:?} on {event:?}"),
                    (Err(err), None) => assert_eq!(err, BotTransitionError { from, event }),
                    (got, want) => panic!("{from:?} on {event:?}: got {got:?}, table says {want:?}"),
                }
            }
        }
    }

    #[test]
    fn stored_states_parse_back_and_unknown_ones_are_errors() {
        for state in ALL_STATES {
            assert_eq!(BotState::parse(state.as_str()).unwrap(), state);
        }
        assert!(BotState::parse("retired").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_follows_the_clock_passed_in() {
        let seen = tokio::time::Instant::now().into_std();
        let bot = |state, connected| Liveness {
            state,
            connected,
            last_seen: seen,
            startup: STARTUP_TIMEOUT,
            stored_at: None,
            lost_window: HEARTBEAT_TIMEOUT,
        };
        tokio::time::advance(HEARTBEAT_TIMEOUT + Duration::from_millis(1)).await;
        let now = tokio::time::Instant::now().into_std();
        assert!(is_lost(bot(S::Busy, true), now), "a connected bot past the heartbeat timeout");
        assert!(is_lost(bot(S::Idle, true), now));
        assert!(!is_lost(bot(S::Busy, false), now), "a disconnected one gets the reconnection window");
        assert!(!is_lost(bot(S::Starting, false), now), "a starting one gets the startup window");
        tokio::time::advance(RECONNECT_TIMEOUT).await;
        let now = tokio::time::Instant::now().into_std();
        assert!(is_lost(bot(S::Idle, false), now));
        assert!(!is_lost(bot(S::Starting, true), now));
        tokio::time::advance(STARTUP_TIMEOUT).await;
        assert!(is_lost(bot(S::Starting, true), tokio::time::Instant::now().into_std()));
        // A `now` before the last sighting (clocks read out of order) is not a loss.
        assert!(!is_lost(bot(S::Busy, true), seen - Duration::from_secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_bot_is_lost_only_when_neither_its_socket_nor_the_store_shows_life() {
        let seen = tokio::time::Instant::now().into_std();
        let busy = |connected, stored_at| Liveness {
            state: S::Busy,
            connected,
            last_seen: seen,
            startup: STARTUP_TIMEOUT,
            stored_at,
            lost_window: DEFAULT_LOST_WINDOW,
        };
        let at = |secs: u64| seen + Duration::from_secs(secs);
        // Silent past the heartbeat timeout: suspect, not lost, for the whole window.
        assert!(!is_suspect(busy(true, None), at(5)) && !is_lost(busy(true, None), at(5)));
        assert!(is_suspect(busy(true, None), at(11)) && !is_lost(busy(true, None), at(11)));
        assert!(is_suspect(busy(false, None), at(59)), "disconnected: suspect after the reconnection window");
        assert!(!is_suspect(busy(false, None), at(29)));
        assert!(is_lost(busy(true, None), at(61)) && !is_suspect(busy(true, None), at(61)), "nothing for 60 s: lost");
        // Segments still arriving in the store keep it alive, however long the socket is silent.
        assert!(!is_lost(busy(false, Some(at(290))), at(300)) && is_suspect(busy(false, Some(at(290))), at(300)));
        assert!(is_lost(busy(false, Some(at(290))), at(351)), "the store went quiet too");
        // Idle and starting bots keep the socket rule alone.
        let idle = Liveness { state: S::Idle, ..busy(true, Some(at(20))) };
        assert!(is_lost(idle, at(11)) && !is_suspect(idle, at(11)));
    }
}
