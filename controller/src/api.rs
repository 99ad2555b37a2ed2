//! The REST API and the bots' WebSocket endpoint. Handlers parse and validate, then hand a
//! command to the manager; they never touch state themselves.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use recfleet_proto::protocol::BotMessage;
use recfleet_proto::{Recipe, RecordingStatus};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::manager::Command;
use crate::model::{ApiError, CreateRecording, ErrorBody, Outputs, PoolBackoff, PoolView, Recording};

/// Request bodies larger than this are refused (a recipe is a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Files a client may download from a recording's folder.
const DOWNLOADABLE: [&str; 5] = ["recording.mp4", "index.m3u8", "manifest.json", "events.json", "init.mp4"];

/// The bundled recipes, by name.
pub fn builtin_recipe(name: &str) -> Option<Recipe> {
    match name {
        "recfleet-test-meeting" => Recipe::from_json(recfleet_meeting::RECIPE_JSON).ok(),
        _ => None,
    }
}

#[derive(Debug, Clone)]
pub struct AppState {
    pub commands: mpsc::Sender<Command>,
    /// sha256 of the API key: the key itself is not kept.
    pub api_key_sha256: String,
    pub allowed_hosts: Option<Vec<String>>,
    /// Where the recordings' files are.
    pub objects: recfleet_storage::Store,
    /// How long presigned download links stay valid (S3).
    pub presign_expiry: std::time::Duration,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Closes the bots' WebSockets on shutdown (graceful shutdown waits for every connection).
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Cancelled when the drain begins: new recordings are refused, `/readyz` is unready.
    pub draining: tokio_util::sync::CancellationToken,
    /// Cancelled once this controller leads and its state is loaded.
    pub leading: tokio_util::sync::CancellationToken,
    /// Cancelled when this controller found another one leading: until it takes over, it answers
    /// 503 `standby` to everything but `/healthz`, `/metrics` and the docs. While it starts (neither
    /// is cancelled yet) requests wait, as they would in the listen backlog.
    pub standing_by: tokio_util::sync::CancellationToken,
}

/// How long a request made while the controller starts waits for it to lead.
const START_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl AppState {
    /// Whether this controller leads (waiting while it starts).
    async fn leads(&self) -> bool {
        if !self.leading.is_cancelled() {
            tokio::select! {
                _ = self.leading.cancelled() => {}
                _ = self.standing_by.cancelled() => {}
                _ = tokio::time::sleep(START_WAIT) => {}
            }
        }
        self.leading.is_cancelled()
    }
}

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/recordings", post(create).get(list))
        .route("/recordings/{id}", get(get_one).delete(delete))
        .route("/recordings/{id}/stop", post(stop))
        .route("/recordings/{id}/files/{name}", get(file))
        .route("/pool", get(pool))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    // A standby has nothing loaded: bots and clients go to the leader (bots try their next URL).
    let led = Router::new()
        .nest("/v1", v1)
        .route("/v1/bots/connect", get(bot_connect))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_leading));
    Router::new()
        .merge(led)
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(title = "recfleet", description = "Recordings of web meetings by a warm pool of bots. Every /v1 route takes `Authorization: Bearer <API key>`."),
    paths(create, list, get_one, stop, delete, file, pool),
    components(schemas(Recording, Outputs, CreateRecording, PoolView, PoolBackoff, ErrorBody)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

#[derive(Debug)]
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("api_key", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
        openapi.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new("api_key", Vec::<String>::new())]);
    }
}

use utoipa::OpenApi as _;

async fn require_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(crate::store::token_hash);
    // Constant-time over the hashes: the comparison says nothing about the key.
    let ok = presented.is_some_and(|p| {
        p.len() == state.api_key_sha256.len() && p.bytes().zip(state.api_key_sha256.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    });
    if ok {
        next.run(req).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

async fn require_leading(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.leads().await {
        next.run(req).await
    } else {
        ApiError::Standby.into_response()
    }
}

/// Counts and times every routed request by its route template (never by id).
async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<axum::extract::MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let method = req.method().as_str().to_string();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let m = &state.metrics;
    m.api_duration.with_label_values(&[&route, &method]).observe(started.elapsed().as_secs_f64());
    m.api_requests.with_label_values(&[&route, &method, resp.status().as_str()]).inc();
    resp
}

/// Prometheus' text format. Not behind the API key: it holds no ids and no secrets, and
/// scrapers run inside the deployment's network.
async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

async fn ask<T>(state: &AppState, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, ApiError> {
    let (tx, rx) = oneshot::channel();
    state.commands.send(make(tx)).await.map_err(|_| ApiError::Unavailable)?;
    rx.await.map_err(|_| ApiError::Unavailable)
}

#[utoipa::path(post, path = "/v1/recordings", request_body = CreateRecording,
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeats with the same key return the same recording")),
    responses((status = 201, body = Recording, description = "Created and queued"), (status = 200, body = Recording, description = "Same Idempotency-Key: the existing recording"),
        (status = 401, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "`draining`: this controller is about to exit; retry after `Retry-After` seconds"),
        (status = 500, body = ErrorBody, description = "`internal`: the state could not be written")))]
async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<CreateRecording>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    if state.draining.is_cancelled() {
        return Err(ApiError::Draining);
    }
    let Json(mut req) = body.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    crate::validate::meeting_url(&req.meeting_url, state.allowed_hosts.as_deref())?;
    match (&req.recipe, req.recipe_name.take()) {
        (Some(_), Some(_)) => return Err(ApiError::InvalidRequest("give recipe or recipe_name, not both".into())),
        (Some(r), None) => r.validate().map_err(|e| ApiError::InvalidRecipe(e.to_string()))?,
        (None, Some(name)) => {
            req.recipe = Some(builtin_recipe(&name).ok_or_else(|| ApiError::InvalidRecipe(format!("no built-in recipe {name:?}")))?)
        }
        (None, None) => {}
    }
    if req.max_duration_secs == Some(0) {
        return Err(ApiError::InvalidRequest("max_duration_secs must be at least 1".into()));
    }
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
    let (recording, created) = ask(&state, |reply| Command::Create { req, idempotency_key: key, reply }).await??;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(with_links(&state, recording).await)).into_response())
}

/// Page size when the client does not say, and the most it may ask for.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

#[derive(Debug, Deserialize)]
struct ListQuery {
    status: Option<RecordingStatus>,
    limit: Option<usize>,
    /// The `next_after` of the previous page.
    after: Option<String>,
}

#[utoipa::path(get, path = "/v1/recordings",
    params(("status" = Option<String>, Query, description = "Only this status"), ("limit" = Option<usize>, Query, description = "Page size, 1 to 500 (50)"),
        ("after" = Option<String>, Query, description = "`next_after` of the previous page")),
    responses((status = 200, description = "`{items: [Recording], next_after}`, newest first")))]
async fn list(State(state): State<AppState>, Query(q): Query<ListQuery>) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let found: Vec<Recording> = ask(&state, |reply| Command::List { status: q.status, limit, after: q.after, reply }).await?;
    let mut items = Vec::with_capacity(found.len());
    for rec in found {
        items.push(with_links(&state, rec).await);
    }
    let next_after = if items.len() == limit { items.last().map(|r| r.id.clone()) } else { None };
    Ok(Json(serde_json::json!({ "items": items, "next_after": next_after })))
}

#[utoipa::path(delete, path = "/v1/recordings/{id}", responses((status = 204, description = "Deleted with its files"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "Still active: stop it first")))]
async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    ask(&state, |reply| Command::Delete { id, reply }).await??;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/recordings/{id}", responses((status = 200, body = Recording), (status = 404, body = ErrorBody)))]
async fn get_one(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Recording>, ApiError> {
    let found = ask(&state, |reply| Command::Get { id: id.clone(), reply }).await?;
    let rec = found.ok_or(ApiError::NotFound(id))?;
    Ok(Json(with_links(&state, rec).await))
}

/// For an S3 store, download links are presigned URLs that expire; for a folder, the API's
/// own `/files/` links (which take the API key).
async fn with_links(state: &AppState, mut rec: Recording) -> Recording {
    if rec.outputs.is_none() || state.objects.local_root().is_some() {
        return rec;
    }
    let sign = |name: &str| {
        let key = recfleet_storage::recording_key(&rec.id, name);
        async move { state.objects.download_url(&key, state.presign_expiry).await }
    };
    match (sign(recfleet_media::MP4).await, sign(recfleet_media::PLAYLIST).await, sign(recfleet_media::MANIFEST).await) {
        (Ok(Some(mp4_url)), Ok(Some(hls_url)), Ok(Some(manifest_url))) => rec.outputs = Some(Outputs { mp4_url, hls_url, manifest_url }),
        (Err(err), _, _) | (_, Err(err), _) | (_, _, Err(err)) => {
            tracing::warn!(recording_id = %rec.id, error = %err, "cannot presign the download links")
        }
        _ => {}
    }
    rec
}

#[utoipa::path(post, path = "/v1/recordings/{id}/stop", responses((status = 200, body = Recording, description = "Stopping; it finalizes and completes with stopped_by_api"), (status = 404, body = ErrorBody)))]
async fn stop(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Recording>, ApiError> {
    let rec = ask(&state, |reply| Command::Stop { id, reply }).await??;
    Ok(Json(with_links(&state, rec).await))
}

#[utoipa::path(get, path = "/v1/pool", responses((status = 200, body = PoolView)))]
async fn pool(State(state): State<AppState>) -> Result<Json<PoolView>, ApiError> {
    Ok(Json(ask(&state, |reply| Command::Pool { reply }).await?))
}

#[utoipa::path(get, path = "/v1/recordings/{id}/files/{name}",
    params(("name" = String, Path, description = "recording.mp4, index.m3u8, manifest.json, events.json, init.mp4 or seg_NNNNNN.m4s")),
    responses((status = 200, description = "The file"), (status = 404, body = ErrorBody)))]
async fn file(State(state): State<AppState>, Path((id, name)): Path<(String, String)>) -> Result<Response, ApiError> {
    if !DOWNLOADABLE.contains(&name.as_str()) && !crate::validate::is_segment_name(&name) {
        return Err(ApiError::NotFound(format!("{id}/{name}")));
    }
    let known = ask(&state, |reply| Command::Get { id: id.clone(), reply }).await?;
    if known.is_none() {
        return Err(ApiError::NotFound(id));
    }
    let key = recfleet_storage::recording_key(&id, &name);
    let missing = || ApiError::NotFound(format!("{id}/{name}"));
    let Some(root) = state.objects.local_root() else {
        // S3: a short-lived presigned link.
        let url = state.objects.download_url(&key, state.presign_expiry).await.map_err(|_| ApiError::Unavailable)?.ok_or_else(missing)?;
        return Ok((StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, url)]).into_response());
    };
    let file = tokio::fs::File::open(root.join(&key)).await.map_err(|_| missing())?;
    let len = file.metadata().await.map_err(|_| missing())?.len();
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let headers = [(header::CONTENT_TYPE, recfleet_storage::content_type(&name).to_string()), (header::CONTENT_LENGTH, len.to_string())];
    Ok((headers, body).into_response())
}

/// Ready when the controller leads, is not draining, the manager answers (its state is loaded and it
/// is not stuck), and its last write to the state database succeeded.
async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    // A probe does not wait for the start: unready until this controller leads.
    if !state.leading.is_cancelled() {
        return Err(if state.standing_by.is_cancelled() { ApiError::Standby } else { ApiError::Unavailable });
    }
    if state.draining.is_cancelled() {
        return Err(ApiError::Draining);
    }
    let answer = tokio::time::timeout(std::time::Duration::from_secs(2), ask(&state, |reply| Command::Health { reply })).await;
    match answer {
        Ok(Ok(true)) => Ok("ready"),
        Ok(Ok(false)) | Ok(Err(_)) | Err(_) => Err(ApiError::Unavailable),
    }
}

#[derive(Debug, Deserialize)]
struct BotQuery {
    bot_id: String,
}

/// Bots dial here with their launch token as a bearer token and their id in the query.
async fn bot_connect(State(state): State<AppState>, Query(q): Query<BotQuery>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    let token =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("").to_string();
    let (tx, mut rx) = mpsc::unbounded_channel();
    match ask(&state, |reply| Command::BotConnected { bot_id: q.bot_id.clone(), token, tx, reply }).await {
        Ok(true) => {}
        // A token this controller did not issue: the bot gives up.
        Ok(false) => return ApiError::Unauthorized.into_response(),
        // No answer (the controller is stopping): the bot tries again, or the next controller.
        Err(err) => return err.into_response(),
    }
    let commands = state.commands.clone();
    let shutdown = state.shutdown.clone();
    ws.on_upgrade(move |socket: WebSocket| async move {
        let bot_id = q.bot_id;
        let mut socket = socket;
        loop {
            tokio::select! {
                frame = socket.recv() => match frame {
                    Some(Ok(Message::Text(text))) => match serde_json::from_str::<BotMessage>(&text) {
                        Ok(msg) => {
                            if commands.send(Command::FromBot { bot_id: bot_id.clone(), msg }).await.is_err() {
                                break;
                            }
                        }
                        Err(err) => tracing::warn!(bot_id = %bot_id, error = %err, "unreadable bot message"),
                    },
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
                Some(msg) = rx.recv() => {
                    let text = serde_json::to_string(&msg).expect("messages serialize");
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                _ = shutdown.cancelled() => {
                    let _ = socket.send(Message::Close(None)).await;
                    break;
                }
            }
        }
        let _ = commands.send(Command::BotDisconnected { bot_id }).await;
    })
}
