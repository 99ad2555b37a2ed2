-- The state the controller keeps (see store.rs): an append-only event log per recording, the
-- recording's projection, the bots it launched (tokens hashed), and webhook attempts.
-- The same tables as the SQLite schema; integers are BIGINT, read back as i64 on both.
CREATE TABLE recordings (
    id TEXT PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    body TEXT NOT NULL,
    recipe TEXT,
    webhook_url TEXT,
    deleted BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE recording_events (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recording_id TEXT NOT NULL,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX recording_events_by_recording ON recording_events (recording_id, seq);
CREATE TABLE bots (
    id TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL,
    state TEXT NOT NULL,
    recording_id TEXT
);
CREATE TABLE webhook_deliveries (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id TEXT NOT NULL,
    recording_id TEXT NOT NULL,
    url TEXT NOT NULL,
    event_type TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    status_code BIGINT,
    error TEXT,
    at TEXT NOT NULL
);
