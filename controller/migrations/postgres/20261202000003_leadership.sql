-- Who leads: one row, taken by the controller whose lease is current. Every write checks the
-- generation it holds in the same transaction (a fence), and events record it.
CREATE TABLE leader_lease (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL,
    generation BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
ALTER TABLE recording_events ADD COLUMN generation BIGINT;
