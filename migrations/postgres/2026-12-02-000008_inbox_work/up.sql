-- Work per (event, listener): one row for each listener run of a forwarded event that was
-- not completed when the event was accepted. A row is deleted when its listener has run the
-- event successfully, so that an inbox row is done exactly when it has no work rows left.
-- status: pending | parked | dead. listener '*' stands for every forwarder listener that
-- wants the event (rows from before this table, and replayed events that never had work);
-- the sweeper expands it into one row per listener.
CREATE TABLE inbox_work (
    event_id TEXT NOT NULL,
    listener TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_ms BIGINT NOT NULL,
    claimed_until_ms BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (event_id, listener)
);
-- The sweeper's look-up: only work that can still run is indexed.
CREATE INDEX inbox_work_due ON inbox_work (next_attempt_at_ms, claimed_until_ms) WHERE status IN ('pending', 'parked');

-- Events still in progress or dead when this table was created: every listener runs them
-- again (as before, a failed event ran all its handlers again).
INSERT INTO inbox_work (event_id, listener, status, attempts, next_attempt_at_ms, claimed_until_ms, last_error, updated_at_ms)
SELECT event_id, '*', status, attempts, next_attempt_at_ms, 0, last_error, updated_at_ms
FROM inbox WHERE status IN ('pending', 'parked', 'dead');

-- Serving processes and the listeners each runs (`serve --listeners`), with a heartbeat, so
-- that a listener no live process runs is noticed.
CREATE TABLE listener_processes (
    process_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    listeners TEXT NOT NULL,
    started_at_ms BIGINT NOT NULL,
    heartbeat_at_ms BIGINT NOT NULL
);
