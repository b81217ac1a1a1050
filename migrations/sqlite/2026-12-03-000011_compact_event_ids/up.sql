-- Event ids are stored compactly (src/db/event_key.rs): a UUID in canonical form (lowercase,
-- hyphenated, as the forwarder writes it) as the byte 0x00 and its 16 bytes, any other id as
-- the byte 0x01 and its UTF-8 text. The unique index over 36-character texts was more than
-- twice as large; with random ids nearly every commit rewrote a different leaf of it per event.
-- SQLite cannot change a column's type in place: both tables are copied.
CREATE TABLE inbox_new (
    id INTEGER PRIMARY KEY,
    event_id BLOB NOT NULL UNIQUE,
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
SELECT id, CASE WHEN event_id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]'
        THEN unhex('00' || replace(event_id, '-', ''))
        ELSE unhex('01' || hex(event_id)) END,
    webhook_id, realm_id, realm, user_id, event_type, op, payload, status, attempts, next_attempt_at_ms, claimed_until_ms, last_error, emitted_at_ms, received_at_ms, updated_at_ms
FROM inbox;
DROP TABLE inbox;
ALTER TABLE inbox_new RENAME TO inbox;

CREATE TABLE inbox_work_new (
    event_id BLOB NOT NULL,
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
SELECT CASE WHEN event_id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]'
        THEN unhex('00' || replace(event_id, '-', ''))
        ELSE unhex('01' || hex(event_id)) END,
    listener, status, attempts, next_attempt_at_ms, claimed_until_ms, last_error, updated_at_ms
FROM inbox_work;
DROP TABLE inbox_work;
ALTER TABLE inbox_work_new RENAME TO inbox_work;

CREATE INDEX inbox_due ON inbox (next_attempt_at_ms, claimed_until_ms) WHERE status = 'pending';
CREATE INDEX inbox_parked ON inbox (next_attempt_at_ms, claimed_until_ms) WHERE status = 'parked';
CREATE INDEX inbox_work_due ON inbox_work (next_attempt_at_ms, claimed_until_ms) WHERE status IN ('pending', 'parked');
