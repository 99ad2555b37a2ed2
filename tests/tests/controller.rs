//! End-to-end through the controller: the real `recfleet` serve loop with the process runtime
//! launches real `recfleet-bot agent` processes into a warm pool; recordings are asked for over
//! the REST API and recorded from the bundled meeting with the real Chromium, FFmpeg, Xvfb and
//! PulseAudio.

use std::time::{Duration, Instant};

use recfleet_tests::meeting::MeetingServer;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const KEY: &str = "test-api-key";

const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

struct Controller {
    base: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    served: Option<tokio::task::JoinHandle<Result<(), recfleet::ServeError>>>,
    data: std::sync::Arc<tempfile::TempDir>,
}

fn config(data: &std::path::Path, min_idle: usize, max: usize, keep_bots_on_exit: bool) -> recfleet::ServeConfig {
    recfleet::ServeConfig {
        data_dir: data.to_path_buf(),
        database: None,
        api_key: KEY.into(),
        pool_min_idle: min_idle,
        pool_max: max,
        pool_idle_ttl: Duration::from_secs(recfleet::pool::DEFAULT_IDLE_TTL_SECS),
        pool_demand_window: Duration::from_secs(recfleet::pool::DEFAULT_DEMAND_WINDOW_SECS),
        allowed_hosts: None,
        networks: recfleet_proto::NetworkPolicy::LOCAL,
        bot_binary: recfleet_tests::binary("recfleet-bot"),
        webhook_secret: Some(WEBHOOK_SECRET.into()),
        keep_bots_on_exit,
        drain: Duration::ZERO,
        store: None,
        s3_path_style: false,
        presign_expiry: Duration::from_secs(3600),
        docker: None,
        ecs: None,
        advertise_urls: Vec::new(),
        lost_window: recfleet::fleet::DEFAULT_LOST_WINDOW,
        handoffs: true,
        deadlines: recfleet_proto::Deadlines::default(),
    }
}

impl Controller {
    async fn start(min_idle: usize, max: usize) -> Self {
        let data = std::sync::Arc::new(tempfile::tempdir().unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, data, config_for(min_idle, max, false))
    }

    fn serve(listener: tokio::net::TcpListener, data: std::sync::Arc<tempfile::TempDir>, cfg: Cfg) -> Self {
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let served = tokio::spawn(recfleet::serve(cfg(data.path()), listener, shutdown.clone()));
        Self { base, http: reqwest::Client::new(), shutdown, served: Some(served), data }
    }

    /// Stops this controller and waits until it has let go of its port.
    async fn stop(mut self) -> (std::sync::Arc<tempfile::TempDir>, String) {
        self.shutdown.cancel();
        if let Some(served) = self.served.take() {
            served.await.unwrap().unwrap();
        }
        (self.data.clone(), self.base.clone())
    }

    async fn get(&self, path: &str) -> Value {
        let resp = self.http.get(format!("{}{path}", self.base)).bearer_auth(KEY).send().await.unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    async fn post(&self, path: &str, body: &Value, idempotency_key: Option<&str>) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base)).bearer_auth(KEY).json(body);
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
    }

    async fn wait_for(&self, what: &str, limit: Duration, mut check: impl FnMut(&Value) -> bool, path: &str) -> Value {
        let started = Instant::now();
        loop {
            let v = self.get(path).await;
            if check(&v) {
                return v;
            }
            assert!(started.elapsed() < limit, "{what} not reached within {limit:?}; last: {v:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

type Cfg = Box<dyn FnOnce(&std::path::Path) -> recfleet::ServeConfig + Send>;

fn config_for(min_idle: usize, max: usize, keep: bool) -> Cfg {
    Box::new(move |data| config(data, min_idle, max, keep))
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn rfc3339(v: &Value) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(v.as_str().expect("a time"), &time::format_description::well_known::Rfc3339).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_bot_records_until_the_host_ends_and_the_pool_refills() {
    let meeting = MeetingServer::start().await.unwrap();
    let c = Controller::start(1, 2).await;
    c.wait_for("a warm bot", Duration::from_secs(60), |p| p["idle"] == 1, "/v1/pool").await;

    let body = json!({"meeting_url": meeting.url("/m/api?end=6"), "recipe_name": "recfleet-test-meeting", "bot_name": "API bot"});
    let (status, rec) = c.post("/v1/recordings", &body, None).await;
    assert_eq!(status, 201, "{rec}");
    assert_eq!(rec["status"], "queued");
    let id = rec["id"].as_str().unwrap().to_string();

    let done = c
        .wait_for(
            "completed",
            Duration::from_secs(90),
            |r| r["status"] == "completed" || r["status"] == "failed",
            &format!("/v1/recordings/{id}"),
        )
        .await;
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(done["sub_code"], "meeting_ended");
    // How fast is for the benchmark (bench/controller_bench.py); the order is for the test.
    assert!(rfc3339(&done["created_at"]) < rfc3339(&done["joined_at"]));
    assert!(rfc3339(&done["joined_at"]) <= rfc3339(&done["recording_started_at"]));
    assert!(rfc3339(&done["recording_started_at"]) < rfc3339(&done["ended_at"]));
    let duration = done["duration_secs"].as_f64().unwrap();
    assert!((duration - 6.0).abs() <= 1.5, "duration {duration}");

    // The MP4 downloads through outputs.mp4_url with the same key, and plays.
    let mp4_url = done["outputs"]["mp4_url"].as_str().unwrap();
    let resp = c.http.get(mp4_url).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let bytes = resp.bytes().await.unwrap();
    let file = tempfile::Builder::new().suffix(".mp4").tempfile().unwrap();
    std::fs::write(file.path(), &bytes).unwrap();
    let p = recfleet_tests::media::probe(file.path());
    assert_eq!((p.video_codec.as_str(), p.pix_fmt.as_str(), p.audio_codec.as_deref()), ("h264", "yuv420p", Some("aac")));
    assert!(recfleet_tests::media::mean_volume_db(file.path()) > -40.0);
    // Without the key: 401.
    assert_eq!(c.http.get(mp4_url).send().await.unwrap().status(), 401);

    // Bots are single-use: the pool launches a fresh one and is warm again.
    c.wait_for("the pool refilled", Duration::from_secs(60), |p| p["idle"] == 1 && p["busy"] == 0, "/v1/pool").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_through_the_api_finalizes_the_recording() {
    let meeting = MeetingServer::start().await.unwrap();
    let c = Controller::start(1, 2).await;
    c.wait_for("a warm bot", Duration::from_secs(60), |p| p["idle"] == 1, "/v1/pool").await;
    let body = json!({"meeting_url": meeting.url("/m/stopme?end=0"), "recipe_name": "recfleet-test-meeting"});
    let (_, rec) = c.post("/v1/recordings", &body, None).await;
    let id = rec["id"].as_str().unwrap().to_string();
    let path = format!("/v1/recordings/{id}");
    c.wait_for("recording", Duration::from_secs(60), |r| r["status"] == "recording", &path).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, stopping) = c.post(&format!("{path}/stop"), &json!({}), None).await;
    assert_eq!(status, 200);
    assert_eq!(stopping["status"], "stopping");
    let done = c.wait_for("completed", Duration::from_secs(60), |r| r["status"] == "completed" || r["status"] == "failed", &path).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(done["sub_code"], "stopped_by_api");
    assert!(done["duration_secs"].as_f64().unwrap() >= 3.0);
    // Stopped by the API, the bot left the call with the recipe's Leave button.
    assert_eq!(meeting.left("stopme"), 1, "the bot left the call");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_posts_with_one_idempotency_key_make_one_recording() {
    let c = Controller::start(0, 1).await;
    let body = json!({"meeting_url": "http://127.0.0.1:9/never", "max_duration_secs": 5});
    let posts = (0..10).map(|_| c.post("/v1/recordings", &body, Some("same-key")));
    let answers = futures::future::join_all(posts).await;
    let ids: std::collections::HashSet<String> = answers.iter().map(|(_, r)| r["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert_eq!(answers.iter().filter(|(s, _)| *s == 201).count(), 1, "exactly one POST creates");
    let list = c.get("/v1/recordings").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_stable_codes() {
    let c = Controller::start(0, 1).await;
    let unauth = c.http.post(format!("{}/v1/recordings", c.base)).json(&json!({})).send().await.unwrap();
    assert_eq!(unauth.status(), 401);
    let body: Value = unauth.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    for (body, code) in [
        (json!({"meeting_url": "file:///etc/passwd"}), "invalid_url"),
        (json!({"meeting_url": "http://169.254.169.254/latest/meta-data/"}), "invalid_url"),
        (json!({"meeting_url": "http://2852039166/latest/meta-data/"}), "invalid_url"),
        (json!({"meeting_url": "https://m.example.com", "webhook_url": "http://169.254.170.2/v2/credentials"}), "invalid_webhook_url"),
        (json!({"meeting_url": "https://m.example.com", "webhook_url": "file:///etc/passwd"}), "invalid_webhook_url"),
        (json!({"meeting_url": "https://m.example.com", "recipe": {"name": "x", "steps": [{"hover": "#a"}]}}), "invalid_request"),
        (json!({"meeting_url": "https://m.example.com", "recipe_name": "nope"}), "invalid_recipe"),
        (json!({"meeting_url": "https://m.example.com", "surprise": 1}), "invalid_request"),
    ] {
        let (status, answer) = c.post("/v1/recordings", &body, None).await;
        assert_eq!(status, 422, "{body} -> {answer}");
        assert_eq!(answer["error"]["code"], code, "{body} -> {answer}");
    }
    let missing = c.http.get(format!("{}/v1/recordings/nope", c.base)).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let (status, _) = c.post("/v1/recordings", &json!({"meeting_url": "https://m.example.com/x"}), None).await;
    assert_eq!(status, 201);
    let listed = c.get("/v1/recordings").await;
    let id = listed["items"][0]["id"].as_str().unwrap().to_string();
    let busy = c.http.delete(format!("{}/v1/recordings/{id}", c.base)).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(busy.status(), 409, "an active recording is not deleted");
    let (status, twice) = c.post("/v1/recordings", &json!({"meeting_url": "https://m.example.com/x"}), None).await;
    assert_eq!((status, twice["error"]["code"].as_str()), (409, Some("conflict")), "one active recording per meeting: {twice}");
    let (status, _) = c.post("/v1/recordings", &json!({"meeting_url": "https://m.example.com/x", "allow_concurrent": true}), None).await;
    assert_eq!(status, 201, "unless asked otherwise");
    assert_eq!(c.http.get(format!("{}/readyz", c.base)).send().await.unwrap().status(), 200);

    // The OpenAPI document describes every route.
    let doc: Value = c.http.get(format!("{}/openapi.json", c.base)).send().await.unwrap().json().await.unwrap();
    for path in ["/v1/recordings", "/v1/recordings/{id}", "/v1/recordings/{id}/stop", "/v1/recordings/{id}/files/{name}", "/v1/pool"] {
        assert!(doc["paths"][path].is_object(), "{path} missing from /openapi.json");
    }
    assert!(doc["components"]["schemas"]["Recording"].is_object());
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_restart_mid_recording_loses_nothing() {
    let meeting = MeetingServer::start().await.unwrap();
    let data = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The first controller leaves its bots running when it stops, as a restarted one would.
    let first = Controller::serve(listener, data.clone(), config_for(1, 2, true));
    first.wait_for("a warm bot", Duration::from_secs(60), |p| p["idle"] == 1, "/v1/pool").await;
    let body = json!({"meeting_url": meeting.url("/m/restart?end=10"), "recipe_name": "recfleet-test-meeting"});
    let (_, rec) = first.post("/v1/recordings", &body, Some("restart-key")).await;
    let id = rec["id"].as_str().unwrap().to_string();
    let path = format!("/v1/recordings/{id}");
    first.wait_for("recording", Duration::from_secs(60), |r| r["status"] == "recording", &path).await;
    let (data, _) = first.stop().await;

    // The controller is away for a moment; the bot keeps recording and reconnects.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let listener = rebind(addr).await;
    let second = Controller::serve(listener, data, config_for(1, 2, false));
    let again = second.get(&path).await;
    assert_eq!(again["id"], id.as_str(), "the recording survived the restart");
    let (status, same) = second.post("/v1/recordings", &body, Some("restart-key")).await;
    assert_eq!((status, same["id"].as_str()), (200, Some(id.as_str())), "idempotency survives too");

    let done =
        second.wait_for("completed", Duration::from_secs(60), |r| r["status"] == "completed" || r["status"] == "failed", &path).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(done["sub_code"], "meeting_ended");
    let duration = done["duration_secs"].as_f64().unwrap();
    assert!((duration - 10.0).abs() <= 1.5, "the whole meeting is recorded across the restart: {duration} s");
    let list = second.get("/v1/recordings").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "nothing duplicated");
    // The event log holds the recording's life once: one creation, one assignment, one end.
    let db = recfleet::store::Store::open(&recfleet::store::Store::default_url(second.data.path())).await.unwrap();
    let kinds: Vec<String> = db.events(&id).await.unwrap().into_iter().map(|(k, _)| k).collect();
    for once in ["created", "assigned", "finished"] {
        assert_eq!(kinds.iter().filter(|k| *k == once).count(), 1, "{once} in {kinds:?}");
    }
    let mp4 = second.data.path().join("recordings").join(&id).join("recording.mp4");
    let p = recfleet_tests::media::probe(&mp4);
    assert!((p.duration_secs - 10.0).abs() <= 1.5, "{p:?}");
    // The first controller's bots were detached; the second retires the connected ones as it
    // stops. One not reconnected by then would only leave at its orphan timeout: end it here.
    let base = second.base.clone();
    second.stop().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !recfleet_tests::procs::bots_of(&base).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for pid in recfleet_tests::procs::bots_of(&base) {
        kill_tree(pid);
    }
}

async fn rebind(addr: std::net::SocketAddr) -> tokio::net::TcpListener {
    for _ in 0..50 {
        if let Ok(l) = tokio::net::TcpListener::bind(addr).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot bind {addr} again");
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_arrive_signed_for_every_status_change() {
    use axum::body::Bytes;
    use axum::http::HeaderMap;
    let meeting = MeetingServer::start().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(HeaderMap, Bytes)>();
    let fail_first = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            let fail_first = fail_first.clone();
            async move {
                // The first delivery fails: the controller must retry it.
                if fail_first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                let _ = tx.send((headers, body));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let hook_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", hook_listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(hook_listener, receiver).await.unwrap() });

    let c = Controller::start(1, 2).await;
    c.wait_for("a warm bot", Duration::from_secs(60), |p| p["idle"] == 1, "/v1/pool").await;
    let body = json!({"meeting_url": meeting.url("/m/hooks?end=4"), "recipe_name": "recfleet-test-meeting", "webhook_url": hook_url});
    let (_, rec) = c.post("/v1/recordings", &body, None).await;
    let id = rec["id"].as_str().unwrap().to_string();

    let verifier = standardwebhooks::Webhook::new(WEBHOOK_SECRET).unwrap();
    let mut seen = Vec::new();
    while !seen.contains(&"recording.completed".to_string()) {
        let (headers, body) = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await.expect("a webhook").unwrap();
        verifier.verify(&body, &headers).expect("the signature verifies");
        let mut tampered = body.to_vec();
        tampered.push(b' ');
        assert!(verifier.verify(&tampered, &headers).is_err(), "a changed body does not verify");
        let event: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(event["data"]["id"], id.as_str());
        seen.push(event["type"].as_str().unwrap().to_string());
    }
    for want in ["recording.joining", "recording.recording", "recording.completed"] {
        assert!(seen.iter().any(|s| s == want), "{want} in {seen:?}");
    }
    // Every delivery is recorded, the failed first attempt included.
    let db = recfleet::store::Store::open(&recfleet::store::Store::default_url(c.data.path())).await.unwrap();
    let deliveries = db.deliveries(&id).await.unwrap();
    assert!(deliveries.iter().any(|(_, attempt, code)| *attempt == 1 && *code == Some(503)), "{deliveries:?}");
    assert!(deliveries.iter().any(|(_, attempt, code)| *attempt == 2 && *code == Some(204)), "{deliveries:?}");
}

/// The pids of this controller's bots (found by the controller URL in their environment).
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_bot_is_declared_lost_and_replaced() {
    let meeting = MeetingServer::start().await.unwrap();
    let data = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    // A frozen bot neither talks nor uploads: lost once the (shortened) window passes.
    let c = Controller::serve(
        listener,
        data,
        Box::new(|d| recfleet::ServeConfig { lost_window: Duration::from_secs(15), ..config(d, 1, 2, false) }),
    );
    c.wait_for("a warm bot", Duration::from_secs(60), |p| p["idle"] == 1, "/v1/pool").await;
    let body = json!({"meeting_url": meeting.url("/m/frozen?end=0"), "recipe_name": "recfleet-test-meeting"});
    let (_, rec) = c.post("/v1/recordings", &body, None).await;
    let id = rec["id"].as_str().unwrap().to_string();
    let path = format!("/v1/recordings/{id}");
    c.wait_for("recording", Duration::from_secs(60), |r| r["status"] == "recording", &path).await;
    // A few segments reach the store first.
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The pool refills at once; the busy bot is the one whose FFmpeg writes segments.
    let busy = recfleet_tests::procs::bots_of(&c.base)
        .into_iter()
        .find(|pid| recfleet_tests::procs::records(*pid))
        .expect("the busy bot's process");
    // SAFETY: SIGSTOP to our own descendant: it stops heartbeating without exiting.
    unsafe { libc::kill(busy as libc::pid_t, libc::SIGSTOP) };

    let lost = c.wait_for("declared lost", Duration::from_secs(45), |r| r["status"] == "completed" || r["status"] == "failed", &path).await;
    assert_eq!(lost["sub_code"], "bot_crashed", "{lost:#}");
    // What it stored before it froze is the recording, finalized without it.
    assert_eq!(lost["status"], "completed", "{lost:#}");
    assert_eq!(lost["partial"], true, "it had started recording");
    c.wait_for("a replacement warm bot", Duration::from_secs(60), |p| p["idle"] == 1 && p["busy"] == 0, "/v1/pool").await;
    // SAFETY: let the frozen bot run again so the controller's stop can end it.
    unsafe { libc::kill(busy as libc::pid_t, libc::SIGCONT) };
}

/// SIGKILL to every process of a bot: the bot and all its children at once.
fn kill_tree(root: u32) -> usize {
    let pids = recfleet_tests::procs::descendants(root);
    for pid in &pids {
        // SAFETY: SIGKILL to our own descendants.
        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
    }
    pids.len()
}

/// Against s3s-fs, which checks every request's signature: segments reach the bucket while
/// the meeting runs; a bot killed with all its children loses at most its last segment, and
/// the controller finalizes a playable MP4 from the bucket on its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_bot_is_finalized_from_the_bucket() {
    use recfleet_storage::ObjectStore;
    let server = recfleet_tests::s3::S3Server::s3s_fs().await;
    recfleet_tests::s3::use_endpoint(&server.endpoint);
    let bucket = "recfleet-crash";
    recfleet_tests::s3::create_bucket(bucket).await;
    let meeting = MeetingServer::start().await.unwrap();
    let data = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = Controller::serve(
        listener,
        data.clone(),
        Box::new(move |d| recfleet::ServeConfig {
            store: Some(format!("s3://{bucket}/fleet").parse().unwrap()),
            s3_path_style: true,
            presign_expiry: Duration::from_secs(600),
            ..config(d, 1, 2, false)
        }),
    );
    c.wait_for("a warm bot", Duration::from_secs(60), |p| p["idle"] == 1, "/v1/pool").await;
    let body = json!({"meeting_url": meeting.url("/m/killed?end=0"), "recipe_name": "recfleet-test-meeting"});
    let (_, rec) = c.post("/v1/recordings", &body, None).await;
    let id = rec["id"].as_str().unwrap().to_string();
    let path = format!("/v1/recordings/{id}");
    c.wait_for("recording", Duration::from_secs(60), |r| r["status"] == "recording", &path).await;

    // After 9 s of recording, at least 3 segments are in the bucket.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let store = recfleet_tests::s3::store(bucket, "fleet").await;
    let prefix = recfleet_storage::recording_key(&id, "");
    let is_segment = |n: &str| n.starts_with("seg_") && n.ends_with(".m4s");
    let stored_early = store.list(&prefix).await.unwrap().into_iter().filter(|o| is_segment(&o.name)).count();
    assert!(stored_early >= 3, "only {stored_early} segments in the bucket after 9 s of recording");
    let live: recfleet_proto::Manifest =
        serde_json::from_slice(&store.get(&format!("{prefix}manifest.json")).await.unwrap().unwrap()).unwrap();
    assert!(!live.complete && live.segments.len() >= 2, "the live manifest: {live:?}");
    let live_playlist = String::from_utf8(store.get(&format!("{prefix}index.m3u8")).await.unwrap().unwrap()).unwrap();
    assert!(live_playlist.contains("#EXT-X-PLAYLIST-TYPE:EVENT") && !live_playlist.contains("ENDLIST"), "{live_playlist}");

    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy = recfleet_tests::procs::bots_of(&c.base)
        .into_iter()
        .find(|pid| recfleet_tests::procs::records(*pid))
        .expect("the busy bot's process");
    let killed = kill_tree(busy);
    assert!(killed >= 5, "the bot and its children (Xvfb, PulseAudio, Chromium, FFmpeg): {killed}");

    let done = c
        .wait_for("finalized from the bucket", Duration::from_secs(60), |r| r["status"] == "completed" || r["status"] == "failed", &path)
        .await;
    assert_eq!(
        (done["status"].as_str(), done["sub_code"].as_str(), done["partial"].as_bool()),
        (Some("completed"), Some("bot_crashed"), Some(true)),
        "{done:#}"
    );

    // The download link is a presigned URL that expires, and s3s-fs checks its signature.
    let mp4_url = done["outputs"]["mp4_url"].as_str().unwrap();
    assert!(mp4_url.contains("X-Amz-Signature=") && mp4_url.contains("X-Amz-Expires=600"), "{mp4_url}");
    let resp = c.http.get(mp4_url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "presigned GET");
    let file = tempfile::Builder::new().suffix(".mp4").tempfile().unwrap();
    std::fs::write(file.path(), resp.bytes().await.unwrap()).unwrap();
    let p = recfleet_tests::media::probe(file.path());
    assert_eq!((p.video_codec.as_str(), p.pix_fmt.as_str(), p.audio_codec.as_deref()), ("h264", "yuv420p", Some("aac")));
    assert!(recfleet_tests::media::moov_before_mdat(file.path()), "faststart");
    let tampered = mp4_url.replace("X-Amz-Signature=", "X-Amz-Signature=0");
    let refused = c.http.get(&tampered).send().await.unwrap().status();
    assert!(refused == 403 || refused == 400, "a tampered link is refused, not {refused}");

    // Every stored segment is in the final manifest with its sha256.
    let manifest: recfleet_proto::Manifest =
        serde_json::from_slice(&store.get(&format!("{prefix}manifest.json")).await.unwrap().unwrap()).unwrap();
    assert!(manifest.complete);
    let stored: Vec<String> = store.list(&prefix).await.unwrap().into_iter().map(|o| o.name).filter(|n| is_segment(n)).collect();
    assert_eq!(manifest.segments.iter().map(|s| s.name.clone()).collect::<Vec<_>>(), stored);
    for seg in &manifest.segments {
        let bytes = store.get(&format!("{prefix}{}", seg.name)).await.unwrap().unwrap();
        assert_eq!((bytes.len() as u64, recfleet_media::sha256_hex(&bytes)), (seg.bytes, seg.sha256.clone()), "{}", seg.name);
    }
    // At most one segment lost: the bot's spool shows every segment FFmpeg closed.
    let spool = data.path().join("spool").join(&id);
    let closed = std::fs::read_dir(&spool).unwrap().flatten().filter(|e| is_segment(&e.file_name().to_string_lossy())).count();
    assert!(stored.len() + 1 >= closed, "{} stored of {closed} closed", stored.len());
    let duration = done["duration_secs"].as_f64().unwrap();
    assert!((duration - p.duration_secs).abs() < 0.5 && duration >= 6.0, "duration {duration}, probe {}", p.duration_secs);
}

/// The bot's connection to the controller cut for 60 s (a TCP proxy between them drops every
/// connection and refuses new ones) while the bot goes on recording and uploading: the
/// controller sees its recording grow in the store, so it is not declared lost, and once the
/// connection is back the recording completes whole, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_bot_cut_off_from_the_controller_for_a_minute_is_not_lost_and_completes_whole() {
    const MEETING_SECS: f64 = 75.0;
    let meeting = MeetingServer::start().await.unwrap();
    let data = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = recfleet_tests::s3::Proxy::start(listener.local_addr().unwrap()).await;
    let advertised = format!("ws://{}", proxy.addr);
    let c = Controller::serve(
        listener,
        data,
        Box::new(move |d| recfleet::ServeConfig { advertise_urls: vec![advertised], ..config(d, 1, 2, false) }),
    );
    c.wait_for("a warm bot", Duration::from_secs(60), |p| p["idle"] == 1, "/v1/pool").await;
    let body = json!({"meeting_url": meeting.url(&format!("/m/partition?end={MEETING_SECS}")), "recipe_name": "recfleet-test-meeting"});
    let (_, rec) = c.post("/v1/recordings", &body, None).await;
    let id = rec["id"].as_str().unwrap().to_string();
    let path = format!("/v1/recordings/{id}");
    c.wait_for("recording", Duration::from_secs(60), |r| r["status"] == "recording", &path).await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    proxy.cut(true);
    let cut_at = Instant::now();
    // Past the old 30 s rule, and past the heartbeat timeout by far: still recording.
    while cut_at.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let r = c.get(&path).await;
        assert_eq!(r["status"], "recording", "{:.0} s into the cut: {r:#}", cut_at.elapsed().as_secs_f64());
    }
    let metrics = c.http.get(format!("{}/metrics", c.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "recfleet_pool_bots_silent 1"), "the silent bot is counted");
    proxy.cut(false);

    let done = c.wait_for("completed", Duration::from_secs(60), |r| r["status"] == "completed" || r["status"] == "failed", &path).await;
    assert_eq!(
        (done["status"].as_str(), done["sub_code"].as_str(), done["partial"].as_bool()),
        (Some("completed"), Some("meeting_ended"), Some(false)),
        "finalized by its own bot: {done:#}"
    );
    let duration = done["duration_secs"].as_f64().unwrap();
    assert!((duration - MEETING_SECS).abs() <= 2.5, "the whole meeting: {duration:.1} s");
    let mp4_url = done["outputs"]["mp4_url"].as_str().unwrap();
    let resp = c.http.get(mp4_url).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let file = tempfile::Builder::new().suffix(".mp4").tempfile().unwrap();
    std::fs::write(file.path(), resp.bytes().await.unwrap()).unwrap();
    let p = recfleet_tests::media::probe(file.path());
    assert_eq!((p.video_codec.as_str(), p.audio_codec.as_deref()), ("h264", Some("aac")), "{p:?}");
    assert!((p.duration_secs - MEETING_SECS).abs() <= 2.5, "{p:?}");
    // The timeline holds one end and one finalization.
    let events = c.get(&format!("{path}/files/events.json")).await;
    let kinds: Vec<&str> = events["events"].as_array().map(|e| e.iter().filter_map(|e| e["kind"].as_str()).collect()).unwrap_or_default();
    assert_eq!(kinds.iter().filter(|k| **k == "ended").count(), 1, "{kinds:?}");
}

/// The handoff test's meeting, by its own clock (from the first bot's join).
const HANDOFF_MEETING_SECS: f64 = 20.0;

/// The sum of a metric's samples whose labels include `labels` (`result="started"`).
async fn metric(c: &Controller, name: &str, labels: &str) -> f64 {
    let text = c.http.get(format!("{}/metrics", c.base)).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// A bot whose host takes it away mid-meeting (SIGTERM) hands its recording over: a warm bot
/// joins and records the rest into the same recording, the first leaves once the second's first
/// segment is stored, and one MP4 covers the whole meeting, the overlap cut, with at most 2 s
/// missing. The recording completes once, as the meeting ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_bot_taken_away_mid_meeting_hands_its_recording_to_a_successor() {
    let meeting = MeetingServer::start().await.unwrap();
    let c = Controller::start(1, 3).await;
    c.wait_for("a warm bot", Duration::from_secs(60), |p| p["idle"] == 1, "/v1/pool").await;
    let url = meeting.url(&format!("/m/handoff?end={HANDOFF_MEETING_SECS}&clock=meeting"));
    let (status, rec) = c.post("/v1/recordings", &json!({"meeting_url": url, "recipe_name": "recfleet-test-meeting"}), None).await;
    assert_eq!(status, 201, "{rec}");
    let id = rec["id"].as_str().unwrap().to_string();
    let path = format!("/v1/recordings/{id}");
    c.wait_for("recording", Duration::from_secs(60), |r| r["status"] == "recording", &path).await;
    // A successor is warm, and a few segments are stored, before the host takes the bot away.
    c.wait_for("a warm successor", Duration::from_secs(60), |p| p["idle"] == 1 && p["starting"] == 0, "/v1/pool").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let busy: Vec<u32> = recfleet_tests::procs::bots_of(&c.base).into_iter().filter(|pid| recfleet_tests::procs::records(*pid)).collect();
    assert_eq!(busy.len(), 1, "one bot records before the handoff");
    // SAFETY: SIGTERM to our own descendant, as ECS or Docker stops a container.
    unsafe { libc::kill(busy[0] as libc::pid_t, libc::SIGTERM) };

    let done = c.wait_for("completed", Duration::from_secs(90), |r| r["status"] == "completed" || r["status"] == "failed", &path).await;
    let measured = recfleet_tests::handoff::check(&c.http, &c.base, KEY, &done, HANDOFF_MEETING_SECS).await;
    eprintln!("handoff on the process runtime: {measured:?}");
    assert_eq!(metric(&c, "recfleet_recording_handoffs_total", "result=\"started\"").await, 1.0);
    assert_eq!(metric(&c, "recfleet_recording_handoffs_total", "result=\"completed\"").await, 1.0);
    assert_eq!(metric(&c, "recfleet_recordings_finished_total", "status=\"completed\"").await, 1.0, "completed exactly once");
    // The first bot is gone, and did not leave a recording behind it.
    let started = Instant::now();
    while recfleet_tests::procs::bots_of(&c.base).contains(&busy[0]) {
        assert!(started.elapsed() < Duration::from_secs(30), "the bot taken away did not exit");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let list = c.get("/v1/recordings").await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list:#}");
}
