//! The manager's logic alone, with a runtime that launches nothing and a SQLite store in a
//! temporary folder.

use super::*;
use crate::runtime::{ExitReason, LaunchSpec};
use recfleet_proto::protocol::Outcome;
use recfleet_proto::{EventKind, OutputPaths, SubCode, Summary};
use serde_json::json;

/// Launches nothing: the manager's logic alone is under test.
#[derive(Debug, Default)]
struct NoRuntime;

impl Runtime for NoRuntime {
    fn launch(&self, _spec: &LaunchSpec) -> Result<(), crate::runtime::RuntimeError> {
        Ok(())
    }
    fn stop(&self, _bot_id: &str) {}
}

async fn manager(dir: &std::path::Path) -> Manager {
    let cfg = ManagerConfig {
        min_idle: 1,
        max: 2,
        idle_ttl: Duration::from_secs(crate::pool::DEFAULT_IDLE_TTL_SECS),
        demand_window: Duration::from_secs(crate::pool::DEFAULT_DEMAND_WINDOW_SECS),
        controller_urls: vec!["ws://127.0.0.1:1/v1/bots/connect".into()],
        deposed: Default::default(),
        lapsed: Default::default(),
        reads: Default::default(),
        spool_root: dir.join("spool"),
        bot_env: Vec::new(),
        public_url: "http://127.0.0.1:1".into(),
        keep_bots_on_exit: false,
        lost_window: crate::fleet::DEFAULT_LOST_WINDOW,
        handoffs: true,
        deadlines: recfleet_proto::Deadlines::default(),
        deadline_margin: recfleet_proto::deadline::CONTROLLER_MARGIN,
        objects: recfleet_storage::Store::Fs(recfleet_storage::FsStore::new(dir.to_path_buf())),
        scratch_root: dir.join("recovery"),
        metrics: Arc::new(Metrics::new()),
    };
    let store = Store::open(&Store::default_url(dir)).await.unwrap();
    let (webhooks, _) = mpsc::unbounded_channel();
    Manager::load(cfg, Arc::new(NoRuntime), store, webhooks).await.unwrap()
}

fn request(meeting_url: &str) -> CreateRecording {
    CreateRecording {
        meeting_url: meeting_url.into(),
        bot_name: None,
        recipe: None,
        recipe_name: None,
        max_duration_secs: None,
        webhook_url: None,
        metadata: None,
        allow_concurrent: false,
    }
}

fn refused_total(m: &Manager) -> u64 {
    let text = m.cfg.metrics.render();
    text.lines()
        .filter(|l| l.starts_with(crate::metrics::names::RECORDING_TRANSITIONS_REFUSED_TOTAL))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test]
async fn a_queued_stop_goes_through_stopping_to_failed() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(dir.path()).await;
    let (rec, _) = m.create(request("https://m.example.com/q"), None).unwrap();
    let view = m.stop(&rec.id).unwrap();
    assert_eq!((view.status, view.sub_code), (RecordingStatus::Failed, Some(SubCode::StoppedByApi)));
    assert!(view.completed_at.is_some() && !m.queue.contains(&rec.id));
    let (_, kind, data) = m.dirty.back().unwrap();
    assert_eq!((*kind, &data["status_after_stop"]), (LogKind::StopRequested, &json!("stopping")));
    assert_eq!(refused_total(&m), 0, "nothing refused on the way");
    // A second stop is harmless and changes nothing.
    assert_eq!(m.stop(&rec.id).unwrap().status, RecordingStatus::Failed);
    assert_eq!(refused_total(&m), 0);
}

/// Found by schemathesis: a deleted recording kept its idempotency key in the database, so a new
/// request with the key could not be written and held every later write up.
#[tokio::test]
async fn an_idempotency_key_is_free_again_once_its_recording_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(dir.path()).await;
    let key = Some("call-42".to_string());
    let create = || {
        let (tx, rx) = oneshot::channel();
        (Command::Create { req: request("https://m.example.com/k"), idempotency_key: key.clone(), reply: tx }, rx)
    };
    let (cmd, rx) = create();
    m.handle(cmd).await;
    let (first, created) = rx.await.unwrap().unwrap();
    assert!(created);
    m.stop(&first.id).unwrap();
    m.write_marked().await.unwrap();
    m.delete(&first.id).await.unwrap();
    let (cmd, rx) = create();
    m.handle(cmd).await;
    let (second, created) = rx.await.unwrap().expect("written");
    assert!(created && second.id != first.id, "a new recording");
    m.write_marked().await.expect("the database takes it");
    assert_eq!(m.cfg.metrics.state_write_failures.get(), 0);
}

#[tokio::test]
async fn a_late_event_the_table_refuses_is_counted_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(dir.path()).await;
    let (id, bot_id) = assigned(&mut m).await;
    started(&mut m, &id);
    m.on_bot_message(&bot_id, BotMessage::Finished { recording_id: id.clone(), outcome: completed(&id) });
    assert_eq!(m.recordings[&id].stored.view.status, RecordingStatus::Completed);
    let late = recfleet_proto::Event { at: OffsetDateTime::now_utc(), elapsed_ms: 0, kind: EventKind::WaitingRoom };
    m.apply_event(&id, &late);
    assert_eq!(m.recordings[&id].stored.view.status, RecordingStatus::Completed, "never applied");
    assert_eq!(refused_total(&m), 1, "counted once");
}

#[tokio::test]
async fn a_leader_whose_lease_lapsed_neither_assigns_nor_launches_and_is_unready() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(dir.path()).await;
    m.cfg.lapsed.store(true, std::sync::atomic::Ordering::SeqCst);
    m.settle().await.unwrap();
    assert!(m.bots.is_empty(), "no launch while the lease is not renewed");
    let (tx, rx) = oneshot::channel();
    m.handle(Command::Health { reply: tx }).await;
    assert!(!rx.await.unwrap(), "unready while the lease is not renewed");
    m.cfg.lapsed.store(false, std::sync::atomic::Ordering::SeqCst);
    m.settle().await.unwrap();
    assert_eq!(m.bots.len(), 1, "the pool fills once the lease is renewed");
}

#[tokio::test]
async fn a_creation_that_cannot_be_written_answers_500_and_is_not_made() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(dir.path()).await;
    m.store.close().await;
    let (tx, rx) = oneshot::channel();
    m.handle(Command::Create { req: request("https://m.example.com/w"), idempotency_key: None, reply: tx }).await;
    let answer = rx.await.unwrap();
    assert!(matches!(answer, Err(ApiError::Internal(_))), "{answer:?}");
    assert_eq!(answer.unwrap_err().status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    let (tx, rx) = oneshot::channel();
    m.handle(Command::Health { reply: tx }).await;
    assert!(!rx.await.unwrap(), "unready while writes fail");
    assert!(m.recordings.is_empty() && m.queue.is_empty() && m.dirty.is_empty(), "a creation that was not written is not made");
    assert!(m.cfg.metrics.state_write_failures.get() >= 1);
}

#[tokio::test]
async fn launches_that_never_give_a_warm_bot_back_off_until_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(dir.path()).await;
    m.reconcile();
    let first = m.bots.keys().next().unwrap().clone();
    m.bot_exited(Exited { bot_id: first, reason: ExitReason::Crashed, detail: "exit status: 1".into() });
    m.reconcile();
    assert!(m.bots.is_empty(), "no relaunch while held");
    let backoff = m.pool_view().backoff.expect("the pool shows the back-off");
    assert_eq!(backoff.failures, 1);
    assert!(backoff.reason.contains("before it was warm") && backoff.reason.contains("exit status: 1"), "{backoff:?}");
    // The hold passes: one launch, which comes up warm and clears the back-off.
    m.launch_held_until = Some(Instant::now());
    m.reconcile();
    let second = m.bots.keys().next().expect("relaunched after the hold").clone();
    m.on_bot_message(&second, BotMessage::Ready);
    assert!(m.pool_view().backoff.is_none());
    assert_eq!((m.launch_failures, m.cfg.metrics.launch_failures.get()), (0, 1));
}

/// A shutdown that keeps the bots leaves the idle ones warm for the next controller; one that
/// does not retires them.
#[tokio::test]
async fn a_shutdown_that_keeps_bots_leaves_the_idle_ones_warm() {
    for keep in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut m = manager(dir.path()).await;
        m.cfg.keep_bots_on_exit = keep;
        m.reconcile();
        let bot_id = m.bots.keys().next().expect("a launched bot").clone();
        let (tx, mut rx) = mpsc::unbounded_channel();
        m.bots.get_mut(&bot_id).unwrap().tx = Some(tx);
        m.on_bot_message(&bot_id, BotMessage::Ready);
        m.shut_down();
        m.reconcile();
        assert_eq!(m.bots.contains_key(&bot_id), keep, "keep {keep}");
        assert_eq!(matches!(rx.try_recv(), Ok(ControllerMessage::Retire)), !keep, "keep {keep}");
    }
}

/// Idle bots above the target stay while within their idle TTL and are retired after it, the
/// pool keeping `min_idle`.
#[tokio::test]
async fn idle_bots_above_the_target_retire_only_after_their_ttl() {
    for (ttl, kept) in [(Duration::from_secs(3600), 3), (Duration::ZERO, 1)] {
        let dir = tempfile::tempdir().unwrap();
        let mut m = manager(dir.path()).await;
        m.cfg.max = 4;
        m.cfg.min_idle = 3;
        m.reconcile();
        let ids: Vec<String> = m.bots.keys().cloned().collect();
        assert_eq!(ids.len(), 3);
        let mut inboxes = Vec::new();
        for id in &ids {
            let (tx, rx) = mpsc::unbounded_channel();
            m.bots.get_mut(id).unwrap().tx = Some(tx);
            m.on_bot_message(id, BotMessage::Ready);
            inboxes.push(rx);
        }
        // Demand fell: one warm bot is the target now.
        m.cfg.min_idle = 1;
        m.cfg.idle_ttl = ttl;
        m.reconcile();
        assert_eq!(m.bots.len(), kept, "idle TTL {ttl:?}");
        let retired = inboxes.iter_mut().map(|rx| matches!(rx.try_recv(), Ok(ControllerMessage::Retire))).filter(|r| *r).count();
        assert_eq!(retired, 3 - kept, "idle TTL {ttl:?}");
    }
}

/// A recording assigned to a connected, warm bot; returns (recording id, bot id).
async fn assigned(m: &mut Manager) -> (String, String) {
    m.reconcile();
    let bot_id = m.bots.keys().next().expect("a launched bot").clone();
    let (tx, _rx) = mpsc::unbounded_channel();
    m.bots.get_mut(&bot_id).unwrap().tx = Some(tx);
    m.on_bot_message(&bot_id, BotMessage::Ready);
    let (rec, _) = m.create(request("https://m.example.com/a"), None).unwrap();
    m.assign_queued();
    assert_eq!(m.recordings[&rec.id].stored.view.status, RecordingStatus::Joining);
    (rec.id, bot_id)
}

/// The bot's timeline says the first frame is captured.
fn started(m: &mut Manager, id: &str) {
    let event = recfleet_proto::Event { at: OffsetDateTime::now_utc(), elapsed_ms: 0, kind: EventKind::RecordingStarted };
    m.apply_event(id, &event);
    assert_eq!(m.recordings[id].stored.view.status, RecordingStatus::Recording);
}

fn completed(id: &str) -> Outcome {
    let paths = OutputPaths { dir: id.into(), mp4: None, playlist: String::new(), manifest: String::new(), events: String::new() };
    Outcome::Completed {
        summary: Box::new(Summary {
            recording_id: id.into(),
            status: RecordingStatus::Completed,
            sub_code: SubCode::MeetingEnded,
            duration_secs: 6.0,
            segments: 3,
            paths,
            capture: None,
            upload: None,
        }),
    }
}

#[tokio::test]
async fn finished_arriving_after_the_exit_still_completes() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(dir.path()).await;
    let (id, bot_id) = assigned(&mut m).await;
    started(&mut m, &id);
    m.bot_exited(Exited { bot_id: bot_id.clone(), reason: ExitReason::Finished, detail: "exit status: 0".into() });
    m.settle_orphans();
    assert!(!m.recordings[&id].stored.view.status.is_terminal(), "not decided before the grace");
    // The bot's last message was still in flight when its exit was seen: the bot is gone.
    assert!(!m.bots.contains_key(&bot_id));
    m.on_bot_message(&bot_id, BotMessage::Finished { recording_id: id.clone(), outcome: completed(&id) });
    if let Some(entry) = m.orphaned.get_mut(&id) {
        entry.0 = Instant::now() - EXIT_GRACE * 2;
    }
    m.settle_orphans();
    let view = &m.recordings[&id].stored.view;
    assert_eq!((view.status, view.sub_code), (RecordingStatus::Completed, Some(SubCode::MeetingEnded)));
}

#[tokio::test]
async fn an_exit_without_finished_is_a_crash_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(dir.path()).await;
    let (id, bot_id) = assigned(&mut m).await;
    m.bot_exited(Exited { bot_id, reason: ExitReason::Crashed, detail: "signal: 9 (SIGKILL)".into() });
    m.orphaned.get_mut(&id).unwrap().0 = Instant::now() - EXIT_GRACE * 2;
    m.settle_orphans();
    let view = &m.recordings[&id].stored.view;
    assert_eq!((view.status, view.sub_code), (RecordingStatus::Failed, Some(SubCode::BotCrashed)));
    let error = view.error.as_ref().unwrap();
    assert_eq!(error.code, "bot_crashed");
    assert!(error.message.contains("SIGKILL"), "{error:?}");
}

#[tokio::test]
async fn a_crash_after_the_recording_started_is_finalized_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(dir.path()).await;
    let (id, bot_id) = assigned(&mut m).await;
    started(&mut m, &id);
    m.bot_exited(Exited { bot_id, reason: ExitReason::Crashed, detail: "signal: 9 (SIGKILL)".into() });
    m.orphaned.get_mut(&id).unwrap().0 = Instant::now() - EXIT_GRACE * 2;
    m.settle_orphans();
    let view = &m.recordings[&id].stored.view;
    assert_eq!((view.status, view.sub_code, view.partial), (RecordingStatus::Finalizing, Some(SubCode::BotCrashed), true));
    // The store holds nothing of it: the recovery says so and the recording fails.
    let (rid, result) = m.recovered_rx.as_mut().unwrap().recv().await.unwrap();
    assert!(matches!(result, Err(RecoveryError::NothingStored)));
    m.recovered(&rid, result);
    let view = &m.recordings[&id].stored.view;
    assert_eq!((view.status, view.sub_code), (RecordingStatus::Failed, Some(SubCode::BotCrashed)));
    let error = view.error.as_ref().unwrap();
    assert_eq!(error.code, "nothing_stored");
    assert!(error.message.contains("nothing usable"), "{error:?}");
}

/// A runtime that remembers which bots it was told to stop.
#[derive(Debug, Default)]
struct StopRecorder(std::sync::Mutex<Vec<String>>);

impl Runtime for StopRecorder {
    fn launch(&self, _spec: &LaunchSpec) -> Result<(), crate::runtime::RuntimeError> {
        Ok(())
    }
    fn stop(&self, bot_id: &str) {
        self.0.lock().unwrap().push(bot_id.to_string());
    }
}

/// A bot that keeps a recording in one status past its deadline (and the margin) has it taken
/// away: the bot is stopped, the recording ended with what it had, and one that has media is
/// finalized from the store. Within the deadline nothing happens.
#[tokio::test]
async fn a_recording_stuck_past_its_status_deadline_has_its_bot_stopped_and_is_finalized() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(dir.path()).await;
    let runtime = Arc::new(StopRecorder::default());
    m.runtime = Arc::clone(&runtime) as Arc<dyn Runtime>;
    let (id, bot_id) = assigned(&mut m).await;
    started(&mut m, &id);
    m.stop(&id).unwrap();
    assert_eq!(m.recordings[&id].stored.view.status, RecordingStatus::Stopping);
    let stopping = m.cfg.deadlines.stopping + m.cfg.deadline_margin;
    let (id_list, now) = (std::slice::from_ref(&id), Instant::now());
    assert!(m.overdue(id_list, now).is_empty(), "the status's clock starts when it is first seen");
    assert!(m.overdue(id_list, now + stopping - Duration::from_secs(1)).is_empty(), "within the deadline");
    let overdue = m.overdue(id_list, now + stopping + Duration::from_secs(1));
    assert_eq!(overdue, vec![(id.clone(), RecordingStatus::Stopping, m.cfg.deadlines.stopping)]);

    // The check as the tick runs it, with the status seen long ago.
    m.recordings.get_mut(&id).unwrap().since = Some((RecordingStatus::Stopping, now - stopping - Duration::from_secs(1)));
    m.enforce_deadlines();
    assert_eq!(*runtime.0.lock().unwrap(), vec![bot_id.clone()], "the bot is stopped");
    assert!(!m.bots.contains_key(&bot_id));
    let view = &m.recordings[&id].stored.view;
    assert_eq!((view.status, view.sub_code, view.partial), (RecordingStatus::Finalizing, Some(SubCode::StoppedByApi), true));
    let error = view.error.as_ref().unwrap();
    assert_eq!(error.code, "deadline_exceeded");
    assert!(error.message.contains("stopping") && error.message.contains("30 s"), "{error:?}");
    let text = m.cfg.metrics.render();
    assert!(text.contains(r#"recfleet_recording_deadlines_exceeded_total{enforced_by="controller",status="stopping"} 1"#), "{text}");
}

/// The join and its waiting room are one phase, the recipe's room included; a join stuck past
/// it fails with `join_failed`, one still in the waiting room with `waiting_room_timeout`;
/// statuses without a deadline have none.
#[tokio::test]
async fn each_status_has_its_deadline_and_a_stuck_join_fails() {
    let d = recfleet_proto::Deadlines::default();
    let mut recipe = recfleet_proto::Recipe::from_json(r#"{"name":"x","waiting_room_when":".lobby"}"#).unwrap();
    recipe.waiting_room_timeout_secs = 120;
    let with_room = Some(d.joining + Duration::from_secs(120));
    assert_eq!(recordings::deadline_of(RecordingStatus::WaitingRoom, &d, Some(&recipe)), with_room);
    assert_eq!(recordings::deadline_of(RecordingStatus::Joining, &d, Some(&recipe)), with_room);
    assert_eq!(recordings::deadline_of(RecordingStatus::Joining, &d, None), Some(d.joining), "no room without waiting_room_when");
    assert_eq!(recordings::deadline_of(RecordingStatus::Finalizing, &d, None), Some(d.stopping + d.finalizing));
    for none in [RecordingStatus::Queued, RecordingStatus::Recording, RecordingStatus::Completed] {
        assert_eq!(recordings::deadline_of(none, &d, None), None, "{none:?}");
    }

    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(dir.path()).await;
    let (id, bot_id) = assigned(&mut m).await;
    let long_ago = Instant::now() - d.joining - m.cfg.deadline_margin - Duration::from_secs(1);
    m.recordings.get_mut(&id).unwrap().since = Some((RecordingStatus::Joining, long_ago));
    // The waiting room does not restart the join's clock.
    let room = recfleet_proto::Event { at: OffsetDateTime::now_utc(), elapsed_ms: 0, kind: EventKind::WaitingRoom };
    m.apply_event(&id, &room);
    assert_eq!(m.recordings[&id].stored.view.status, RecordingStatus::WaitingRoom);
    m.enforce_deadlines();
    assert!(!m.bots.contains_key(&bot_id));
    let view = &m.recordings[&id].stored.view;
    assert_eq!((view.status, view.sub_code), (RecordingStatus::Failed, Some(SubCode::WaitingRoomTimeout)));
    assert_eq!(view.error.as_ref().unwrap().code, "deadline_exceeded");
}

/// A stop asked for while the bot's socket was down reaches it when it connects again.
#[tokio::test]
async fn a_stop_asked_while_the_bot_was_away_is_sent_when_it_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(dir.path()).await;
    let (id, bot_id) = assigned(&mut m).await;
    started(&mut m, &id);
    m.bots.get_mut(&bot_id).unwrap().tx = None;
    m.stop(&id).unwrap();
    let token = "t0ken";
    m.bots.get_mut(&bot_id).unwrap().token_sha256 = crate::store::token_hash(token);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (reply, ok) = oneshot::channel();
    m.handle(Command::BotConnected { bot_id, token: token.into(), tx, reply }).await;
    assert!(ok.await.unwrap());
    assert!(matches!(rx.try_recv(), Ok(ControllerMessage::Stop { recording_id }) if recording_id == id));
}

/// A bot cut off from the controller is left to the liveness rule: no deadline stops it, and
/// its phase's clock starts again when it is back. A recording the controller finalizes itself
/// has no deadline.
#[tokio::test]
async fn deadlines_spare_a_bot_that_is_away_and_a_recording_being_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(dir.path()).await;
    let (id, bot_id) = assigned(&mut m).await;
    let long_ago = Instant::now() - m.cfg.deadlines.joining - m.cfg.deadline_margin - Duration::from_secs(1);
    m.recordings.get_mut(&id).unwrap().since = Some((RecordingStatus::Joining, long_ago));
    let tx = m.bots.get_mut(&bot_id).unwrap().tx.take().unwrap();
    m.enforce_deadlines();
    assert!(m.bots.contains_key(&bot_id), "not stopped while away");
    assert_eq!(m.recordings[&id].stored.view.status, RecordingStatus::Joining);
    assert!(m.recordings[&id].since.is_none(), "the clock starts again when it is back");
    m.bots.get_mut(&bot_id).unwrap().tx = Some(tx);
    m.enforce_deadlines();
    assert!(m.bots.contains_key(&bot_id));

    started(&mut m, &id);
    let ended = recfleet_proto::Event {
        at: OffsetDateTime::now_utc(),
        elapsed_ms: 0,
        kind: EventKind::Ended { sub_code: SubCode::MeetingEnded, detail: String::new() },
    };
    m.apply_event(&id, &ended);
    assert_eq!(m.recordings[&id].stored.view.status, RecordingStatus::Finalizing);
    let d = m.cfg.deadlines;
    let long_ago = Instant::now() - d.stopping - d.finalizing - m.cfg.deadline_margin - Duration::from_secs(1);
    m.recordings.get_mut(&id).unwrap().since = Some((RecordingStatus::Finalizing, long_ago));
    m.recordings.get_mut(&id).unwrap().stored.view.partial = true;
    m.enforce_deadlines();
    assert!(m.bots.contains_key(&bot_id), "a recording under recovery has no deadline");
    m.recordings.get_mut(&id).unwrap().stored.view.partial = false;
    m.enforce_deadlines();
    assert!(!m.bots.contains_key(&bot_id), "without the recovery, the same is overdue");
}

/// An old connection that closes after the bot reconnected leaves the new one in place.
#[tokio::test]
async fn a_late_close_of_an_old_connection_keeps_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(dir.path()).await;
    let (_, bot_id) = assigned(&mut m).await;
    let old = m.bots[&bot_id].tx.clone().unwrap();
    let (new, _rx) = mpsc::unbounded_channel();
    m.bots.get_mut(&bot_id).unwrap().tx = Some(new.clone());
    m.handle(Command::BotDisconnected { bot_id: bot_id.clone(), tx: old }).await;
    assert!(m.bots[&bot_id].tx.as_ref().is_some_and(|t| t.same_channel(&new)), "the new connection stays");
    m.handle(Command::BotDisconnected { bot_id: bot_id.clone(), tx: new }).await;
    assert!(m.bots[&bot_id].tx.is_none());
}

/// A fresh channel for `bot_id`, whose messages the test reads.
fn listen(m: &mut Manager, bot_id: &str) -> mpsc::UnboundedReceiver<ControllerMessage> {
    let (tx, rx) = mpsc::unbounded_channel();
    m.bots.get_mut(bot_id).unwrap().tx = Some(tx);
    rx
}

fn drained(rx: &mut mpsc::UnboundedReceiver<ControllerMessage>) -> Vec<ControllerMessage> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

fn handoffs(m: &Manager, result: &str) -> u64 {
    m.cfg.metrics.handoffs.with_label_values(&[result]).get()
}

fn asks_for_a_successor(id: &str) -> BotMessage {
    BotMessage::HandoffRequested { recording_id: id.into(), last_sequence: 3, successor_first_sequence: 17, successor_generation: 2 }
}

/// A recording whose bot asks for a successor, and the warm bot there is (launched by the pool
/// when the first was assigned, now connected and ready).
async fn recording_with_a_warm_bot(m: &mut Manager) -> (String, String, String) {
    let (id, first) = assigned(m).await;
    started(m, &id);
    m.reconcile();
    let warm = m.bots.keys().find(|k| **k != first).expect("the pool launched a second bot").clone();
    let (tx, _) = mpsc::unbounded_channel();
    m.bots.get_mut(&warm).unwrap().tx = Some(tx);
    m.on_bot_message(&warm, BotMessage::Ready);
    (id, first, warm)
}

#[tokio::test]
async fn a_bot_taken_away_hands_its_recording_to_a_warm_bot_and_only_the_successor_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(dir.path()).await;
    let (id, first, warm) = recording_with_a_warm_bot(&mut m).await;
    let (mut to_first, mut to_warm) = (listen(&mut m, &first), listen(&mut m, &warm));

    m.on_bot_message(&first, asks_for_a_successor(&id));
    let assigned = drained(&mut to_warm);
    let [ControllerMessage::Assign(a)] = assigned.as_slice() else { panic!("{assigned:?}") };
    let want = recfleet_proto::protocol::Continuation { from_bot: first.clone(), first_sequence: 17, generation: 2 };
    assert_eq!((a.recording_id.as_str(), a.continuation.as_ref()), (id.as_str(), Some(&want)));
    assert_eq!(drained(&mut to_first), [ControllerMessage::HandoffAccepted { recording_id: id.clone(), successor: warm.clone() }]);
    assert_eq!((m.bots[&warm].state, m.bots[&warm].recording.as_deref()), (BotState::Busy, Some(id.as_str())));
    assert_eq!(handoffs(&m, "started"), 1);

    // The predecessor's segments go on to the successor; the successor's first ends the overlap.
    let seg = |n: u64| recfleet_media::describe(&recfleet_media::segment_name(n), 2.0, 10, "00".into());
    m.on_bot_message(&first, BotMessage::SegmentStored { recording_id: id.clone(), segment: seg(4), upload_lag_ms: None });
    assert_eq!(drained(&mut to_warm), [ControllerMessage::Inherited { recording_id: id.clone(), segment: seg(4) }]);
    m.on_bot_message(&warm, BotMessage::SegmentStored { recording_id: id.clone(), segment: seg(17), upload_lag_ms: None });
    m.on_bot_message(&warm, BotMessage::SegmentStored { recording_id: id.clone(), segment: seg(18), upload_lag_ms: None });
    assert_eq!(drained(&mut to_first), [ControllerMessage::HandOver { recording_id: id.clone() }], "told once");

    // The predecessor's end is not the recording's, nor is its exit a crash.
    let handed_off = Outcome::HandedOff { successor: warm.clone(), last_sequence: 5, upload: None };
    m.on_bot_message(&first, BotMessage::Finished { recording_id: id.clone(), outcome: handed_off });
    assert_eq!(m.recordings[&id].stored.view.status, RecordingStatus::Recording);
    assert_eq!(drained(&mut to_warm), [ControllerMessage::PredecessorDone { recording_id: id.clone() }]);
    assert_eq!(handoffs(&m, "completed"), 1);
    m.bot_exited(Exited { bot_id: first.clone(), reason: ExitReason::Finished, detail: "exit status: 0".into() });
    assert!(m.orphaned.is_empty(), "the predecessor's exit leaves the recording alone");

    m.on_bot_message(&warm, BotMessage::Finished { recording_id: id.clone(), outcome: completed(&id) });
    let view = &m.recordings[&id].stored.view;
    assert_eq!((view.status, view.partial), (RecordingStatus::Completed, false));
}

#[tokio::test]
async fn a_handoff_is_refused_without_a_warm_bot_or_when_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(dir.path()).await;
    let (id, first) = assigned(&mut m).await;
    started(&mut m, &id);
    let mut to_first = listen(&mut m, &first);
    // The pool's next bot is still starting: nobody to hand over to.
    m.reconcile();
    m.on_bot_message(&first, asks_for_a_successor(&id));
    let refused = drained(&mut to_first);
    assert!(
        matches!(refused.as_slice(), [ControllerMessage::HandoffRefused { reason, .. }] if reason.contains("no warm bot")),
        "{refused:?}"
    );
    assert_eq!((handoffs(&m, "refused"), handoffs(&m, "started")), (1, 0));

    let warm = m.bots.keys().find(|k| **k != first).unwrap().clone();
    let (tx, _) = mpsc::unbounded_channel();
    m.bots.get_mut(&warm).unwrap().tx = Some(tx);
    m.on_bot_message(&warm, BotMessage::Ready);
    m.cfg.handoffs = false;
    m.on_bot_message(&first, asks_for_a_successor(&id));
    let refused = drained(&mut to_first);
    assert!(
        matches!(refused.as_slice(), [ControllerMessage::HandoffRefused { reason, .. }] if reason.contains("--no-handoff")),
        "{refused:?}"
    );
    assert_eq!(m.bots[&warm].state, BotState::Idle, "the warm bot stays warm");
}

#[tokio::test]
async fn a_predecessor_that_dies_while_handing_over_leaves_the_recording_to_its_successor() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(dir.path()).await;
    let (id, first, warm) = recording_with_a_warm_bot(&mut m).await;
    let mut to_warm = listen(&mut m, &warm);
    m.on_bot_message(&first, asks_for_a_successor(&id));
    drained(&mut to_warm);
    m.bot_exited(Exited { bot_id: first, reason: ExitReason::Crashed, detail: "signal: 9".into() });
    assert!(m.orphaned.is_empty(), "not the recording's crash");
    assert_eq!(drained(&mut to_warm), [ControllerMessage::PredecessorDone { recording_id: id.clone() }]);
    assert_eq!(m.recordings[&id].stored.view.status, RecordingStatus::Recording);
}

#[tokio::test]
async fn a_successor_that_cannot_join_gives_the_recording_back_to_its_predecessor() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(dir.path()).await;
    let (id, first, warm) = recording_with_a_warm_bot(&mut m).await;
    let (mut to_first, _to_warm) = (listen(&mut m, &first), listen(&mut m, &warm));
    m.on_bot_message(&first, asks_for_a_successor(&id));
    drained(&mut to_first);
    let failed =
        Outcome::Failed { sub_code: Some(SubCode::JoinFailed), code: "not_joined".into(), message: "the lobby never loaded".into() };
    m.on_bot_message(&warm, BotMessage::Finished { recording_id: id.clone(), outcome: failed });
    let told = drained(&mut to_first);
    assert!(matches!(told.as_slice(), [ControllerMessage::HandoffRefused { reason, .. }] if reason.contains("not_joined")), "{told:?}");
    assert_eq!(m.recordings[&id].stored.view.status, RecordingStatus::Recording, "not finalized from the store");
    assert_eq!(handoffs(&m, "failed"), 1);
    // The first bot finishes it as a signal says.
    m.on_bot_message(&first, BotMessage::Finished { recording_id: id.clone(), outcome: completed(&id) });
    assert_eq!(m.recordings[&id].stored.view.status, RecordingStatus::Completed);
}

#[tokio::test]
async fn a_stop_during_a_handoff_calls_it_off_until_the_successor_records_and_hands_over_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(dir.path()).await;
    let (id, first, warm) = recording_with_a_warm_bot(&mut m).await;
    let (mut to_first, mut to_warm) = (listen(&mut m, &first), listen(&mut m, &warm));
    m.on_bot_message(&first, asks_for_a_successor(&id));
    drained(&mut to_first);
    drained(&mut to_warm);
    // Before the successor records: it is called off, and the first bot finishes the recording.
    m.stop(&id).unwrap();
    assert_eq!(drained(&mut to_first), [ControllerMessage::Stop { recording_id: id.clone() }]);
    let told = drained(&mut to_warm);
    assert!(matches!(told.as_slice(), [ControllerMessage::HandoffRefused { .. }]), "the successor is called off: {told:?}");
    let nothing = Outcome::Failed { sub_code: Some(SubCode::StoppedByApi), code: "ended_before_recording".into(), message: "x".into() };
    m.on_bot_message(&warm, BotMessage::Finished { recording_id: id.clone(), outcome: nothing });
    assert_eq!(m.recordings[&id].stored.view.status, RecordingStatus::Stopping, "the called-off successor changes nothing");
    m.on_bot_message(&first, BotMessage::Finished { recording_id: id.clone(), outcome: completed(&id) });
    assert_eq!(m.recordings[&id].stored.view.status, RecordingStatus::Completed);
}

#[tokio::test]
async fn a_stop_once_the_successor_records_hands_over_and_stops_the_successor() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(dir.path()).await;
    let (id, first, warm) = recording_with_a_warm_bot(&mut m).await;
    let (mut to_first, mut to_warm) = (listen(&mut m, &first), listen(&mut m, &warm));
    m.on_bot_message(&first, asks_for_a_successor(&id));
    let seg = recfleet_media::describe(&recfleet_media::segment_name(17), 2.0, 10, "00".into());
    m.on_bot_message(&warm, BotMessage::SegmentStored { recording_id: id.clone(), segment: seg, upload_lag_ms: None });
    drained(&mut to_first);
    drained(&mut to_warm);
    m.stop(&id).unwrap();
    assert_eq!(drained(&mut to_first), [ControllerMessage::HandOver { recording_id: id.clone() }]);
    assert_eq!(drained(&mut to_warm), [ControllerMessage::Stop { recording_id: id.clone() }]);
}

#[tokio::test]
async fn a_withdrawn_request_calls_the_successor_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(dir.path()).await;
    let (id, first, warm) = recording_with_a_warm_bot(&mut m).await;
    let mut to_warm = listen(&mut m, &warm);
    m.on_bot_message(&first, asks_for_a_successor(&id));
    drained(&mut to_warm);
    m.on_bot_message(&first, BotMessage::HandoffWithdrawn { recording_id: id.clone() });
    let told = drained(&mut to_warm);
    assert!(matches!(told.as_slice(), [ControllerMessage::HandoffRefused { .. }]), "the successor is called off: {told:?}");
    m.bot_exited(Exited { bot_id: warm, reason: ExitReason::Finished, detail: "exit status: 0".into() });
    assert!(m.orphaned.is_empty());
    m.on_bot_message(&first, BotMessage::Finished { recording_id: id.clone(), outcome: completed(&id) });
    assert_eq!(m.recordings[&id].stored.view.status, RecordingStatus::Completed);
}

#[tokio::test]
async fn a_called_off_successor_is_told_again_when_it_reconnects_and_its_word_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(dir.path()).await;
    let (id, first, warm) = recording_with_a_warm_bot(&mut m).await;
    let _to_first = listen(&mut m, &first);
    let _assigned = listen(&mut m, &warm);
    m.on_bot_message(&first, asks_for_a_successor(&id));
    m.bots.get_mut(&warm).unwrap().tx = None;
    m.on_bot_message(&first, BotMessage::HandoffWithdrawn { recording_id: id.clone() });
    // Away when it was called off: told when it is back.
    let (tx, mut to_warm) = mpsc::unbounded_channel();
    let token = "t".to_string();
    m.bots.get_mut(&warm).unwrap().token_sha256 = token_hash(&token);
    let (reply, _) = oneshot::channel();
    m.handle(Command::BotConnected { bot_id: warm.clone(), token, tx, reply }).await;
    let told = drained(&mut to_warm);
    assert!(matches!(told.as_slice(), [ControllerMessage::HandoffRefused { .. }]), "{told:?}");
    let late_end = recfleet_proto::Event {
        at: OffsetDateTime::now_utc(),
        elapsed_ms: 0,
        kind: EventKind::Ended { sub_code: SubCode::StoppedByApi, detail: String::new() },
    };
    m.on_bot_message(&warm, BotMessage::Timeline { recording_id: id.clone(), event: late_end });
    assert_eq!(m.recordings[&id].stored.view.status, RecordingStatus::Recording, "the called-off successor's end is not the recording's");
}
