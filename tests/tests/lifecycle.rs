//! The controller's own life, with the real `recfleet serve` binary as a child process (as a
//! supervisor runs it), real bots and the bundled meeting: SIGTERM drains, the bots outlive the
//! controller, the next controller on the same state finishes what the last one started, bots
//! of a controller gone for good do not run forever, and a bot that cannot start makes the pool
//! back off instead of spinning.

use std::time::{Duration, Instant};

use recfleet_tests::meeting::MeetingServer;
use recfleet_tests::serve::{Api, ServeProcess, Tag};
use serde_json::{json, Value};

const KEY: &str = "lifecycle-key";
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The files a finished recording's folder holds (docs/ARCHITECTURE.md, storage layout).
fn documented(name: &str) -> bool {
    ["init.mp4", "index.m3u8", "manifest.json", "events.json", "recording.mp4"].contains(&name)
        || (name.starts_with("seg_") && name.ends_with(".m4s"))
        || recfleet_media::is_init(name)
}

/// One webhook as it arrived.
#[derive(Debug, Clone)]
struct Delivery {
    event_type: String,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
}

type Deliveries = std::sync::Arc<std::sync::Mutex<Vec<Delivery>>>;

/// A webhook receiver on loopback: every delivery, in order.
async fn webhook_receiver() -> (String, Deliveries) {
    let seen = Deliveries::default();
    let sink = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let event_type = event["type"].as_str().unwrap_or("?").to_string();
                sink.lock().unwrap().push(Delivery { event_type, headers, body });
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// The bots of the controller on `port` that are still running (by the controller URL in
/// their environment).
fn bots_of(tag: &Tag, port: u16) -> Vec<u32> {
    let needle = format!("RECFLEET_CONTROLLER_URL=ws://127.0.0.1:{port}/");
    tag.processes()
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            recfleet_tests::procs::comm(*pid).as_deref() == Some("recfleet-bot")
                && env.split(|b| *b == 0).any(|kv| kv.starts_with(needle.as_bytes()))
        })
        .collect()
}

/// The one of them that is recording.
fn recording_bot(tag: &Tag, port: u16) -> Option<u32> {
    bots_of(tag, port).into_iter().find(|pid| recfleet_tests::procs::records(*pid))
}

/// Waits for recording `id` to finish and checks it completed whole: `meeting_ended`, not
/// partial, an H.264 + AAC MP4 in the store of the meeting's length (±1.5 s) `across` what the
/// test did to its controller. Returns its view.
async fn completes_whole(api: &Api, objects: &std::path::Path, id: &str, meeting_secs: f64, across: &str) -> Value {
    let path = format!("/v1/recordings/{id}");
    let done = api.wait_for("finished", Duration::from_secs(60), &path, |r| r["status"] == "completed" || r["status"] == "failed").await;
    assert_eq!(
        (done["status"].as_str(), done["sub_code"].as_str(), done["partial"].as_bool()),
        (Some("completed"), Some("meeting_ended"), Some(false)),
        "{across}: {done:#}"
    );
    let probe = recfleet_tests::media::probe(&objects.join("recordings").join(id).join("recording.mp4"));
    assert!((probe.duration_secs - meeting_secs).abs() <= 1.5, "the whole meeting across {across}: {probe:?}");
    assert_eq!((probe.video_codec.as_str(), probe.audio_codec.as_deref()), ("h264", Some("aac")));
    done
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_and_the_next_controller_finishes_the_recording() {
    sigterm_then_restart(None).await;
}

/// The same on PostgreSQL, the second controller with a data folder of its own (a restart that
/// moves hosts, as on ECS): the state, the bot's token and the webhook signing key come from the
/// database, the recording from the shared store.
#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_a_controller_on_another_host_finishes_the_recording() {
    let pg = recfleet_tests::pg::PgServer::start();
    sigterm_then_restart(Some(&pg)).await;
    let kinds = pg.query("SELECT kind FROM recording_events ORDER BY seq");
    assert!(kinds.lines().any(|k| k == "finished"), "the second controller wrote to the shared database: {kinds}");
}

/// A recording, SIGTERM to its controller mid-meeting, and a second controller that finishes
/// it: on one data folder (SQLite), or with `pg`, on PostgreSQL from another data folder.
async fn sigterm_then_restart(pg: Option<&recfleet_tests::pg::PgServer>) {
    let tag = Tag::new();
    let meeting = MeetingServer::start().await.unwrap();
    let (hook_url, hooks) = webhook_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let port = recfleet_tests::free_port();
    let path_arg = |p: &std::path::Path| p.display().to_string();
    let mut common: Vec<String> = ["--api-key", KEY, "--pool-min-idle", "1", "--pool-max", "2"].map(String::from).to_vec();
    let (first_data, second_data, objects) = match pg {
        None => {
            common.extend(["--webhook-secret".to_string(), WEBHOOK_SECRET.to_string()]);
            let data = dir.path().join("data");
            (data.clone(), data.clone(), data)
        }
        Some(pg) => {
            let objects = dir.path().join("objects");
            std::fs::create_dir_all(&objects).unwrap();
            common.extend(["--database-url".to_string(), pg.url(), "--store".to_string(), format!("file://{}", path_arg(&objects))]);
            (dir.path().join("host-a"), dir.path().join("host-b"), objects)
        }
    };
    let args = |data: &std::path::Path, extra: &[&str]| {
        let mut a: Vec<String> = vec!["--data-dir".into(), path_arg(data)];
        a.extend(common.iter().cloned());
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let mut first = ServeProcess::start(&tag, port, &log, &args(&first_data, &[]));
    let api = Api::new(&first.base, KEY);
    api.wait_for("a warm bot", Duration::from_secs(60), "/v1/pool", |p| p["idle"] == 1).await;

    let meeting_secs = 12.0;
    let body = json!({"meeting_url": meeting.url("/m/drain?end=12"), "recipe_name": "recfleet-test-meeting", "webhook_url": hook_url});
    let (status, _, rec) = api.post("/v1/recordings", &body).await;
    assert_eq!(status, 201, "{rec}");
    let id = rec["id"].as_str().unwrap().to_string();
    let path = format!("/v1/recordings/{id}");
    api.wait_for("recording", Duration::from_secs(60), &path, |r| r["status"] == "recording").await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // SIGTERM: /readyz turns unready at once, new recordings get 503 draining, reads work.
    first.signal(libc::SIGTERM);
    let signalled = Instant::now();
    loop {
        let ready = api.http.get(format!("{}/readyz", api.base)).send().await.unwrap().status().as_u16();
        if ready == 503 {
            break;
        }
        assert!(signalled.elapsed() < Duration::from_secs(1), "/readyz still {ready} 1 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let other = json!({"meeting_url": meeting.url("/m/refused?end=3"), "recipe_name": "recfleet-test-meeting"});
    let (status, headers, refused) = api.post("/v1/recordings", &other).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (503, Some("draining")), "{refused}");
    assert!(headers.get("retry-after").is_some(), "Retry-After on a draining refusal: {headers:?}");
    assert_eq!(api.get(&path).await["id"], id.as_str(), "reads keep working during the drain");

    let exit = first.wait_exit(Duration::from_secs(10));
    let waited = signalled.elapsed();
    let exit = exit.unwrap_or_else(|| panic!("no exit within 10 s of SIGTERM; log:\n{}", first.log_text()));
    assert!(exit.success(), "exit {exit:?} after {waited:?}; log:\n{}", first.log_text());
    assert!(first.log_text().contains("draining"), "the drain is logged");

    // The bot did not go down with its controller: it is still recording.
    let bot = recording_bot(&tag, port).expect("the recording bot outlives its controller");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(recording_bot(&tag, port), Some(bot), "still recording a second later");

    // A new controller on the same state takes the bot back and finishes the recording.
    let mut second = ServeProcess::start(&tag, port, &log, &args(&second_data, &["--stop-bots-on-exit"]));
    let done = completes_whole(&api, &objects, &id, meeting_secs, "the restart").await;
    let duration = done["duration_secs"].as_f64().unwrap();
    assert!((duration - meeting_secs).abs() <= 1.5, "the whole meeting across the restart: {duration} s");
    assert_eq!(api.get("/v1/recordings").await["items"].as_array().unwrap().len(), 1, "one recording, the refused one never made");

    // One `completed` webhook across both controllers, every one signed with the same key.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !hooks.lock().unwrap().iter().any(|d| d.event_type == "recording.completed") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = hooks.lock().unwrap().clone();
    let types: Vec<&str> = seen.iter().map(|d| d.event_type.as_str()).collect();
    assert_eq!(types.iter().filter(|t| **t == "recording.completed").count(), 1, "{types:?}");
    let secret = match pg {
        None => WEBHOOK_SECRET.to_string(),
        Some(pg) => pg.query("SELECT value FROM settings WHERE name = 'webhook_secret'").trim().to_string(),
    };
    let verifier = standardwebhooks::Webhook::new(&secret).unwrap();
    for d in &seen {
        verifier.verify(&d.body, &d.headers).unwrap_or_else(|e| panic!("{} is not signed with the shared key: {e}", d.event_type));
    }

    // The recording's folder holds only the documented files (no temporary leftovers).
    let folder = objects.join("recordings").join(&id);
    let names: Vec<String> = std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let stray: Vec<&String> = names.iter().filter(|n| !documented(n)).collect();
    assert!(stray.is_empty(), "undocumented files in {}: {stray:?}", folder.display());

    second.signal(libc::SIGTERM);
    let exit = second.wait_exit(Duration::from_secs(10)).expect("the second controller exits within 10 s");
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_controller_gone_for_good_idle_bots_exit_and_busy_ones_finish_first() {
    let tag = Tag::new();
    let meeting = MeetingServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.display().to_string();
    let log = dir.path().join("serve.log");
    let port = recfleet_tests::free_port();
    // The bots inherit the controller's environment: a short orphan timeout for the test.
    std::env::set_var("RECFLEET_ORPHAN_TIMEOUT_SECS", "6");
    let mut c =
        ServeProcess::start(&tag, port, &log, &["--data-dir", &data_arg, "--api-key", KEY, "--pool-min-idle", "1", "--pool-max", "2"]);
    let api = Api::new(&c.base, KEY);
    api.wait_for("a warm bot", Duration::from_secs(60), "/v1/pool", |p| p["idle"] == 1).await;
    let body = json!({"meeting_url": meeting.url("/m/orphan?end=14"), "recipe_name": "recfleet-test-meeting"});
    let (status, _, rec) = api.post("/v1/recordings", &body).await;
    assert_eq!(status, 201, "{rec}");
    let id = rec["id"].as_str().unwrap().to_string();
    api.wait_for("recording", Duration::from_secs(60), &format!("/v1/recordings/{id}"), |r| r["status"] == "recording").await;
    api.wait_for("a warm bot beside the busy one", Duration::from_secs(60), "/v1/pool", |p| p["idle"] == 1).await;
    let busy = recording_bot(&tag, port).expect("the recording bot");

    c.signal(libc::SIGKILL);
    c.wait_exit(Duration::from_secs(5)).expect("SIGKILL ends the controller");
    let killed = Instant::now();
    // The idle bot gives up after its orphan timeout; the busy one is still recording then.
    loop {
        let left = bots_of(&tag, port);
        if left == [busy] {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(20), "idle bots still running 20 s after the controller died: {left:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let idle_gone = killed.elapsed();
    assert!(idle_gone >= Duration::from_secs(5), "the idle bot waited for its timeout first: {idle_gone:?}");
    // The busy bot records to the meeting's end, stores the MP4, then exits.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !bots_of(&tag, port).is_empty() {
        assert!(Instant::now() < deadline, "the busy bot did not exit after its recording");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mp4 = data.join("recordings").join(&id).join("recording.mp4");
    let probe = recfleet_tests::media::probe(&mp4);
    assert!((probe.duration_secs - 14.0).abs() <= 1.5, "the whole meeting, recorded without a controller: {probe:?}");
}

/// A value of the controller's `/metrics`, summed over its label sets.
#[tokio::test(flavor = "multi_thread")]
async fn a_bot_that_cannot_start_makes_the_pool_back_off_not_spin() {
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let log = dir.path().join("serve.log");
    let port = recfleet_tests::free_port();
    let args = ["--data-dir", &data, "--api-key", KEY, "--pool-min-idle", "1", "--pool-max", "2", "--bot-binary", "/bin/false"];
    let _c = ServeProcess::start(&tag, port, &log, &args);
    let api = Api::new(&format!("http://127.0.0.1:{port}"), KEY);
    tokio::time::sleep(Duration::from_secs(30)).await;
    // Back-off 1, 2, 4, 8, 16 s: about 5 launches in 30 s, not one per exit.
    let failures = api.metric("recfleet_pool_launch_failures_total").await;
    assert!((3.0..=7.0).contains(&failures), "{failures} launch failures in 30 s");
    let pool = api.get("/v1/pool").await;
    let backoff = &pool["backoff"];
    assert!(backoff["failures"].as_u64().unwrap_or(0) >= 3, "{pool:#}");
    assert!(backoff["reason"].as_str().unwrap_or("").contains("exit status: 1"), "the reason is named: {pool:#}");
    assert!(backoff["retry_in_secs"].as_f64().unwrap_or(0.0) > 0.0, "{pool:#}");
    assert!(api.metric("recfleet_pool_launch_backoff_seconds").await > 0.0);
    // A recording asked for meanwhile waits queued; nothing is lost.
    let (status, _, rec) = api.post("/v1/recordings", &json!({"meeting_url": "https://m.example.com/wait"})).await;
    assert_eq!((status, rec["status"].as_str()), (201, Some("queued")), "{rec}");
}

/// Two controllers on one PostgreSQL: one leads, the other stands by (unready, refusing, writing
/// nothing). The leader is SIGKILLed mid-recording: within 15 s the standby leads, the bot
/// reconnects to it (its second URL) and the recording completes whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_takes_over_from_a_killed_leader_and_the_recording_completes() {
    let tag = Tag::new();
    let pg = recfleet_tests::pg::PgServer::start();
    let meeting = MeetingServer::start().await.unwrap();
    let (hook_url, hooks) = webhook_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects");
    std::fs::create_dir_all(&objects).unwrap();
    let log = dir.path().join("serve.log");
    let (port_a, port_b) = (recfleet_tests::free_port(), recfleet_tests::free_port());
    let advertise = format!("ws://127.0.0.1:{port_a},ws://127.0.0.1:{port_b}");
    let args = |host: &str, extra: &[&str]| {
        let mut a: Vec<String> = vec!["--data-dir".into(), dir.path().join(host).display().to_string()];
        a.extend(["--api-key", KEY, "--pool-min-idle", "1", "--pool-max", "2"].map(String::from));
        a.extend(["--database-url".into(), pg.url(), "--store".into(), format!("file://{}", objects.display())]);
        a.extend(["--advertise-url".into(), advertise.clone()]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let mut leader = ServeProcess::start(&tag, port_a, &log, &args("host-a", &[]));
    let api_a = Api::new(&leader.base, KEY);
    api_a.wait_for("a warm bot", Duration::from_secs(60), "/v1/pool", |p| p["idle"] == 1).await;
    let mut standby = ServeProcess::start(&tag, port_b, &log, &args("host-b", &["--stop-bots-on-exit"]));
    let api_b = Api::new(&standby.base, KEY);

    // The standby answers, but is not ready and takes nothing.
    let started = Instant::now();
    let (status, headers, body) = loop {
        let (status, headers, body) = api_b.call(reqwest::Method::GET, "/readyz", None).await;
        if body["error"]["code"] != "unavailable" || started.elapsed() > Duration::from_secs(10) {
            break (status, headers, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("standby")), "{body}");
    assert!(headers.get("retry-after").is_some(), "{headers:?}");
    let body = json!({"meeting_url": meeting.url("/m/takeover?end=14"), "recipe_name": "recfleet-test-meeting", "webhook_url": hook_url});
    let (status, _, refused) = api_b.post("/v1/recordings", &body).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (503, Some("standby")), "{refused}");

    let (status, _, rec) = api_a.post("/v1/recordings", &body).await;
    assert_eq!(status, 201, "{rec}");
    let id = rec["id"].as_str().unwrap().to_string();
    let path = format!("/v1/recordings/{id}");
    api_a.wait_for("recording", Duration::from_secs(60), &path, |r| r["status"] == "recording").await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    leader.signal(libc::SIGKILL);
    leader.wait_exit(Duration::from_secs(5)).expect("SIGKILL ends the leader");
    let (killed, killed_at) = (Instant::now(), time::OffsetDateTime::now_utc());
    loop {
        let (status, _, _) = api_b.call(reqwest::Method::GET, "/readyz", None).await;
        if status == 200 {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "the standby is not ready 15 s after the leader died; log:\n{}",
            standby.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took_over = killed.elapsed();

    completes_whole(&api_b, &objects, &id, 14.0, "the takeover (the bot reported to the new leader)").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !hooks.lock().unwrap().iter().any(|d| d.event_type == "recording.completed") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let completed = hooks.lock().unwrap().iter().filter(|d| d.event_type == "recording.completed").count();
    assert_eq!(completed, 1);

    // The event log, by lease generation: the leader's entries, then the new leader's, none of
    // the new leader's before the old one died.
    let rows = pg.query("SELECT generation, at FROM recording_events ORDER BY seq");
    let rows: Vec<(i64, time::OffsetDateTime)> = rows
        .lines()
        .map(|l| {
            let (g, at) = l.split_once('|').unwrap();
            (g.parse().unwrap(), time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).unwrap())
        })
        .collect();
    let first_gen = rows[0].0;
    let switch = rows.iter().position(|(g, _)| *g != first_gen).expect("the new leader wrote events");
    let second_gen = rows[switch].0;
    assert!(second_gen > first_gen, "{rows:?}");
    assert!(rows[switch..].iter().all(|(g, _)| *g == second_gen), "the generations interleave: {rows:?}");
    assert!(rows[switch].1 >= killed_at, "the standby wrote at {} while the leader lived (killed at {killed_at})", rows[switch].1);
    eprintln!("standby ready {took_over:?} after the leader's SIGKILL; generations {first_gen} then {second_gen}");

    standby.signal(libc::SIGTERM);
    let exit = standby.wait_exit(Duration::from_secs(10)).expect("the new leader exits within 10 s");
    assert!(exit.success(), "{exit:?}");
}

/// A database the controller cannot use stops it at start: one line that names the database
/// (never its password) and why, exit 2, within seconds.
#[test]
fn a_database_that_cannot_be_used_stops_the_start_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let nothing_there = recfleet_tests::free_port();
    let cases = [
        (
            format!("postgres://rec:s3cret@127.0.0.1:{nothing_there}/recfleet"),
            "cannot open the state database postgres://rec:***@127.0.0.1:",
        ),
        ("mysql://db.internal/recfleet".to_string(), "invalid --database-url"),
    ];
    for (url, says) in cases {
        let started = Instant::now();
        let out = std::process::Command::new(recfleet_tests::binary("recfleet"))
            .args(["serve", "--listen", &format!("127.0.0.1:{}", recfleet_tests::free_port()), "--data-dir", &data, "--api-key", KEY])
            .args(["--pool-min-idle", "0", "--database-url", &url])
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(10), "{url}: took {:?}", started.elapsed());
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(lines.len() == 1 && lines[0].starts_with("recfleet: ") && lines[0].contains(says), "{url}: {stderr}");
        assert!(!stderr.contains("s3cret"), "the password is shown: {stderr}");
    }
}

/// The state database goes away mid-recording: writes fail loudly (500 `internal`, `/readyz`
/// unready, the failure counted for the alert) and a creation that could not be written is not
/// made. The leader, unable to renew its lease, holds off assigning and launching but keeps its
/// state and its bot, which records on. When the database is back and the lease is still its
/// own, it leads on and finishes the recording whole: nothing recorded is lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_that_goes_away_fails_writes_loudly_and_loses_nothing() {
    let tag = Tag::new();
    let mut pg = recfleet_tests::pg::PgServer::start();
    let meeting = MeetingServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects");
    std::fs::create_dir_all(&objects).unwrap();
    let log = dir.path().join("serve.log");
    let port = recfleet_tests::free_port();
    let mut args: Vec<String> = vec!["--data-dir".into(), dir.path().join("data").display().to_string()];
    args.extend(["--api-key", KEY, "--pool-min-idle", "1", "--pool-max", "2", "--stop-bots-on-exit"].map(String::from));
    args.extend(["--database-url".into(), pg.url(), "--store".into(), format!("file://{}", objects.display())]);
    let mut controller = ServeProcess::start(&tag, port, &log, &args);
    let api = Api::new(&controller.base, KEY);
    api.wait_for("a warm bot", Duration::from_secs(60), "/v1/pool", |p| p["idle"] == 1).await;
    let meeting_secs = 20.0;
    let body = json!({"meeting_url": meeting.url("/m/dbgone?end=20"), "recipe_name": "recfleet-test-meeting"});
    let (status, _, rec) = api.post("/v1/recordings", &body).await;
    assert_eq!(status, 201, "{rec}");
    let id = rec["id"].as_str().unwrap().to_string();
    let path = format!("/v1/recordings/{id}");
    api.wait_for("recording", Duration::from_secs(60), &path, |r| r["status"] == "recording").await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    pg.kill();
    let gone = Instant::now();
    let other = json!({"meeting_url": meeting.url("/m/not-made?end=3"), "recipe_name": "recfleet-test-meeting"});
    let (status, _, refused) = api.post("/v1/recordings", &other).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (500, Some("internal")), "{refused}");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.contains("127.0.0.1") && !message.contains("recfleet@"), "no detail leaked: {message}");
    let (ready, _, _) = api.call(reqwest::Method::GET, "/readyz", None).await;
    assert_eq!(ready, 503, "unready while the database is gone");
    let failures = api.metric("recfleet_state_write_failures_total").await;
    assert!(failures >= 1.0, "the failed write is counted: {failures}");

    // Past the lease's life: the controller says it cannot renew, and stays up with its bot.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !controller.log_text().contains("cannot renew the leadership lease") {
        assert!(Instant::now() < deadline, "no word of the lapsed lease; log:\n{}", controller.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(controller.wait_exit(Duration::from_millis(100)).is_none(), "the controller stays up; log:\n{}", controller.log_text());
    recording_bot(&tag, port).expect("the bot records on");
    let (ready, _, _) = api.call(reqwest::Method::GET, "/readyz", None).await;
    assert_eq!(ready, 503, "unready while the lease is not renewed");

    pg.restart();
    let back = Instant::now();
    loop {
        let (ready, _, _) = api.call(reqwest::Method::GET, "/readyz", None).await;
        if ready == 200 {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(15), "not ready 15 s after the database came back; log:\n{}", controller.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("database away {:?}; ready again {:?} after it came back", back - gone, back.elapsed());
    assert!(controller.log_text().contains("leading on"), "{}", controller.log_text());

    completes_whole(&api, &objects, &id, meeting_secs, "the outage").await;
    let items = api.get("/v1/recordings").await["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1, "the refused creation was never made: {items:?}");
    let kinds = pg.query(&format!("SELECT kind FROM recording_events WHERE recording_id = '{id}' ORDER BY seq"));
    assert!(kinds.lines().any(|k| k == "finished"), "what the bot said during the outage was written after it: {kinds}");

    controller.signal(libc::SIGTERM);
    let exit = controller.wait_exit(Duration::from_secs(10)).expect("the controller exits within 10 s");
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn a_lost_window_below_the_heartbeat_timeout_is_refused_at_start() {
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(recfleet_tests::binary("recfleet"))
        .args(["serve", "--listen", "127.0.0.1:0", "--api-key", KEY, "--lost-window-secs", "5", "--data-dir"])
        .arg(data.path())
        .output()
        .expect("recfleet serve runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "refused at start: {err}");
    assert!(err.contains("--lost-window-secs 5") && err.contains("heartbeat timeout"), "{err}");
}

/// Deadlines below their least value are refused at start, by the controller and by the bot
/// (`record` and `agent` alike), each naming the flag; so is a silence threshold below one
/// segment.
#[test]
fn deadlines_below_their_minimum_are_refused_at_start_with_the_flag_named() {
    let data = tempfile::tempdir().unwrap();
    for (flag, value) in [("--joining-deadline-secs", "29"), ("--stopping-deadline-secs", "14"), ("--finalizing-deadline-secs", "59")] {
        let out = std::process::Command::new(recfleet_tests::binary("recfleet"))
            .args(["serve", "--listen", "127.0.0.1:0", "--api-key", KEY, flag, value, "--data-dir"])
            .arg(data.path())
            .output()
            .expect("recfleet serve runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "refused at start: {err}");
        assert!(err.contains(flag) && err.contains(value), "{err}");
    }
    let bot_cases = [
        (vec!["record", "--url", "http://127.0.0.1:9/m", "--out", "/nonexistent"], "--stopping-deadline-secs", "3"),
        (vec!["agent"], "--joining-deadline-secs", "10"),
        (vec!["record", "--url", "http://127.0.0.1:9/m", "--out", "/nonexistent"], "--silence-fault-secs", "1"),
    ];
    for (mut args, flag, value) in bot_cases {
        args.extend([flag, value]);
        let out = std::process::Command::new(recfleet_tests::binary("recfleet-bot")).args(&args).output().expect("recfleet-bot runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} refused at start: {err}");
        assert!(err.contains(flag) && err.contains(value), "{err}");
    }
}
