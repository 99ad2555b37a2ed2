//! `recfleet demo`: the controller with its defaults, the bundled test meeting on loopback, and
//! one short recording asked for over the REST API the way a meeting platform would, with a
//! progress display; then where the MP4 and the HLS playlist are.
//!
//! Everything runs on loopback and stops when the demo ends.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::ServeConfig;

/// What the demo records.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub data_dir: PathBuf,
    pub bot_binary: PathBuf,
    /// How long the meeting lasts once the bot is admitted.
    pub meeting_secs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start on loopback: {0}")]
    Listen(std::io::Error),
    #[error("the API answered {status} to {what}: {body}")]
    Api { what: &'static str, status: u16, body: String },
    #[error("cannot reach the controller: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{0} did not happen within {1:?}")]
    Timeout(&'static str, Duration),
    #[error("the recording ended {status} ({sub_code}): {error}")]
    Failed { status: String, sub_code: String, error: String },
}

/// The recording's outputs, on disk.
#[derive(Debug, Clone)]
pub struct DemoResult {
    pub recording: Value,
    pub mp4: PathBuf,
    pub playlist: PathBuf,
}

pub async fn run(cfg: DemoConfig) -> Result<DemoResult, DemoError> {
    let meeting_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(DemoError::Listen)?;
    let meeting_addr = meeting_listener.local_addr().map_err(DemoError::Listen)?;
    tokio::spawn(async move { axum::serve(meeting_listener, recfleet_meeting::router()).await });

    let api_key = uuid::Uuid::new_v4().simple().to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(DemoError::Listen)?;
    let base = format!("http://{}", listener.local_addr().map_err(DemoError::Listen)?);
    let shutdown = CancellationToken::new();
    let serve_cfg = ServeConfig {
        data_dir: cfg.data_dir.clone(),
        database: None,
        api_key: api_key.clone(),
        pool_min_idle: 1,
        pool_max: 2,
        pool_idle_ttl: Duration::from_secs(crate::pool::DEFAULT_IDLE_TTL_SECS),
        pool_demand_window: Duration::from_secs(crate::pool::DEFAULT_DEMAND_WINDOW_SECS),
        allowed_hosts: None,
        // The bundled meeting is on loopback.
        networks: recfleet_proto::NetworkPolicy::LOCAL,
        bot_binary: cfg.bot_binary.clone(),
        webhook_secret: None,
        keep_bots_on_exit: false,
        drain: std::time::Duration::ZERO,
        store: None,
        s3_path_style: false,
        presign_expiry: Duration::from_secs(3600),
        docker: None,
        ecs: None,
        advertise_urls: Vec::new(),
        lost_window: crate::fleet::DEFAULT_LOST_WINDOW,
        handoffs: true,
        deadlines: recfleet_proto::Deadlines::default(),
    };
    let served = tokio::spawn(crate::serve(serve_cfg, listener, shutdown.clone()));
    let result = drive(&base, &api_key, &format!("http://{meeting_addr}"), &cfg).await;
    shutdown.cancel();
    let _ = served.await;
    result
}

async fn drive(base: &str, key: &str, meeting: &str, cfg: &DemoConfig) -> Result<DemoResult, DemoError> {
    let http = reqwest::Client::new();
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} [{elapsed:>3}] {msg}").expect("a valid template"));
    bar.enable_steady_tick(Duration::from_millis(120));

    bar.set_message("warming the pool: Xvfb, PulseAudio and Chromium start in a bot");
    let started = Instant::now();
    loop {
        let pool: Value = http.get(format!("{base}/v1/pool")).bearer_auth(key).send().await?.json().await?;
        if pool["idle"].as_u64() >= Some(1) {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bar.abandon();
            return Err(DemoError::Timeout("a warm bot", Duration::from_secs(60)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let body = json!({
        "meeting_url": format!("{meeting}/m/demo?wait=2&end={}", cfg.meeting_secs),
        "recipe_name": "recfleet-test-meeting",
        "bot_name": "recfleet demo",
        "max_duration_secs": 120,
    });
    let resp = http.post(format!("{base}/v1/recordings")).bearer_auth(key).json(&body).send().await?;
    let status = resp.status().as_u16();
    let created: Value = resp.json().await?;
    if status != 201 {
        bar.abandon();
        return Err(DemoError::Api { what: "POST /v1/recordings", status, body: created.to_string() });
    }
    let id = created["id"].as_str().unwrap_or_default().to_string();
    let limit = Duration::from_secs(cfg.meeting_secs + 90);
    let asked = Instant::now();
    let done = loop {
        let rec: Value = http.get(format!("{base}/v1/recordings/{id}")).bearer_auth(key).send().await?.json().await?;
        let status = rec["status"].as_str().unwrap_or("?").to_string();
        bar.set_message(match status.as_str() {
            "queued" => "queued: waiting for a bot".to_string(),
            "joining" => "joining: the bot fills in the lobby form".to_string(),
            "waiting_room" => "waiting room: not recorded".to_string(),
            "recording" => format!("recording the call ({:.0} s since the request)", asked.elapsed().as_secs_f64()),
            "finalizing" | "stopping" => "finalizing: last segment, MP4 by stream copy, ffprobe check".to_string(),
            other => other.to_string(),
        });
        if status == "completed" || status == "failed" {
            break rec;
        }
        if asked.elapsed() > limit {
            bar.abandon();
            return Err(DemoError::Timeout("the end of the recording", limit));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    bar.finish_and_clear();
    if done["status"] != "completed" {
        return Err(DemoError::Failed {
            status: done["status"].as_str().unwrap_or("?").into(),
            sub_code: done["sub_code"].as_str().unwrap_or("?").into(),
            error: done["error"].as_str().unwrap_or("").into(),
        });
    }
    let dir = cfg.data_dir.join("recordings").join(&id);
    let dir = dir.canonicalize().unwrap_or(dir);
    Ok(DemoResult { mp4: dir.join("recording.mp4"), playlist: dir.join("index.m3u8"), recording: done })
}
