//! The API's data: a recording as clients see it, the create request, and API errors with
//! stable codes. Errors map to HTTP statuses here and nowhere else.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use recfleet_proto::{Recipe, RecordingStatus, SubCode};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A recording, as `GET /v1/recordings/{id}` returns it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Recording {
    pub id: String,
    /// queued, joining, waiting_room, recording, stopping, finalizing, completed, failed
    #[schema(value_type = StatusName, example = "recording")]
    pub status: RecordingStatus,
    /// Why it ended; see docs/BOT.md for the closed list.
    #[schema(value_type = Option<String>, example = "meeting_ended")]
    pub sub_code: Option<SubCode>,
    pub meeting_url: String,
    pub bot_name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub joined_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub recording_started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub completed_at: Option<OffsetDateTime>,
    pub duration_secs: Option<f64>,
    pub partial: bool,
    pub max_duration_secs: Option<u64>,
    /// As given at creation (`null` when none was).
    #[schema(value_type = Option<Object>)]
    pub metadata: serde_json::Value,
    pub outputs: Option<Outputs>,
    /// What went wrong, when something did: a stable `code` (a bot's error code, `bot_crashed`,
    /// `bot_lost`, `upload_incomplete`, a recovery's code) and a message for people.
    pub error: Option<ErrorDetail>,
    /// In the answer to a request that found no warm bot: where it waits, and when it should
    /// get one. Not stored; absent elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueuePlace>,
}

/// A request waiting for a bot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct QueuePlace {
    /// 1: the next to get a bot.
    pub position: usize,
    /// Seconds until a bot launched for it should be warm (the pool's measured launch time);
    /// `null` when none is coming yet (the pool is at `--pool-max` and it waits for a recording
    /// to end, or launches are held after failures: see `/v1/pool`'s `backoff`) or no launch
    /// was measured yet.
    pub estimated_start_secs: Option<f64>,
}

impl Recording {
    /// A new recording, waiting for a bot: nothing has happened to it yet.
    pub fn queued(id: String, meeting_url: String, bot_name: String, max_duration_secs: Option<u64>, metadata: serde_json::Value) -> Self {
        Recording {
            id,
            status: RecordingStatus::Queued,
            sub_code: None,
            meeting_url,
            bot_name,
            created_at: OffsetDateTime::now_utc(),
            joined_at: None,
            recording_started_at: None,
            ended_at: None,
            completed_at: None,
            duration_secs: None,
            partial: false,
            max_duration_secs,
            metadata,
            outputs: None,
            error: None,
            queue: None,
        }
    }
}

/// Download links; they take the same API key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Outputs {
    pub mp4_url: String,
    pub hls_url: String,
    pub manifest_url: String,
}

/// `POST /v1/recordings`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRecording {
    /// http(s). Metadata and link-local addresses are refused, and loopback and private ones
    /// unless the controller allows them (`--allow-networks`), also when a host name resolves
    /// to one.
    #[schema(example = "https://meet.example.com/abc-defg", pattern = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#@]+([/?#]\S*)?$")]
    pub meeting_url: String,
    /// The name the bot joins with (1 to 100 characters, not all blank; `Recorder` if absent).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub bot_name: Option<String>,
    /// An inline join recipe (docs/BOT.md).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub recipe: Option<Recipe>,
    /// A built-in recipe, e.g. `recfleet-test-meeting`.
    #[serde(default)]
    #[schema(value_type = Option<RecipeName>)]
    pub recipe_name: Option<String>,
    /// Recording stops (`max_duration`) after this long; 1 to 86400 (a day).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 86400)]
    pub max_duration_secs: Option<u64>,
    /// http(s), under the same address rules as `meeting_url`, checked again at every delivery.
    #[serde(default)]
    #[schema(example = "https://hooks.example.com/recfleet", pattern = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#@]+([/?#]\S*)?$")]
    pub webhook_url: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// Allow a second active recording of the same meeting_url (refused by default).
    #[serde(default)]
    pub allow_concurrent: bool,
}

/// `GET /v1/pool`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct PoolView {
    pub idle: usize,
    pub starting: usize,
    pub busy: usize,
    pub max: usize,
    pub queued: usize,
    /// Idle bots the pool keeps now: `--pool-min-idle` plus the requests expected during one
    /// launch at the recent rate (capped by `max`).
    pub target_idle: usize,
    /// The measured time from launch to warm (a moving average); `null` before the first.
    pub launch_secs: Option<f64>,
    /// Present while launches are held back because the last ones failed.
    pub backoff: Option<PoolBackoff>,
}

/// Launches held back after failures in a row (a bot that exits before it is warm, or a
/// runtime that cannot start one).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct PoolBackoff {
    /// Launch failures in a row.
    pub failures: u32,
    /// Seconds until the next launch attempt.
    pub retry_in_secs: f64,
    /// The last failure, as the runtime reported it.
    pub reason: String,
}

/// The longest `max_duration_secs` a request may ask for.
pub const MAX_DURATION_SECS: u64 = 86_400;

/// A recording's status in the OpenAPI document: the names of `RecordingStatus::ALL`, the one
/// list.
#[derive(Debug)]
pub struct StatusName;

impl utoipa::PartialSchema for StatusName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new().schema_type(Type::String).enum_values(Some(RecordingStatus::ALL.iter().map(|s| s.as_str()))).into()
    }
}

impl utoipa::ToSchema for StatusName {
    fn name() -> std::borrow::Cow<'static, str> {
        "RecordingStatus".into()
    }
}

/// The built-in recipes' names; `api::builtin_recipe` has each.
pub const BUILTIN_RECIPE_NAMES: [&str; 1] = ["recfleet-test-meeting"];

/// `recipe_name` in the OpenAPI document: one of `BUILTIN_RECIPE_NAMES`.
#[derive(Debug)]
pub struct RecipeName;

impl utoipa::PartialSchema for RecipeName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new().schema_type(Type::String).enum_values(Some(BUILTIN_RECIPE_NAMES)).into()
    }
}

impl utoipa::ToSchema for RecipeName {
    fn name() -> std::borrow::Cow<'static, str> {
        "RecipeName".into()
    }
}

/// `GET /v1/recordings`: a page, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecordingPage {
    pub items: Vec<Recording>,
    /// Pass as `after` for the next page; `null` on the last.
    pub next_after: Option<String>,
}

/// The body of every error: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// API errors: unauthorized, invalid_request, invalid_url, invalid_webhook_url,
    /// invalid_recipe, not_found, conflict, draining, standby, unavailable, internal. A
    /// recording's error: see `Recording.error`.
    pub code: String,
    pub message: String,
}

impl ErrorDetail {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self { code: code.to_string(), message: message.into() }
    }
}

/// How long a client should wait before it retries a request refused while the controller
/// drains (a replacement is usually up by then, behind the same address).
pub const DRAIN_RETRY_AFTER_SECS: u64 = 5;

/// An API error: a stable `code`, a message, and the HTTP status it maps to.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("missing or wrong API key")]
    Unauthorized,
    #[error("{0}")]
    InvalidRequest(String),
    #[error("invalid meeting_url: {0}")]
    InvalidUrl(String),
    #[error("invalid webhook_url: {0}")]
    InvalidWebhookUrl(String),
    #[error("invalid recipe: {0}")]
    InvalidRecipe(String),
    #[error("no recording {0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The controller is draining before it exits: reads work, new recordings go elsewhere.
    #[error("the controller is draining before it exits; retry shortly (another controller takes over)")]
    Draining,
    /// Another controller leads; this one takes over if that one goes away.
    #[error("this controller is a standby: another controller leads (retry, or use the leader)")]
    Standby,
    #[error("the controller is shutting down")]
    Unavailable,
    /// An ECS task dialled before its RunTask answer was recorded (or another controller
    /// launched it): the bot retries.
    #[error("this task's launch is not known (yet); retry")]
    LaunchPending,
    /// Our fault, not the caller's; the cause is logged, never sent.
    #[error("internal error")]
    Internal(#[source] std::sync::Arc<crate::store::StoreError>),
}

impl From<crate::store::StoreError> for ApiError {
    fn from(err: crate::store::StoreError) -> Self {
        match err {
            // Not a fault: another controller leads now, and this one is on its way out.
            crate::store::StoreError::Fenced { .. } => ApiError::Standby,
            err => ApiError::Internal(std::sync::Arc::new(err)),
        }
    }
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::InvalidUrl(_) => "invalid_url",
            ApiError::InvalidWebhookUrl(_) => "invalid_webhook_url",
            ApiError::InvalidRecipe(_) => "invalid_recipe",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::Draining => "draining",
            ApiError::Standby => "standby",
            ApiError::Unavailable => "unavailable",
            ApiError::LaunchPending => "launch_pending",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::InvalidRequest(_) | ApiError::InvalidUrl(_) | ApiError::InvalidWebhookUrl(_) | ApiError::InvalidRecipe(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Draining | ApiError::Standby | ApiError::Unavailable | ApiError::LaunchPending => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(source) = &self {
            tracing::error!(error = %source, "request failed on our side");
        }
        let body = ErrorBody { error: ErrorDetail { code: self.code().into(), message: self.to_string() } };
        let mut resp = (self.status(), axum::Json(body)).into_response();
        if matches!(self, ApiError::Draining | ApiError::Standby) {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, DRAIN_RETRY_AFTER_SECS.into());
        }
        resp
    }
}
