//! Durable state in an embedded SQLite file (sqlx): an append-only event log per recording, the
//! recording's current state as a projection written in the same transaction, the bots the
//! controller launched (tokens stored hashed), and every webhook delivery attempt.
//!
//! The manager is the only writer. This module stores and loads; it must not decide anything.

use std::path::Path;
use std::str::FromStr;

use recfleet_proto::Recipe;
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::model::Recording;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS recordings (
    id TEXT PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    body TEXT NOT NULL,
    recipe TEXT,
    webhook_url TEXT,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS recording_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    recording_id TEXT NOT NULL,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS recording_events_by_recording ON recording_events (recording_id, seq);
CREATE TABLE IF NOT EXISTS bots (
    id TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL,
    state TEXT NOT NULL,
    recording_id TEXT
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL,
    recording_id TEXT NOT NULL,
    url TEXT NOT NULL,
    event_type TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    status_code INTEGER,
    error TEXT,
    at TEXT NOT NULL
);
"#;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state database {path}: {source}")]
    Open { path: String, source: sqlx::Error },
    #[error("state database {op} failed: {source}")]
    Query { op: &'static str, source: sqlx::Error },
    #[error("a stored {what} does not parse: {reason}")]
    Corrupt { what: &'static str, reason: String },
}

/// What an entry of a recording's event log (`recording_events.kind`) says happened. The names
/// are stable: they are stored, and read back by tools and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogKind {
    /// `POST /v1/recordings` stored it.
    Created,
    /// A bot took it.
    Assigned,
    /// `POST .../stop`.
    StopRequested,
    /// A bot stored a segment (data: the manifest entry).
    SegmentStored,
    /// The bot's timeline (data: the event).
    Timeline,
    /// The bot's last word (data: the outcome).
    Finished,
    /// The bot died or went silent before `Finished`.
    BotCrashed,
    /// Finalizing from the store without the bot began.
    RecoveryStarted,
    Recovered,
    RecoveryFailed,
    /// `DELETE`: soft, the row stays with `deleted = 1`.
    Deleted,
}

impl LogKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LogKind::Created => "created",
            LogKind::Assigned => "assigned",
            LogKind::StopRequested => "stop_requested",
            LogKind::SegmentStored => "segment_stored",
            LogKind::Timeline => "timeline",
            LogKind::Finished => "finished",
            LogKind::BotCrashed => "bot_crashed",
            LogKind::RecoveryStarted => "recovery_started",
            LogKind::Recovered => "recovered",
            LogKind::RecoveryFailed => "recovery_failed",
            LogKind::Deleted => "deleted",
        }
    }
}

/// A recording as stored: the projection plus what only the controller needs.
#[derive(Debug, Clone)]
pub struct StoredRecording {
    pub view: Recording,
    pub idempotency_key: Option<String>,
    pub recipe: Option<Recipe>,
    pub webhook_url: Option<String>,
}

/// A bot as stored.
#[derive(Debug, Clone)]
pub struct StoredBot {
    pub id: String,
    pub token_sha256: String,
    pub state: crate::fleet::BotState,
    pub recording_id: Option<String>,
}

/// One webhook attempt, as recorded.
#[derive(Debug, Clone)]
pub struct DeliveryAttempt<'a> {
    pub message_id: &'a str,
    pub recording_id: &'a str,
    pub url: &'a str,
    pub event_type: &'a str,
    pub attempt: u32,
    pub status_code: Option<u16>,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn q(op: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { op, source }
}

fn now() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).expect("now formats")
}

impl Store {
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open { path: path.display().to_string(), source };
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(open_err)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await.map_err(open_err)?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await.map_err(q("create schema"))?;
        Ok(Self { pool })
    }

    /// Closes the connections; every later query fails (at exit, and in tests of a lost
    /// database).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Appends an event and writes the projection it produced, in one transaction.
    pub async fn append(&self, rec: &StoredRecording, kind: LogKind, data: &serde_json::Value) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(q("begin"))?;
        sqlx::query("INSERT INTO recording_events (recording_id, at, kind, data) VALUES (?, ?, ?, ?)")
            .bind(&rec.view.id)
            .bind(now())
            .bind(kind.as_str())
            .bind(data.to_string())
            .execute(&mut *tx)
            .await
            .map_err(q("append event"))?;
        let status = serde_json::to_value(rec.view.status).expect("status serializes");
        sqlx::query(
            "INSERT INTO recordings (id, idempotency_key, status, created_at, body, recipe, webhook_url) VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT(id) DO UPDATE SET status = excluded.status, body = excluded.body, recipe = excluded.recipe",
        )
        .bind(&rec.view.id)
        .bind(&rec.idempotency_key)
        .bind(status.as_str().unwrap_or_default())
        .bind(rec.view.created_at.format(&time::format_description::well_known::Rfc3339).expect("formats"))
        .bind(serde_json::to_string(&rec.view).expect("recording serializes"))
        .bind(rec.recipe.as_ref().map(|r| serde_json::to_string(r).expect("recipe serializes")))
        .bind(&rec.webhook_url)
        .execute(&mut *tx)
        .await
        .map_err(q("write projection"))?;
        tx.commit().await.map_err(q("commit"))
    }

    pub async fn mark_deleted(&self, id: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(q("begin"))?;
        sqlx::query("INSERT INTO recording_events (recording_id, at, kind, data) VALUES (?, ?, ?, '{}')")
            .bind(id)
            .bind(now())
            .bind(LogKind::Deleted.as_str())
            .execute(&mut *tx)
            .await
            .map_err(q("append event"))?;
        sqlx::query("UPDATE recordings SET deleted = 1 WHERE id = ?").bind(id).execute(&mut *tx).await.map_err(q("delete"))?;
        tx.commit().await.map_err(q("commit"))
    }

    /// Every recording not deleted, oldest first.
    pub async fn load_recordings(&self) -> Result<Vec<StoredRecording>, StoreError> {
        let rows =
            sqlx::query("SELECT body, idempotency_key, recipe, webhook_url FROM recordings WHERE deleted = 0 ORDER BY created_at, id")
                .fetch_all(&self.pool)
                .await
                .map_err(q("load recordings"))?;
        rows.into_iter()
            .map(|row| {
                let corrupt = |e: serde_json::Error| StoreError::Corrupt { what: "recording", reason: e.to_string() };
                let body: String = row.get("body");
                let recipe: Option<String> = row.get("recipe");
                Ok(StoredRecording {
                    view: serde_json::from_str(&body).map_err(corrupt)?,
                    idempotency_key: row.get("idempotency_key"),
                    recipe: recipe.map(|r| serde_json::from_str(&r)).transpose().map_err(corrupt)?,
                    webhook_url: row.get("webhook_url"),
                })
            })
            .collect()
    }

    /// A recording's event log, in order: (kind, data).
    pub async fn events(&self, id: &str) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        let rows = sqlx::query("SELECT kind, data FROM recording_events WHERE recording_id = ? ORDER BY seq")
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(q("load events"))?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let data: String = r.get("data");
                (r.get("kind"), serde_json::from_str(&data).unwrap_or(serde_json::Value::Null))
            })
            .collect())
    }

    pub async fn save_bot(&self, bot: &StoredBot) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO bots (id, token_sha256, state, recording_id) VALUES (?, ?, ?, ?)
             ON CONFLICT(id) DO UPDATE SET state = excluded.state, recording_id = excluded.recording_id",
        )
        .bind(&bot.id)
        .bind(&bot.token_sha256)
        .bind(bot.state.as_str())
        .bind(&bot.recording_id)
        .execute(&self.pool)
        .await
        .map_err(q("save bot"))?;
        Ok(())
    }

    pub async fn delete_bot(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM bots WHERE id = ?").bind(id).execute(&self.pool).await.map_err(q("delete bot"))?;
        Ok(())
    }

    pub async fn load_bots(&self) -> Result<Vec<StoredBot>, StoreError> {
        let rows =
            sqlx::query("SELECT id, token_sha256, state, recording_id FROM bots").fetch_all(&self.pool).await.map_err(q("load bots"))?;
        rows.into_iter()
            .map(|r| {
                let state: String = r.get("state");
                let state = crate::fleet::BotState::parse(&state)
                    .map_err(|e| StoreError::Corrupt { what: "bot state", reason: format!("{state:?}: {e}") })?;
                Ok(StoredBot { id: r.get("id"), token_sha256: r.get("token_sha256"), state, recording_id: r.get("recording_id") })
            })
            .collect()
    }

    pub async fn record_delivery(&self, d: &DeliveryAttempt<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO webhook_deliveries (message_id, recording_id, url, event_type, attempt, status_code, error, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(d.message_id)
        .bind(d.recording_id)
        .bind(d.url)
        .bind(d.event_type)
        .bind(d.attempt as i64)
        .bind(d.status_code.map(i64::from))
        .bind(&d.error)
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(q("record delivery"))?;
        Ok(())
    }

    /// Delivery attempts for one recording: (event_type, attempt, status_code).
    pub async fn deliveries(&self, recording_id: &str) -> Result<Vec<(String, u32, Option<u16>)>, StoreError> {
        let rows = sqlx::query("SELECT event_type, attempt, status_code FROM webhook_deliveries WHERE recording_id = ? ORDER BY seq")
            .bind(recording_id)
            .fetch_all(&self.pool)
            .await
            .map_err(q("load deliveries"))?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let code: Option<i64> = r.get("status_code");
                let attempt: i64 = r.get("attempt");
                (r.get("event_type"), attempt as u32, code.map(|c| c as u16))
            })
            .collect())
    }
}
