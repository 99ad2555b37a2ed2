-- Settings every controller on this database shares (the generated webhook signing secret).
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
