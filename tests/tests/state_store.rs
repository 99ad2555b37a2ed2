//! The controller's state store and its leadership lease, the same checks on both backends: the embedded SQLite file and
//! a real PostgreSQL server (Debian's package, started by the test on a free port).

use std::time::{Duration, Instant};

use recfleet::fleet::BotState;
use recfleet::model::Recording;
use recfleet::store::{DatabaseUrl, DeliveryAttempt, LogKind, Store, StoreError, StoredBot, StoredRecording};
use recfleet_proto::RecordingStatus;
use recfleet_tests::pg::PgServer;
use serde_json::json;

fn recording(id: &str, key: Option<&str>, status: RecordingStatus) -> StoredRecording {
    let mut view = Recording::queued(id.into(), "https://meet.example.com/abc".into(), "Recorder".into(), Some(60), json!({"team": "a"}));
    view.status = status;
    StoredRecording { view, idempotency_key: key.map(Into::into), recipe: None, webhook_url: Some("http://127.0.0.1:9/hook".into()) }
}

/// Everything the controller stores comes back as it was written, after a reopen (which runs
/// the migrations again, finding nothing to do).
async fn stores_and_reloads(url: DatabaseUrl) {
    let store = Store::open(&url).await.unwrap();
    let mut a = recording("rec_a", Some("key-1"), RecordingStatus::Queued);
    store.append(&a, LogKind::Created, &json!({})).await.unwrap();
    a.view.status = RecordingStatus::Joining;
    store.append(&a, LogKind::Assigned, &json!({"bot_id": "bot_1"})).await.unwrap();
    let b = recording("rec_b", None, RecordingStatus::Queued);
    store.append(&b, LogKind::Created, &json!({})).await.unwrap();
    let gone = recording("rec_gone", None, RecordingStatus::Failed);
    store.append(&gone, LogKind::Created, &json!({})).await.unwrap();
    store.mark_deleted("rec_gone").await.unwrap();

    // An idempotency key names one recording.
    let twin = recording("rec_twin", Some("key-1"), RecordingStatus::Queued);
    assert!(store.append(&twin, LogKind::Created, &json!({})).await.is_err(), "a second recording with key-1 was stored");

    let bot = StoredBot { id: "bot_1".into(), token_sha256: recfleet::store::token_hash("t"), state: BotState::Idle, recording_id: None };
    store.save_bot(&bot).await.unwrap();
    store.save_bot(&StoredBot { state: BotState::Busy, recording_id: Some("rec_a".into()), ..bot.clone() }).await.unwrap();
    store.save_bot(&StoredBot { id: "bot_2".into(), ..bot.clone() }).await.unwrap();
    store.delete_bot("bot_2").await.unwrap();
    for (attempt, code) in [(1, Some(500)), (2, None), (3, Some(204))] {
        let d = DeliveryAttempt {
            message_id: "msg_1",
            recording_id: "rec_a",
            url: "http://127.0.0.1:9/hook",
            event_type: "recording.joining",
            attempt,
            status_code: code,
            error: code.is_none().then(|| "refused".into()),
        };
        store.record_delivery(&d).await.unwrap();
    }
    assert_eq!(store.setting_or_insert("webhook_secret", "whsec_first").await.unwrap(), "whsec_first");
    store.close().await;

    let store = Store::open(&url).await.unwrap();
    let loaded = store.load_recordings().await.unwrap();
    let ids: Vec<&str> = loaded.iter().map(|r| r.view.id.as_str()).collect();
    assert_eq!(ids, ["rec_a", "rec_b"], "oldest first, the deleted one left out");
    assert_eq!(loaded[0].view, a.view, "the projection is the last one written");
    assert_eq!((loaded[0].idempotency_key.as_deref(), loaded[0].webhook_url.as_deref()), (Some("key-1"), a.webhook_url.as_deref()));
    let kinds: Vec<String> = store.events("rec_a").await.unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["created", "assigned"]);
    assert_eq!(store.events("rec_a").await.unwrap()[1].1, json!({"bot_id": "bot_1"}));
    let kinds: Vec<String> = store.events("rec_gone").await.unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["created", "deleted"], "a deletion is logged, the log kept");
    let bots = store.load_bots().await.unwrap();
    assert_eq!(bots.len(), 1);
    assert_eq!((bots[0].id.as_str(), bots[0].state, bots[0].recording_id.as_deref()), ("bot_1", BotState::Busy, Some("rec_a")));
    assert_eq!(bots[0].token_sha256, recfleet::store::token_hash("t"));
    let deliveries = store.deliveries("rec_a").await.unwrap();
    let want: Vec<(String, u32, Option<u16>)> =
        vec![("recording.joining".into(), 1, Some(500)), ("recording.joining".into(), 2, None), ("recording.joining".into(), 3, Some(204))];
    assert_eq!(deliveries, want);
    assert_eq!(store.setting_or_insert("webhook_secret", "whsec_second").await.unwrap(), "whsec_first", "the first value stays");
    store.close().await;
}

/// One lease at a time; after a takeover the old leader's writes are refused (fenced) and the
/// events carry the new generation.
async fn a_taken_over_leader_writes_nothing(url: DatabaseUrl) {
    let old = Store::open(&url).await.unwrap();
    let new = Store::open(&url).await.unwrap();
    let lease = old.try_take_lease("old", 1_000, 5_000).await.unwrap().expect("a free lease");
    assert_eq!(new.try_take_lease("new", 2_000, 5_000).await.unwrap(), None, "old's lease is current");
    old.hold(lease.clone());
    old.append(&recording("rec_f", None, RecordingStatus::Queued), LogKind::Created, &json!({})).await.unwrap();
    let taken = new.try_take_lease("new", 7_000, 5_000).await.unwrap().expect("expired: taken over");
    assert_eq!(taken.generation, lease.generation + 1);
    new.hold(taken);
    let err = old.append(&recording("rec_f", None, RecordingStatus::Joining), LogKind::Assigned, &json!({})).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    assert!(old
        .save_bot(&StoredBot { id: "b".into(), token_sha256: "x".into(), state: BotState::Idle, recording_id: None })
        .await
        .is_err());
    new.append(&recording("rec_f", None, RecordingStatus::Joining), LogKind::Assigned, &json!({})).await.unwrap();
    let kinds: Vec<String> = new.events("rec_f").await.unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["created", "assigned"], "only the current leader's writes landed");
    old.close().await;
    new.close().await;
}

/// A write to a closed store fails with an error, never silently.
async fn a_closed_store_refuses_writes(url: DatabaseUrl) {
    let store = Store::open(&url).await.unwrap();
    store.close().await;
    let err = store.append(&recording("rec_x", None, RecordingStatus::Queued), LogKind::Created, &json!({})).await.unwrap_err();
    assert!(err.to_string().contains("state database"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_stores_and_reloads_everything() {
    let dir = tempfile::tempdir().unwrap();
    stores_and_reloads(Store::default_url(dir.path())).await;
    a_closed_store_refuses_writes(Store::default_url(dir.path())).await;
    let other = tempfile::tempdir().unwrap();
    a_taken_over_leader_writes_nothing(Store::default_url(other.path())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_stores_and_reloads_everything() {
    let pg = PgServer::start();
    let url: DatabaseUrl = pg.url().parse().unwrap();
    stores_and_reloads(url.clone()).await;
    a_closed_store_refuses_writes(url.clone()).await;
    pg.query("DELETE FROM recording_events; DELETE FROM recordings; DELETE FROM bots;");
    a_taken_over_leader_writes_nothing(url).await;
    // The schema came from the migrations, each applied once.
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../controller/migrations/postgres");
    let mut want: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().split('_').next().unwrap().to_string() + "|t")
        .collect();
    want.sort();
    let applied = pg.query("SELECT version, success FROM _sqlx_migrations ORDER BY version");
    assert_eq!(applied.lines().collect::<Vec<_>>(), want, "{applied}");
    assert!(want.len() >= 3, "{want:?}");
}

/// A server that takes TLS only (RDS with `rds.force_ssl`, as `terraform/` creates it): with
/// `sslmode=require` the store works over TLS; without encryption the server refuses it, and the
/// error says why.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_over_tls_with_sslmode_require() {
    let pg = PgServer::start_tls_only();
    let refused = Store::open(&format!("{}?sslmode=disable", pg.url()).parse().unwrap()).await.unwrap_err();
    assert!(format!("{refused:?}").contains("no encryption"), "a plain connection is refused: {refused:?}");
    stores_and_reloads(format!("{}?sslmode=require", pg.url()).parse().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_server_that_goes_away_fails_writes_loudly() {
    let mut pg = PgServer::start();
    let store = Store::open(&pg.url().parse().unwrap()).await.unwrap();
    store.append(&recording("rec_1", None, RecordingStatus::Queued), LogKind::Created, &json!({})).await.unwrap();
    pg.kill();
    let started = Instant::now();
    let err = store.append(&recording("rec_2", None, RecordingStatus::Queued), LogKind::Created, &json!({})).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "the failed write took {:?}", started.elapsed());
    assert!(err.to_string().contains("state database"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn database_urls_parse_and_hide_their_password() {
    let url: DatabaseUrl = "postgres://rec:s3cret@db.internal:5432/recfleet".parse().unwrap();
    assert_eq!(url.to_string(), "postgres://rec:***@db.internal:5432/recfleet");
    assert!(!format!("{url:?}").contains("s3cret"));
    assert_eq!(
        "sqlite:///var/lib/recfleet/state.db".parse::<DatabaseUrl>().unwrap(),
        DatabaseUrl::Sqlite("/var/lib/recfleet/state.db".into())
    );
    assert_eq!("state.db".parse::<DatabaseUrl>().unwrap(), DatabaseUrl::Sqlite("state.db".into()));
    for bad in ["mysql://h/db", "sqlite://", ""] {
        assert!(bad.parse::<DatabaseUrl>().is_err(), "{bad:?} was accepted");
    }
    // A path the URL form would misread still names the file.
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("a ?#% b.db");
    Store::open(&DatabaseUrl::Sqlite(odd.clone())).await.unwrap().close().await;
    assert!(odd.exists(), "{} was not created", odd.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_postgres_fails_at_once_with_its_cause() {
    let port = recfleet_tests::free_port();
    let started = Instant::now();
    let url: DatabaseUrl = format!("postgres://rec:s3cret@127.0.0.1:{port}/recfleet").parse().unwrap();
    let err = Store::open(&url).await.unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(7), "took {:?}", started.elapsed());
    assert!(err.contains(&format!("127.0.0.1:{port}")) && !err.contains("s3cret"), "{err}");
    assert!(err.to_lowercase().contains("refused"), "the cause is named: {err}");
}
