-- The state the controller keeps (see store.rs): an append-only event log per recording, the
-- recording's projection, the bots it launched (tokens hashed), and webhook attempts.
-- IF NOT EXISTS: state files made before migrations existed already hold these tables.
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
