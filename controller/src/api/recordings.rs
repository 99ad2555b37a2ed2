//! The `/v1` routes for recordings and the pool: validation of what a client sends, then one
//! manager command each; download links (presigned for S3, the API's own for a folder) and file
//! downloads. Handlers never change state themselves.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use recfleet_proto::{Recipe, RecordingStatus};
use serde::Deserialize;

use super::{ask, AppState};
use crate::manager::Command;
use crate::model::{ApiError, CreateRecording, ErrorBody, Outputs, PoolView, Recording, RecordingPage, StatusName, MAX_DURATION_SECS};

/// Files a client may download from a recording's folder.
const DOWNLOADABLE: [&str; 5] = ["recording.mp4", "index.m3u8", "manifest.json", "events.json", "init.mp4"];

/// The bundled recipes, by name (each of `model::BUILTIN_RECIPE_NAMES`).
pub fn builtin_recipe(name: &str) -> Option<Recipe> {
    match name {
        "recfleet-test-meeting" => Recipe::from_json(recfleet_meeting::RECIPE_JSON).ok(),
        _ => None,
    }
}

#[utoipa::path(post, path = "/v1/recordings", request_body = CreateRecording,
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeats with the same key return the same recording")),
    responses((status = 201, body = Recording, description = "Created and queued"), (status = 200, body = Recording, description = "Same Idempotency-Key: the existing recording"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 409, body = ErrorBody, description = "`conflict`: this meeting already has an active recording (see `allow_concurrent`)"),
        (status = 422, body = ErrorBody, description = "`invalid_request`, `invalid_url`, `invalid_webhook_url`, `invalid_recipe`"),
        (status = 503, body = ErrorBody, description = UNAVAILABLE),
        (status = 500, body = ErrorBody, description = "`internal`: the state could not be written")))]
pub(super) async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<CreateRecording>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    if state.draining.is_cancelled() {
        return Err(ApiError::Draining);
    }
    let Json(mut req) = body.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    crate::validate::meeting_url(&req.meeting_url, state.allowed_hosts.as_deref(), state.networks).await?;
    if let Some(url) = &req.webhook_url {
        crate::validate::webhook_url(url, state.networks).await?;
    }
    match (&req.recipe, req.recipe_name.take()) {
        (Some(_), Some(_)) => return Err(ApiError::InvalidRequest("give recipe or recipe_name, not both".into())),
        (Some(r), None) => r.validate().map_err(|e| ApiError::InvalidRecipe(e.to_string()))?,
        (None, Some(name)) => {
            req.recipe = Some(builtin_recipe(&name).ok_or_else(|| ApiError::InvalidRecipe(format!("no built-in recipe {name:?}")))?)
        }
        (None, None) => {}
    }
    if let Some(secs) = req.max_duration_secs.filter(|s| !(1..=MAX_DURATION_SECS).contains(s)) {
        return Err(ApiError::InvalidRequest(format!("max_duration_secs must be between 1 and {MAX_DURATION_SECS}, got {secs}")));
    }
    if let Some(name) = &req.bot_name {
        if name.trim().is_empty() || name.chars().count() > 100 {
            return Err(ApiError::InvalidRequest("bot_name must be 1 to 100 characters, not all blank".into()));
        }
    }
    if req.metadata.as_ref().is_some_and(|m| !m.is_object() && !m.is_null()) {
        return Err(ApiError::InvalidRequest("metadata must be a JSON object".into()));
    }
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
    let (recording, created) = ask(&state, |reply| Command::Create { req, idempotency_key: key, reply }).await??;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(with_links(&state, recording).await)).into_response())
}

/// Every `/v1` route's 503.
const UNAVAILABLE: &str = "`draining` (this controller is about to exit) or `standby` (another one leads): retry after `Retry-After` seconds; `unavailable`: shutting down";

/// The `{id}` path parameter.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(names("id"), parameter_in = Path)]
#[allow(dead_code)] // Documentation only: the handlers take `Path<String>`.
struct ID(
    /// The recording's id (`rec_…`).
    String,
);

/// Page size when the client does not say, and the most it may ask for.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    status: Option<RecordingStatus>,
    limit: Option<usize>,
    /// The `next_after` of the previous page.
    after: Option<String>,
}

#[utoipa::path(get, path = "/v1/recordings",
    params(("status" = Option<StatusName>, Query, description = "Only this status"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Page size, 1 to 500 (50)"),
        ("after" = Option<String>, Query, description = "`next_after` of the previous page")),
    responses((status = 200, body = RecordingPage, description = "Newest first"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 422, body = ErrorBody, description = "`invalid_request`: an unknown status, or a limit outside 1 to 500"),
        (status = 503, body = ErrorBody, description = UNAVAILABLE)))]
pub(super) async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::InvalidRequest(format!("limit must be between 1 and {MAX_PAGE}, got {limit}")));
    }
    let found: Vec<Recording> = crate::reads::read(&state.reads).list(q.status, limit, q.after.as_deref());
    let mut items = Vec::with_capacity(found.len());
    for rec in found {
        items.push(with_links(&state, rec).await);
    }
    let next_after = if items.len() == limit { items.last().map(|r| r.id.clone()) } else { None };
    Ok(Json(serde_json::json!({ "items": items, "next_after": next_after })))
}

#[utoipa::path(delete, path = "/v1/recordings/{id}", params(ID),
    responses((status = 204, description = "Deleted with its files"), (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`not_found`"), (status = 409, body = ErrorBody, description = "`conflict`: still active, stop it first"),
        (status = 503, body = ErrorBody, description = UNAVAILABLE)))]
pub(super) async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    ask(&state, |reply| Command::Delete { id, reply }).await??;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/recordings/{id}", params(ID),
    responses((status = 200, body = Recording), (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`not_found`"), (status = 503, body = ErrorBody, description = UNAVAILABLE)))]
pub(super) async fn get_one(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Recording>, ApiError> {
    let found = crate::reads::read(&state.reads).get(&id);
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

#[utoipa::path(post, path = "/v1/recordings/{id}/stop", params(ID),
    responses((status = 200, body = Recording, description = "Stopping; it finalizes and completes with stopped_by_api"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"), (status = 404, body = ErrorBody, description = "`not_found`"),
        (status = 503, body = ErrorBody, description = UNAVAILABLE)))]
pub(super) async fn stop(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Recording>, ApiError> {
    let rec = ask(&state, |reply| Command::Stop { id, reply }).await??;
    Ok(Json(with_links(&state, rec).await))
}

#[utoipa::path(get, path = "/v1/pool",
    responses((status = 200, body = PoolView), (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 503, body = ErrorBody, description = UNAVAILABLE)))]
pub(super) async fn pool(State(state): State<AppState>) -> Result<Json<PoolView>, ApiError> {
    let pool = crate::reads::read(&state.reads).pool();
    Ok(Json(pool.ok_or(ApiError::Unavailable)?))
}

#[utoipa::path(get, path = "/v1/recordings/{id}/files/{name}",
    params(ID, ("name" = String, Path, description = "recording.mp4, index.m3u8, manifest.json, events.json, init.mp4, init_N.mp4 (a restarted capture's) or seg_NNNNNN.m4s")),
    responses((status = 200, description = "The file, with a folder store (its own content type)"),
        (status = 307, description = "With an S3 store: a presigned link to the file (`Location`)"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"), (status = 404, body = ErrorBody, description = "`not_found`"),
        (status = 503, body = ErrorBody, description = UNAVAILABLE)))]
pub(super) async fn file(State(state): State<AppState>, Path((id, name)): Path<(String, String)>) -> Result<Response, ApiError> {
    if !DOWNLOADABLE.contains(&name.as_str()) && !crate::validate::is_segment_name(&name) && !recfleet_media::is_init(&name) {
        return Err(ApiError::NotFound(format!("{id}/{name}")));
    }
    let known = crate::reads::read(&state.reads).get(&id);
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
