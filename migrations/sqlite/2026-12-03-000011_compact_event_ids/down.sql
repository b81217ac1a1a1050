-- Event ids back to text.
CREATE TABLE inbox_new (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    webhook_id TEXT NOT NULL,
    realm_id BIGINT NOT NULL,
    realm TEXT NOT NULL,
    user_id BIGINT,
    event_type TEXT NOT NULL,
    op TEXT,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_ms BIGINT NOT NULL,
    claimed_until_ms BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    emitted_at_ms BIGINT,
    received_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
INSERT INTO inbox_new (id, event_id, webhook_id, realm_id, realm, user_id, event_type, op, payload, status, attempts, next_attempt_at_ms, claimed_until_ms, last_error, emitted_at_ms, received_at_ms, updated_at_ms)
SELECT id, CASE WHEN substr(event_id, 1, 1) = X'00' THEN lower(
        substr(hex(event_id), 3, 8) || '-' || substr(hex(event_id), 11, 4) || '-' || substr(hex(event_id), 15, 4) || '-' ||
        substr(hex(event_id), 19, 4) || '-' || substr(hex(event_id), 23, 12))
        ELSE CAST(substr(event_id, 2) AS TEXT) END,
    webhook_id, realm_id, realm, user_id, event_type, op, payload, status, attempts, next_attempt_at_ms, claimed_until_ms, last_error, emitted_at_ms, received_at_ms, updated_at_ms
FROM inbox;
DROP TABLE inbox;
ALTER TABLE inbox_new RENAME TO inbox;

CREATE TABLE inbox_work_new (
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
INSERT INTO inbox_work_new (event_id, listener, status, attempts, next_attempt_at_ms, claimed_until_ms, last_error, updated_at_ms)
SELECT CASE WHEN substr(event_id, 1, 1) = X'00' THEN lower(
        substr(hex(event_id), 3, 8) || '-' || substr(hex(event_id), 11, 4) || '-' || substr(hex(event_id), 15, 4) || '-' ||
        substr(hex(event_id), 19, 4) || '-' || substr(hex(event_id), 23, 12))
        ELSE CAST(substr(event_id, 2) AS TEXT) END,
    listener, status, attempts, next_attempt_at_ms, claimed_until_ms, last_error, updated_at_ms
FROM inbox_work;
DROP TABLE inbox_work;
ALTER TABLE inbox_work_new RENAME TO inbox_work;

CREATE INDEX inbox_due ON inbox (next_attempt_at_ms, claimed_until_ms) WHERE status = 'pending';
CREATE INDEX inbox_parked ON inbox (next_attempt_at_ms, claimed_until_ms) WHERE status = 'parked';
CREATE INDEX inbox_work_due ON inbox_work (next_attempt_at_ms, claimed_until_ms) WHERE status IN ('pending', 'parked');
