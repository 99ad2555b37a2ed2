//! The fleet as the manager sees it: bot messages (dispatched to the recording and telemetry
//! halves), bot exits and their typed reasons, liveness (a pure function of `now`, in
//! `crate::fleet`), and the warm pool: the pure `pool::plan` executed through the runtime, with
//! the launch back-off.
//!
//! A bot that keeps a recording past its status's deadline is stopped here (the recording half
//! says which are overdue and ends them).
//!
//! Bot states change only through `BotState::next`; this module must not change a recording's
//! status (it calls the recording half) or write to the store.

use std::time::{Duration, Instant};

use recfleet_proto::protocol::{BotMessage, ControllerMessage, Outcome};
use recfleet_proto::{EventKind, RecordingStatus, SubCode};
use time::OffsetDateTime;

use super::{Bot, Heartbeat, Manager, Vitals, EXIT_GRACE, STORE_PROBE_EVERY};
use crate::fleet::{BotEvent, BotState, Liveness};
use crate::metrics::EnforcedBy;
use crate::pool::{self, Action, Desired, Observed};
use crate::runtime::{ExitReason, Exited, LaunchSpec};
use crate::store::{token_hash, LogKind};

impl Manager {
    /// Bot messages come over a connection authenticated at its start. Messages about a
    /// recording are applied even when the bot is already gone: its exit can be seen before its
    /// last messages.
    pub(super) fn on_bot_message(&mut self, bot_id: &str, msg: BotMessage) {
        if let Some(bot) = self.bots.get_mut(bot_id) {
            bot.last_seen = Instant::now();
        }
        match msg {
            BotMessage::Hello { ready: true, .. } | BotMessage::Ready => {
                if let Some(bot) = self.bots.get_mut(bot_id) {
                    match bot.state.next(BotEvent::Ready) {
                        Ok(next) if next != bot.state => {
                            bot.state = next;
                            bot.idle_since = Some(Instant::now());
                            if let Some(launched) = bot.launched_at.take() {
                                let took = launched.elapsed();
                                self.cfg.metrics.launch_duration.observe(took.as_secs_f64());
                                self.launch_time = Some(pool::moving_average(self.launch_time, took));
                            }
                            self.dirty_bots.push(bot_id.to_string());
                            // A bot got warm: launches work again.
                            self.launch_failures = 0;
                            self.launch_held_until = None;
                        }
                        Ok(_) => {}
                        Err(err) => tracing::warn!(error = %err, "bot state change refused"),
                    }
                }
            }
            BotMessage::Hello { ready: false, .. } => {}
            BotMessage::Heartbeat { capture, cpu_cores, rss_bytes, upload } => {
                self.on_heartbeat(bot_id, Heartbeat { capture, cpu_cores, rss_bytes, upload });
            }
            BotMessage::StateChanged { recording_id, status, .. } => {
                // The controller applies the bot's events through the same table; the bot's own
                // word is a cross-check (it may run ahead: its Finished is still on the way).
                if let Some(entry) = self.recordings.get(&recording_id).filter(|e| e.stored.view.status != status) {
                    tracing::debug!(bot = status.as_str(), controller = entry.stored.view.status.as_str(), "bot reports another status");
                }
            }
            // A called-off successor's word on the recording changes nothing.
            BotMessage::SegmentStored { .. } | BotMessage::Timeline { .. } if self.called_off(bot_id) => {}
            BotMessage::SegmentStored { recording_id, segment, upload_lag_ms } => {
                if let Some(bot) = self.bots.get_mut(bot_id) {
                    bot.store_sign.sequence = bot.store_sign.sequence.max(segment.sequence);
                }
                let m = &self.cfg.metrics;
                if let Some(lag) = upload_lag_ms {
                    m.upload_lag.observe(lag as f64 / 1000.0);
                }
                if segment.sequence > 0 {
                    m.segments_stored.inc();
                    if let Some(entry) = self.recordings.get_mut(&recording_id).filter(|e| !e.viewable) {
                        entry.viewable = true;
                        m.time_to_view.observe(seconds_since(entry.stored.view.created_at));
                    }
                }
                self.touch(&recording_id, LogKind::SegmentStored, serde_json::to_value(&segment).expect("serializes"));
                self.relay_segment(bot_id, &recording_id, &segment);
            }
            BotMessage::HandoffRequested { recording_id, last_sequence, successor_first_sequence, successor_generation } => {
                let req = super::handoff::Request {
                    recording_id,
                    last_sequence,
                    first_sequence: successor_first_sequence,
                    generation: successor_generation,
                };
                self.on_handoff_requested(bot_id, req);
            }
            BotMessage::HandoffWithdrawn { recording_id } => self.on_handoff_withdrawn(bot_id, &recording_id),
            BotMessage::Log { level, message, fields } => self.on_bot_log(bot_id, level, &message, fields),
            BotMessage::Timeline { recording_id, event } => {
                if matches!(event.kind, EventKind::Ended { sub_code: SubCode::StoppedBySignal, .. }) {
                    // Its host signalled it: ask the runtime why before its `Finished` comes.
                    self.runtime.look(bot_id);
                }
                self.apply_event(&recording_id, &event)
            }
            BotMessage::Finished { recording_id, mut outcome } => {
                if self.handoff_finished(bot_id, &recording_id, &outcome) {
                    return;
                }
                if let Some(why) = self.runtime.preempted(bot_id) {
                    if preempted(&mut outcome) {
                        tracing::info!(%recording_id, why = %why, "the bot's host was taken back");
                    }
                }
                self.finish(&recording_id, outcome)
            }
        }
    }

    pub(super) fn bot_exited(&mut self, exit: Exited) {
        if exit.reason == ExitReason::Preempted {
            self.cfg.metrics.bots_preempted.inc();
        }
        let Some(bot) = self.bots.remove(&exit.bot_id) else { return };
        self.dirty_bots.push(exit.bot_id.clone());
        tracing::info!(bot_id = %exit.bot_id, reason = exit.reason.as_str(), detail = %exit.detail, "bot exited");
        let never_warm = bot.state == BotState::Starting;
        match exit.reason {
            ExitReason::LaunchFailed => self.launch_failed(&exit.detail),
            ExitReason::Crashed | ExitReason::Finished | ExitReason::Preempted if never_warm => {
                self.launch_failed(&format!("the bot exited before it was warm: {}", exit.detail))
            }
            ExitReason::Crashed | ExitReason::Finished | ExitReason::Stopped | ExitReason::Preempted => {}
        }
        if let Some(id) = bot.recording {
            if !self.handoff_bot_gone(&exit.bot_id, bot.handoff.as_ref(), &id) {
                // Decided after `EXIT_GRACE`, when its last messages have had time to land.
                self.orphaned.insert(id, (Instant::now(), exit.detail, exit.reason));
            }
        }
    }

    /// Recordings whose bot exited without `Finished` within the grace are the bot's crash.
    pub(super) fn settle_orphans(&mut self) {
        let due: Vec<(String, String, ExitReason)> = self
            .orphaned
            .iter()
            .filter(|(_, (at, _, _))| at.elapsed() >= EXIT_GRACE)
            .map(|(id, (_, detail, reason))| (id.clone(), detail.clone(), *reason))
            .collect();
        for (id, detail, reason) in due {
            self.orphaned.remove(&id);
            self.cfg.metrics.bots_lost.inc();
            if reason == ExitReason::Preempted {
                self.mark_ended_by(&id, SubCode::Preempted, "preempted", &format!("the bot's host was taken back: {detail}"));
            } else {
                self.mark_crashed(&id, "bot_crashed", &format!("the bot exited before finishing: {detail}"));
            }
        }
    }

    fn liveness(&self, bot: &Bot) -> Liveness {
        Liveness {
            state: bot.state,
            connected: bot.tx.is_some(),
            last_seen: bot.last_seen,
            startup: self.runtime.startup_timeout(),
            stored_at: bot.store_sign.grew_at,
            lost_window: self.cfg.lost_window,
        }
    }

    pub(super) fn find_lost_bots(&mut self) {
        let now = Instant::now();
        let startup = self.runtime.startup_timeout();
        let lost: Vec<String> =
            self.bots.iter().filter(|(_, b)| crate::fleet::is_lost(self.liveness(b), now)).map(|(id, _)| id.clone()).collect();
        for id in lost {
            let busy = self.bots.get(&id).is_some_and(|b| b.state == BotState::Busy);
            if busy {
                let window = self.cfg.lost_window;
                tracing::warn!(bot_id = %id, ?window, "bot silent and its recording not growing in the store: declared lost");
            } else {
                tracing::warn!(bot_id = %id, "bot silent too long: declared lost");
            }
            self.cfg.metrics.bots_lost.inc();
            self.runtime.stop(&id);
            self.dirty_bots.push(id.clone());
            let Some(bot) = self.bots.remove(&id) else { continue };
            if bot.state == BotState::Starting {
                self.launch_failed(&format!("the bot did not connect and warm up within {startup:?}"));
            }
            if let Some(rec) = bot.recording {
                if !self.handoff_bot_gone(&id, bot.handoff.as_ref(), &rec) {
                    self.mark_crashed(&rec, "bot_lost", "the bot stopped heartbeating and its recording stopped growing in the store");
                }
            }
        }
    }

    /// Recordings stuck in a status past its deadline, which their bot did not keep (it hangs,
    /// or it is an older build): the bot is stopped and the recording ended, what it stored
    /// finalized from the store, as for a lost bot.
    pub(super) fn enforce_deadlines(&mut self) {
        // A bot cut off from the controller is the liveness rule's (it may still record and
        // store): its phases' clocks start again when it is back.
        let (held, away): (Vec<_>, Vec<_>) = self.bots.values().filter(|b| b.recording.is_some()).partition(|b| b.tx.is_some());
        let held: Vec<String> = held.into_iter().filter_map(|b| b.recording.clone()).collect();
        let away: Vec<String> = away.into_iter().filter_map(|b| b.recording.clone()).collect();
        for id in &away {
            self.forget_phase(id);
        }
        for (id, status, limit) in self.overdue(&held, Instant::now()) {
            let Some(bot_id) = self.bots.iter().find(|(_, b)| b.recording.as_deref() == Some(id.as_str())).map(|(k, _)| k.clone()) else {
                continue;
            };
            let (deadline_secs, margin_secs) = (limit.as_secs(), self.cfg.deadline_margin.as_secs());
            tracing::warn!(recording_id = %id, %bot_id, status = status.as_str(), deadline_secs, margin_secs, "deadline exceeded: stopping the bot");
            self.cfg.metrics.deadlines_exceeded.with_label_values(&[status.as_str(), EnforcedBy::Controller.as_str()]).inc();
            self.runtime.stop(&bot_id);
            self.dirty_bots.push(bot_id.clone());
            self.bots.remove(&bot_id);
            let why = format!(
                "the recording stayed {} {} s past its deadline of {deadline_secs} s: its bot was stopped",
                status.as_str(),
                margin_secs
            );
            self.mark_overdue(&id, status, &why);
        }
    }

    /// Asks the store, for each busy bot whose socket is silent (a partition, a controller
    /// restart), whether its recording still grows: at most one probe per bot in flight, one per
    /// `STORE_PROBE_EVERY`. The manager does no I/O: a task lists and reports back.
    pub(super) fn probe_silent_bots(&mut self) {
        let now = Instant::now();
        let suspects: Vec<String> = self
            .bots
            .iter()
            .filter(|(_, b)| b.recording.is_some() && !b.store_sign.probing)
            .filter(|(_, b)| b.store_sign.probed_at.is_none_or(|at| now.saturating_duration_since(at) >= STORE_PROBE_EVERY))
            .filter(|(_, b)| crate::fleet::is_suspect(self.liveness(b), now))
            .map(|(id, _)| id.clone())
            .collect();
        self.cfg.metrics.bots_silent.set(self.bots.values().filter(|b| crate::fleet::is_suspect(self.liveness(b), now)).count() as i64);
        for id in suspects {
            let Some(bot) = self.bots.get_mut(&id) else { continue };
            let Some(recording_id) = bot.recording.clone() else { continue };
            bot.store_sign.probing = true;
            bot.store_sign.probed_at = Some(now);
            let after = recfleet_media::segment_name(bot.store_sign.sequence);
            let (objects, tx) = (self.cfg.objects.clone(), self.probed_tx.clone());
            tokio::spawn(async move {
                use recfleet_storage::ObjectStore;
                let prefix = recfleet_storage::recording_key(&recording_id, "");
                let found = objects.list_after(&prefix, &after).await.map_err(|e| e.to_string());
                let highest = found.map(|objs| objs.iter().filter_map(|o| recfleet_media::sequence_of(&o.name)).max());
                let _ = tx.send((id, highest));
            });
        }
    }

    /// What a store probe found: a new segment is a sign of life.
    pub(super) fn store_probed(&mut self, bot_id: &str, result: Result<Option<u64>, String>) {
        let Some(bot) = self.bots.get_mut(bot_id) else { return };
        bot.store_sign.probing = false;
        match result {
            Ok(Some(sequence)) if sequence > bot.store_sign.sequence => {
                let silent = bot.last_seen.elapsed();
                tracing::info!(bot_id, sequence, ?silent, "the bot is silent but its recording still grows in the store: not lost");
                bot.store_sign.sequence = sequence;
                bot.store_sign.grew_at = Some(Instant::now());
            }
            Ok(_) => tracing::debug!(bot_id, "no new segment in the store"),
            Err(err) => tracing::warn!(bot_id, error = %err, "cannot probe the store for a silent bot"),
        }
    }

    /// The pool as it is: one pass over the bots (a large fleet asks this often).
    pub(super) fn observed(&self) -> Observed {
        let mut o = Observed { idle: 0, starting: 0, busy: 0, joining: 0, idle_expired: 0 };
        for bot in self.bots.values() {
            match bot.state {
                BotState::Idle => {
                    o.idle += 1;
                    if bot.idle_since.is_none_or(|since| since.elapsed() >= self.cfg.idle_ttl) {
                        o.idle_expired += 1;
                    }
                }
                BotState::Starting => o.starting += 1,
                BotState::Busy => o.busy += 1,
            }
            let joining = bot.recording.as_ref().and_then(|id| self.recordings.get(id)).map(|e| e.stored.view.status);
            if matches!(joining, Some(RecordingStatus::Joining | RecordingStatus::WaitingRoom)) {
                o.joining += 1;
            }
        }
        o
    }

    pub(super) fn reconcile(&mut self) {
        if self.pool_frozen {
            return;
        }
        for action in pool::plan(self.desired(), self.observed()) {
            match action {
                Action::Launch(_) if self.launch_held_for(Instant::now()).is_some() => {}
                Action::Launch(n) => {
                    for _ in 0..n {
                        self.launch();
                    }
                }
                Action::Retire(n) => {
                    // The longest idle first: those past their TTL.
                    let mut idle: Vec<(&String, Option<Instant>)> =
                        self.bots.iter().filter(|(_, b)| b.state == BotState::Idle).map(|(id, b)| (id, b.idle_since)).collect();
                    idle.sort_by_key(|(_, since)| *since);
                    let idle: Vec<String> = idle.into_iter().take(n).map(|(id, _)| id.clone()).collect();
                    for id in idle {
                        tracing::info!(bot_id = %id, "idle bot retired");
                        if let Some(tx) = self.bots.get(&id).and_then(|b| b.tx.as_ref()) {
                            let _ = tx.send(ControllerMessage::Retire);
                        }
                        self.runtime.stop(&id);
                        self.bots.remove(&id);
                        self.dirty_bots.push(id);
                    }
                }
            }
        }
    }

    /// What the pool should be now: the settings, the queue and the expected demand.
    pub(super) fn desired(&self) -> Desired {
        Desired { min_idle: self.cfg.min_idle, max: self.cfg.max, queued: self.queue.len(), expected: self.expected_starts() }
    }

    /// Requests expected while a launch takes, from those of the last `demand_window`.
    fn expected_starts(&self) -> usize {
        let window = self.cfg.demand_window;
        let recent = self.requests.iter().rev().take_while(|at| at.elapsed() <= window).count();
        pool::expected_starts(recent, window, self.launch_time)
    }

    /// A recording was requested: demand, for `expected_starts`.
    pub(super) fn requested(&mut self) {
        let window = self.cfg.demand_window;
        while self.requests.front().is_some_and(|at| at.elapsed() > window) {
            self.requests.pop_front();
        }
        self.requests.push_back(Instant::now());
    }

    /// When the `position`-th queued request should get a bot (`pool::estimated_start`).
    pub(super) fn estimated_start(&self, position: usize) -> Option<f64> {
        let starting: Vec<Duration> = self
            .bots
            .values()
            .filter(|b| b.state == BotState::Starting)
            .map(|b| b.launched_at.map_or(Duration::ZERO, |at| at.elapsed()))
            .collect();
        pool::estimated_start(position, &starting, self.launch_time)
    }

    /// A launch did not give a warm bot: hold further launches for the back-off, and say so
    /// once per failure (logged and counted here, and nowhere else).
    pub(super) fn launch_failed(&mut self, reason: &str) {
        self.launch_failures = self.launch_failures.saturating_add(1);
        let wait = pool::launch_backoff(self.launch_failures);
        self.launch_held_until = Some(Instant::now() + wait);
        self.launch_failure_reason = reason.to_string();
        self.cfg.metrics.launch_failures.inc();
        tracing::error!(failures = self.launch_failures, retry_in_secs = wait.as_secs_f64(), reason, "bot launch failed; holding launches");
    }

    /// How much longer launches are held, at `now`.
    pub(super) fn launch_held_for(&self, now: Instant) -> Option<Duration> {
        self.launch_held_until.map(|until| until.saturating_duration_since(now)).filter(|left| !left.is_zero())
    }

    pub(super) fn launch(&mut self) {
        let bot_id = format!("bot_{}", uuid::Uuid::new_v4().simple());
        let token = uuid::Uuid::new_v4().simple().to_string();
        let spec = LaunchSpec {
            bot_id: bot_id.clone(),
            token: token.clone(),
            controller_url: self.cfg.controller_urls.iter().map(|u| format!("{u}?bot_id={bot_id}")).collect::<Vec<_>>().join(","),
            spool_root: self.cfg.spool_root.clone(),
            env: self.cfg.bot_env.clone(),
        };
        match self.runtime.launch(&spec) {
            Ok(()) => {
                tracing::info!(bot_id = %bot_id, "bot launched");
                let bot = Bot {
                    token_sha256: token_hash(&token),
                    state: BotState::Starting,
                    recording: None,
                    tx: None,
                    last_seen: Instant::now(),
                    vitals: Vitals::default(),
                    launched_at: Some(Instant::now()),
                    idle_since: None,
                    handoff: None,
                    store_sign: super::StoreSign::default(),
                };
                self.bots.insert(bot_id.clone(), bot);
                self.dirty_bots.push(bot_id);
            }
            Err(err) => self.launch_failed(&err.to_string()),
        }
    }
}

fn seconds_since(t: OffsetDateTime) -> f64 {
    (OffsetDateTime::now_utc() - t).as_seconds_f64().max(0.0)
}

/// A recording its bot ended on a signal from a host being taken back is `preempted`, not
/// `stopped_by_signal`. Returns whether it changed.
fn preempted(outcome: &mut Outcome) -> bool {
    let sub_code = match outcome {
        Outcome::Completed { summary } => &mut summary.sub_code,
        Outcome::Failed { sub_code: Some(code), .. } => code,
        Outcome::Failed { sub_code: None, .. } | Outcome::HandedOff { .. } => return false,
    };
    if *sub_code != SubCode::StoppedBySignal {
        return false;
    }
    *sub_code = SubCode::Preempted;
    true
}
