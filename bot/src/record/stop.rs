//! The end of a recording on its bot: the capture stopped (its last segment closed), the call
//! left with the recipe's `leave` when the bot is still in it, and the browser, the sound server
//! and the display stopped, all within the stopping deadline (docs/BOT.md#deadlines).
//!
//! This module must not finalize or upload: what is on disk when it returns is the recording.

use std::time::Duration;

use recfleet_proto::{EventKind, RecordingStatus, SubCode};

use super::Job;
use crate::capture::Capture;
use crate::join::{self, Identity};
use crate::session::Session;
use crate::watch::End;

/// What the stopping deadline keeps for closing the browser and stopping the other children
/// after the recipe's `leave`.
const SHUTDOWN_RESERVE: Duration = Duration::from_secs(10);

/// The least time worth trying the recipe's `leave` in.
const MIN_LEAVE_BUDGET: Duration = Duration::from_secs(1);

/// Whether the bot is still in the call when the recording ends this way, so that it should
/// leave: every end but the meeting's own, a closed page, a crashed one and a removal.
fn in_call_at(end: &End) -> bool {
    match end.sub_code {
        SubCode::MeetingEnded | SubCode::PageClosed | SubCode::PageCrashed | SubCode::Kicked => false,
        SubCode::EveryoneLeft
        | SubCode::StoppedByApi
        | SubCode::StoppedBySignal
        | SubCode::Preempted
        | SubCode::MaxDuration
        | SubCode::DiskFull
        | SubCode::CaptureFailed
        | SubCode::UploadFailed
        | SubCode::BotCrashed
        | SubCode::JoinFailed
        | SubCode::JoinDenied
        | SubCode::WaitingRoomTimeout
        | SubCode::InvalidUrl => true,
    }
}

impl Job<'_> {
    /// Stops the capture (its last segment closed), leaves the call when the bot is still in it
    /// (the recipe's `leave`, `in_call_at`), and stops the browser, the sound server and the display, all
    /// within the stopping deadline. Past it, whatever still runs is killed (dropped: every
    /// child is killed on drop) and what is on disk is finalized: a page that spins when asked
    /// to leave cannot hold the bot.
    pub(super) async fn stop_in_time(&self, mut capture: Capture, session: Session, end: &End) {
        let limit = self.cfg.deadlines.stopping;
        let started = std::time::Instant::now();
        let stopping = async move {
            let ffmpeg_exit = capture.stop().await;
            tracing::debug!(ffmpeg = %ffmpeg_exit, "capture stopped");
            drop(capture);
            if let Some(recipe) = self.cfg.recipe.as_ref().filter(|r| !r.leave.is_empty() && in_call_at(end)) {
                // The browser's polite close and the other children's stops need the rest.
                let budget = limit.saturating_sub(started.elapsed()).saturating_sub(SHUTDOWN_RESERVE);
                self.leave(&session.chromium.page, recipe, budget).await;
            }
            session.shutdown().await;
        };
        if tokio::time::timeout(limit, stopping).await.is_err() {
            tracing::warn!(
                deadline_secs = limit.as_secs(),
                "stopping outlasted its deadline (--stopping-deadline-secs): killed what still ran"
            );
            self.journal.record(EventKind::DeadlineExceeded { status: RecordingStatus::Stopping, secs: limit.as_secs() });
        }
    }

    /// Runs the recipe's `leave` steps within `budget`, and says how it went on the timeline.
    async fn leave(&self, page: &chromiumoxide::Page, recipe: &recfleet_proto::Recipe, budget: Duration) {
        if budget < MIN_LEAVE_BUDGET {
            let reason = "no time was left for it within the stopping deadline (--stopping-deadline-secs)".to_string();
            tracing::warn!(%reason, "not leaving the call; closing the browser");
            self.journal.record(EventKind::LeaveFailed { reason });
            return;
        }
        let started = std::time::Instant::now();
        let who = Identity { bot_name: self.cfg.bot_name.clone(), recording_id: self.cfg.recording_id.clone() };
        let reason = match tokio::time::timeout(budget, join::leave(page, recipe, &who)).await {
            Ok(Ok(())) => {
                let ms = started.elapsed().as_millis() as u64;
                tracing::info!(ms, "left the call");
                self.journal.record(EventKind::Left { ms });
                return;
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("the page did not finish leaving within {} ms", budget.as_millis()),
        };
        tracing::warn!(%reason, "could not leave the call; closing the browser");
        self.journal.record(EventKind::LeaveFailed { reason });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bot_leaves_only_a_call_it_is_still_in() {
        use SubCode as S;
        for (code, leaves) in [
            (S::MeetingEnded, false),
            (S::PageClosed, false),
            (S::PageCrashed, false),
            (S::Kicked, false),
            (S::StoppedByApi, true),
            (S::StoppedBySignal, true),
            (S::MaxDuration, true),
            (S::EveryoneLeft, true),
            (S::CaptureFailed, true),
        ] {
            assert_eq!(in_call_at(&End::new(code, "")), leaves, "{code}");
        }
    }
}
