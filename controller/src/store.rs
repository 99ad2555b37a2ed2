//! Durable state, in an embedded SQLite file (the default) or PostgreSQL (`--database-url
//! postgres://…`): an append-only event log per recording, the recording's current state as a
//! projection written in the same transaction, the bots the controller launched (tokens stored
//! hashed), every webhook delivery attempt, and settings every controller on the database shares.
//!
//! Both backends go through sqlx's `Any` driver with one set of SQL (`$N` placeholders, which
//! SQLite reads too); only the schema differs, as `sqlx::migrate!` migrations per backend in
//! `controller/migrations/`, run at start. The manager is the only writer. This module stores
//! and loads; it must not decide anything.

use std::path::{Path, PathBuf};
use std::time::Duration;

use recfleet_proto::Recipe;
use sha2::{Digest, Sha256};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Connection, Executor, Row};

use crate::model::Recording;

/// How long opening the database may take before the controller gives up at start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a query waits for a connection: with the database gone, a write fails after this
/// (the manager waits on it, so it is short).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Where the state lives: `sqlite://<path>` (or a plain path) or `postgres://user:pass@host/db`.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl std::str::FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            s.parse::<AnyConnectOptions>().map_err(|e| e.to_string())?;
            Ok(DatabaseUrl::Postgres(s.to_string()))
        } else if let Some(path) = s.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("sqlite:// needs a file path, e.g. sqlite:///var/lib/recfleet/recfleet.db".into());
            }
            Ok(DatabaseUrl::Sqlite(PathBuf::from(path)))
        } else if s.contains("://") {
            Err(format!("unsupported database {s:?}: use sqlite://<path> or postgres://user:password@host:port/database"))
        } else if s.is_empty() {
            Err("an empty database URL".into())
        } else {
            Ok(DatabaseUrl::Sqlite(PathBuf::from(s)))
        }
    }
}

/// Shown with the password hidden, so the URL can be logged and put in errors.
impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseUrl::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            DatabaseUrl::Postgres(url) => f.write_str(&redact_password(url)),
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// `scheme://user:secret@host…` → `scheme://user:***@host…`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

impl DatabaseUrl {
    /// The URL sqlx connects with. A SQLite path is percent-encoded where the URL would
    /// misread it, and created if missing.
    fn connect_url(&self) -> String {
        match self {
            DatabaseUrl::Sqlite(path) => {
                let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
                let encoded = path.display().to_string().replace('%', "%25").replace('?', "%3F").replace('#', "%23");
                format!("sqlite://{encoded}?mode=rwc")
            }
            DatabaseUrl::Postgres(url) => url.clone(),
        }
    }

    fn is_sqlite(&self) -> bool {
        matches!(self, DatabaseUrl::Sqlite(_))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state database {url}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("cannot bring the state database {url} up to date: {source}")]
    Migrate { url: String, source: sqlx::migrate::MigrateError },
    #[error("state database {op} failed: {source}")]
    Query { op: &'static str, source: sqlx::Error },
    #[error("another controller leads now (this one held generation {generation}); nothing was written")]
    Fenced { generation: i64 },
    #[error("a stored {what} does not parse: {reason}")]
    Corrupt { what: &'static str, reason: String },
    #[error("the state database did not answer within {secs} s")]
    TimedOut { secs: u64 },
    #[error("writes to the state database are failing; the next try comes within {secs} s")]
    Retrying { secs: u64 },
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
    /// Its bot was taken away and a successor carries it on (data: both bots, the result).
    Handoff,
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
            LogKind::Handoff => "handoff",
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

/// The leadership a controller holds: its name and the lease's generation (see `leadership`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub generation: i64,
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    /// Once set, every write first checks in its transaction that this lease is still the
    /// current one, and fails with `Fenced` if another controller has taken over.
    fence: std::sync::Arc<std::sync::RwLock<Option<Lease>>>,
}

type Tx = sqlx::Transaction<'static, sqlx::Any>;

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
    /// Connects (at most `CONNECT_TIMEOUT`), creating a SQLite file if missing, and brings the
    /// schema up to date. A database that cannot be reached fails here with its cause.
    pub async fn open(url: &DatabaseUrl) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let shown = url.to_string();
        let open_err = |source| StoreError::Open { url: shown.clone(), source };
        let connect_url = url.connect_url();
        // One connection first: a pool would retry until its timeout and then say only that it
        // timed out, where this says why (refused, no such database, bad password).
        let first = tokio::time::timeout(CONNECT_TIMEOUT, sqlx::AnyConnection::connect(&connect_url))
            .await
            .map_err(|_| open_err(sqlx::Error::PoolTimedOut))?
            .map_err(open_err)?;
        first.close().await.map_err(open_err)?;
        let sqlite = url.is_sqlite();
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 4 } else { 8 })
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // Readers never wait for the writer; a commit is durable at the next
                        // checkpoint, which survives a crash of the process (not of the host).
                        conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;").await?;
                    } else {
                        // A controller stopped or cut off inside a write must not hold the
                        // lease row (and with it every other controller) for long.
                        conn.execute("SET lock_timeout = '3s'; SET idle_in_transaction_session_timeout = '5s';").await?;
                    }
                    Ok(())
                })
            })
            .connect(&connect_url)
            .await
            .map_err(open_err)?;
        let migrations = if sqlite { &SQLITE_MIGRATIONS } else { &POSTGRES_MIGRATIONS };
        migrations.run(&pool).await.map_err(|source| StoreError::Migrate { url: shown, source })?;
        Ok(Self { pool, fence: Default::default() })
    }

    /// The SQLite file in `data_dir`, the default state database.
    pub fn default_url(data_dir: &Path) -> DatabaseUrl {
        DatabaseUrl::Sqlite(data_dir.join("recfleet.db"))
    }

    /// Closes the connections; every later query fails (at exit, and in tests of a lost
    /// database).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// From now on every write is fenced by `lease`.
    pub fn hold(&self, lease: Lease) {
        *self.fence.write().expect("the fence lock is never poisoned") = Some(lease);
    }

    fn generation(&self) -> Option<i64> {
        self.fence.read().expect("the fence lock is never poisoned").as_ref().map(|l| l.generation)
    }

    /// A transaction for a write: with a lease held, it first touches the lease row where it is
    /// still ours. That row lock orders the write against a takeover (which bumps the
    /// generation): a write after a takeover finds no row and fails, one before it commits first.
    async fn begin_write(&self) -> Result<Tx, StoreError> {
        let mut tx = self.pool.begin().await.map_err(q("begin"))?;
        let lease = self.fence.read().expect("the fence lock is never poisoned").clone();
        if let Some(lease) = lease {
            let touched = sqlx::query("UPDATE leader_lease SET holder = holder WHERE id = 1 AND holder = $1 AND generation = $2")
                .bind(&lease.holder)
                .bind(lease.generation)
                .execute(&mut *tx)
                .await
                .map_err(q("check the lease"))?;
            if touched.rows_affected() != 1 {
                return Err(StoreError::Fenced { generation: lease.generation });
            }
        }
        Ok(tx)
    }

    /// Takes the lease if it is free, expired, or already `holder`'s (a restart on the same data
    /// folder), until `now_ms + ttl_ms`; a taken lease gets the next generation. `None`: another
    /// controller's lease is current.
    pub async fn try_take_lease(&self, holder: &str, now_ms: i64, ttl_ms: i64) -> Result<Option<Lease>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(q("begin"))?;
        sqlx::query(
            "INSERT INTO leader_lease (id, holder, generation, expires_at_ms) VALUES (1, $1, 1, $2)
             ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, generation = leader_lease.generation + 1, expires_at_ms = excluded.expires_at_ms
             WHERE leader_lease.expires_at_ms < $3 OR leader_lease.holder = $1",
        )
        .bind(holder)
        .bind(now_ms + ttl_ms)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(q("take the lease"))?;
        let row = sqlx::query("SELECT holder, generation FROM leader_lease WHERE id = 1")
            .fetch_one(&mut *tx)
            .await
            .map_err(q("read the lease"))?;
        tx.commit().await.map_err(q("commit"))?;
        let (current, generation): (String, i64) = (row.get("holder"), row.get("generation"));
        Ok((current == holder).then_some(Lease { holder: current, generation }))
    }

    /// Extends `lease` to `now_ms + ttl_ms`; `false` when it is no longer current (taken over,
    /// or released: a released lease stays released).
    pub async fn renew_lease(&self, lease: &Lease, now_ms: i64, ttl_ms: i64) -> Result<bool, StoreError> {
        let renewed = sqlx::query(
            "UPDATE leader_lease SET expires_at_ms = $3 WHERE id = 1 AND holder = $1 AND generation = $2 AND expires_at_ms > 0",
        )
        .bind(&lease.holder)
        .bind(lease.generation)
        .bind(now_ms + ttl_ms)
        .execute(&self.pool)
        .await
        .map_err(q("renew the lease"))?;
        Ok(renewed.rows_affected() == 1)
    }

    /// Lets `lease` go at once (a clean exit), so a standby takes over without waiting it out.
    pub async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        sqlx::query("UPDATE leader_lease SET expires_at_ms = 0 WHERE id = 1 AND holder = $1 AND generation = $2")
            .bind(&lease.holder)
            .bind(lease.generation)
            .execute(&self.pool)
            .await
            .map_err(q("release the lease"))?;
        Ok(())
    }

    /// Appends an event and writes the projection it produced, in one transaction.
    pub async fn append(&self, rec: &StoredRecording, kind: LogKind, data: &serde_json::Value) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO recording_events (recording_id, at, kind, data, generation) VALUES ($1, $2, $3, $4, $5)")
            .bind(&rec.view.id)
            .bind(now())
            .bind(kind.as_str())
            .bind(data.to_string())
            .bind(self.generation())
            .execute(&mut *tx)
            .await
            .map_err(q("append event"))?;
        let status = serde_json::to_value(rec.view.status).expect("status serializes");
        sqlx::query(
            "INSERT INTO recordings (id, idempotency_key, status, created_at, body, recipe, webhook_url) VALUES ($1, $2, $3, $4, $5, $6, $7)
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
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO recording_events (recording_id, at, kind, data, generation) VALUES ($1, $2, $3, '{}', $4)")
            .bind(id)
            .bind(now())
            .bind(LogKind::Deleted.as_str())
            .bind(self.generation())
            .execute(&mut *tx)
            .await
            .map_err(q("append event"))?;
        // The key is let go with the recording: a later request with it makes a new one.
        sqlx::query("UPDATE recordings SET deleted = 1, idempotency_key = NULL WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(q("delete"))?;
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
        let rows = sqlx::query("SELECT kind, data FROM recording_events WHERE recording_id = $1 ORDER BY seq")
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
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO bots (id, token_sha256, state, recording_id) VALUES ($1, $2, $3, $4)
             ON CONFLICT(id) DO UPDATE SET state = excluded.state, recording_id = excluded.recording_id",
        )
        .bind(&bot.id)
        .bind(&bot.token_sha256)
        .bind(bot.state.as_str())
        .bind(&bot.recording_id)
        .execute(&mut *tx)
        .await
        .map_err(q("save bot"))?;
        tx.commit().await.map_err(q("commit"))
    }

    pub async fn delete_bot(&self, id: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM bots WHERE id = $1").bind(id).execute(&mut *tx).await.map_err(q("delete bot"))?;
        tx.commit().await.map_err(q("commit"))
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

    /// The value stored for `name`; if there is none, `value` is stored and returned. Of two
    /// controllers that start at once, the first to write wins and both get its value.
    pub async fn setting_or_insert(&self, name: &str, value: &str) -> Result<String, StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(value)
            .execute(&mut *tx)
            .await
            .map_err(q("store setting"))?;
        let row =
            sqlx::query("SELECT value FROM settings WHERE name = $1").bind(name).fetch_one(&mut *tx).await.map_err(q("load setting"))?;
        let stored = row.get("value");
        tx.commit().await.map_err(q("commit"))?;
        Ok(stored)
    }

    pub async fn record_delivery(&self, d: &DeliveryAttempt<'_>) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO webhook_deliveries (message_id, recording_id, url, event_type, attempt, status_code, error, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(d.message_id)
        .bind(d.recording_id)
        .bind(d.url)
        .bind(d.event_type)
        .bind(d.attempt as i64)
        .bind(d.status_code.map(i64::from))
        .bind(&d.error)
        .bind(now())
        .execute(&mut *tx)
        .await
        .map_err(q("record delivery"))?;
        tx.commit().await.map_err(q("commit"))
    }

    /// Delivery attempts for one recording: (event_type, attempt, status_code).
    pub async fn deliveries(&self, recording_id: &str) -> Result<Vec<(String, u32, Option<u16>)>, StoreError> {
        let rows = sqlx::query("SELECT event_type, attempt, status_code FROM webhook_deliveries WHERE recording_id = $1 ORDER BY seq")
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
