//! The REST API and the bots' WebSocket endpoint. Handlers parse and validate, then hand a
//! command to the manager; they never touch state themselves.
//!
//! This file holds the shared state, the router and the probes (`/healthz`, `/readyz`,
//! `/metrics`); `recordings` the `/v1` routes, `bot_hub` the bots' WebSocket, `middleware` the
//! API key, the standby gate and request metrics, `openapi` the document. No handler keeps state
//! of its own or writes to the store.

mod bot_hub;
mod middleware;
mod openapi;
mod recordings;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::{mpsc, oneshot};

use crate::manager::Command;
use crate::model::ApiError;

pub use openapi::ApiDoc;
pub use recordings::builtin_recipe;

/// Request bodies larger than this are refused (a recipe is a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
#[derive(Debug, Clone)]
pub struct AppState {
    pub commands: mpsc::Sender<Command>,
    /// Recordings and the pool as the manager last wrote them: reads do not ask the manager.
    pub reads: crate::reads::Reads,
    /// sha256 of the API key: the key itself is not kept.
    pub api_key_sha256: String,
    pub allowed_hosts: Option<Vec<String>>,
    /// The networks meeting and webhook URLs may point into beyond public addresses.
    pub networks: recfleet_proto::NetworkPolicy,
    /// Where the recordings' files are.
    pub objects: recfleet_storage::Store,
    /// How long presigned download links stay valid (S3).
    pub presign_expiry: std::time::Duration,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// ECS tasks' launch tokens, spent at their first connection (empty with other runtimes).
    pub launch_tokens: crate::ecs::LaunchTokens,
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
        .route("/recordings", post(recordings::create).get(recordings::list))
        .route("/recordings/{id}", get(recordings::get_one).delete(recordings::delete))
        .route("/recordings/{id}/stop", post(recordings::stop))
        .route("/recordings/{id}/files/{name}", get(recordings::file))
        .route("/pool", get(recordings::pool))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), middleware::require_key));
    // A standby has nothing loaded: bots and clients go to the leader (bots try their next URL).
    let led = Router::new()
        .nest("/v1", v1)
        .route("/v1/bots/connect", get(bot_hub::bot_connect))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), middleware::require_leading));
    Router::new()
        .merge(led)
        .route("/openapi.json", get(|| async { Json(<ApiDoc as utoipa::OpenApi>::openapi()) }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::track))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Prometheus' text format. Not behind the API key: it holds no ids and no secrets, and
/// scrapers run inside the deployment's network.
async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

pub(super) async fn ask<T>(state: &AppState, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, ApiError> {
    let (tx, rx) = oneshot::channel();
    state.commands.send(make(tx)).await.map_err(|_| ApiError::Unavailable)?;
    rx.await.map_err(|_| ApiError::Unavailable)
}

/// Ready when the controller leads, is not draining, the manager answers (its state is loaded and it
/// is not stuck), its last write to the state database succeeded, and its lease is renewed.
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
