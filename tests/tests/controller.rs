//! End-to-end through the controller: the real `recfleet` serve loop with the process runtime
//! launches real `recfleet-bot agent` processes into a warm pool; recordings are asked for over
//! the REST API and recorded from the bundled meeting with the real Chromium, FFmpeg, Xvfb and
//! PulseAudio.

use std::time::{Duration, Instant};

use recfleet_tests::meeting::MeetingServer;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const KEY: &str = "test-api-key";

struct Controller {
    base: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    _data: tempfile::TempDir,
}

impl Controller {
    async fn start(min_idle: usize, max: usize) -> Self {
        let data = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let cfg = recfleet::ServeConfig {
            data_dir: data.path().to_path_buf(),
            api_key: KEY.into(),
            pool_min_idle: min_idle,
            pool_max: max,
            allowed_hosts: None,
            bot_binary: recfleet_tests::binary("recfleet-bot"),
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(recfleet::serve(cfg, listener, shutdown.clone()));
        Self { base, http: reqwest::Client::new(), shutdown, _data: data }
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
        .wait_for("completed", Duration::from_secs(90), |r| r["status"] == "completed" || r["status"] == "failed", &format!("/v1/recordings/{id}"))
        .await;
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(done["sub_code"], "meeting_ended");
    let warm_start = rfc3339(&done["recording_started_at"]) - rfc3339(&done["created_at"]);
    assert!(warm_start < time::Duration::seconds(2), "warm start took {warm_start}");
    assert!(rfc3339(&done["joined_at"]) <= rfc3339(&done["recording_started_at"]));
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
}
