//! What runs around the routes: the API key check (constant-time, over hashes), the gate that
//! answers 503 `standby` until this controller leads, and request metrics by route template.
//! Nothing here reads or changes recordings.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::model::ApiError;

pub(super) async fn require_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
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

pub(super) async fn require_leading(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.leads().await {
        next.run(req).await
    } else {
        ApiError::Standby.into_response()
    }
}

/// Counts and times every routed request by its route template (never by id).
pub(super) async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<axum::extract::MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let method = req.method().as_str().to_string();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let m = &state.metrics;
    m.api_duration.with_label_values(&[&route, &method]).observe(started.elapsed().as_secs_f64());
    m.api_requests.with_label_values(&[&route, &method, resp.status().as_str()]).inc();
    resp
}
