//! The bundled test meeting, served over HTTP on loopback: `meeting.html` (lobby, waiting
//! room, tiles, tone, chat, host end, crash and close injection) and `other.html` (a second
//! platform built differently). Server-side failure injection: `?fail_loads=N` answers the
//! first N loads of a meeting id with 503. The server also keeps each meeting's clock
//! (`POST /m/{id}/joined`), so a bot that rejoins finds the meeting where it left it, and counts
//! who left the call with its Leave button (`POST /m/{id}/left`, `MeetingServer::left`).
//! `GET /go?to=URL` redirects (302) to `URL`, for the hostile-page tests.
//!
//! It serves the tests and the demo (`recfleet demo`); it must never be reachable beyond
//! loopback.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

pub const MEETING_HTML: &str = include_str!("../meeting.html");
pub const OTHER_HTML: &str = include_str!("../other.html");
/// The recipe for `meeting.html`.
pub const RECIPE_JSON: &str = include_str!("../recipe.json");

/// What the server remembers per meeting id.
#[derive(Debug, Default, Clone)]
struct Meetings {
    loads: Arc<Mutex<HashMap<String, u32>>>,
    /// When someone first entered the call, and how many entries there were since.
    calls: Arc<Mutex<HashMap<String, (std::time::Instant, u32)>>>,
    /// How many participants left each call with its Leave button.
    left: Arc<Mutex<HashMap<String, u32>>>,
}

pub fn router() -> Router {
    routes(Meetings::default())
}

fn routes(meetings: Meetings) -> Router {
    Router::new()
        .route("/", get(|| async { Html("<h1>recfleet test meetings</h1><p>/m/{id}?end=8 and /other/{id}</p>") }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/m/{id}", get(meeting))
        .route("/m/{id}/joined", axum::routing::post(joined))
        .route("/m/{id}/left", axum::routing::post(left))
        .route("/other/{id}", get(other))
        .route("/go", get(go))
        .with_state(meetings)
}

/// A redirect to `?to=`, wherever it points.
async fn go(Query(q): Query<HashMap<String, String>>) -> Response {
    match q.get("to") {
        Some(to) => (StatusCode::FOUND, [(header::LOCATION, to.clone())]).into_response(),
        None => StatusCode::BAD_REQUEST.into_response(),
    }
}

/// A participant left the call with the Leave button.
async fn left(State(meetings): State<Meetings>, Path(id): Path<String>) -> StatusCode {
    *meetings.left.lock().expect("left lock").entry(id).or_insert(0) += 1;
    StatusCode::NO_CONTENT
}

/// A participant entered the call: how long the call has run (ms) and how many entries it has
/// seen, this one included.
async fn joined(State(meetings): State<Meetings>, Path(id): Path<String>) -> axum::Json<serde_json::Value> {
    let mut calls = meetings.calls.lock().expect("calls lock");
    let (since, entries) = calls.entry(id).or_insert((std::time::Instant::now(), 0));
    *entries += 1;
    axum::Json(serde_json::json!({ "since_ms": since.elapsed().as_millis() as u64, "entries": *entries }))
}

async fn meeting(State(loads): State<Meetings>, Path(id): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
    page(&loads, &id, &q, MEETING_HTML)
}

async fn other(State(loads): State<Meetings>, Path(id): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
    page(&loads, &format!("other/{id}"), &q, OTHER_HTML)
}

fn page(meetings: &Meetings, id: &str, q: &HashMap<String, String>, html: &'static str) -> Response {
    let fail: u32 = q.get("fail_loads").and_then(|v| v.parse().ok()).unwrap_or(0);
    let n = {
        let mut map = meetings.loads.lock().expect("loads lock");
        let n = map.entry(id.to_string()).or_insert(0);
        *n += 1;
        *n
    };
    if n <= fail {
        return (StatusCode::SERVICE_UNAVAILABLE, Html(format!("<h1>503: meeting {id} is not ready (load {n})</h1>"))).into_response();
    }
    ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

/// A meeting server running in the background of a test or the demo.
#[derive(Debug)]
pub struct MeetingServer {
    pub addr: SocketAddr,
    meetings: Meetings,
    task: tokio::task::JoinHandle<()>,
}

impl MeetingServer {
    /// Serves on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST.into()).await
    }

    /// Serves on a free port of `ip` (a Docker network's gateway, for bots in containers).
    pub async fn start_on(ip: std::net::IpAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await?;
        let addr = listener.local_addr()?;
        let meetings = Meetings::default();
        let app = routes(meetings.clone());
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(error = %err, "meeting server stopped");
            }
        });
        Ok(Self { addr, meetings, task })
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// How many participants left meeting `id`'s call with its Leave button.
    pub fn left(&self, id: &str) -> u32 {
        self.meetings.left.lock().expect("left lock").get(id).copied().unwrap_or(0)
    }
}

impl Drop for MeetingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
