-- Who leads: one row, taken by the controller whose lease is current. Every write checks the
-- generation it holds in the same transaction (a fence), and events record it.
CREATE TABLE leader_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL,
    generation INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
ALTER TABLE recording_events ADD COLUMN generation INTEGER;
