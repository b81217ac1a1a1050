-- Every event accepted from the forwarder, written before the batch is acknowledged.
-- status: pending | done | dead | expired | rate_limited | filtered
CREATE TABLE inbox (
    id BIGSERIAL PRIMARY KEY,
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
-- Only pending events are indexed, with both times the sweeper checks, so that its look-up
-- reads neither processed events nor the payloads of events that are not due.
CREATE INDEX inbox_due ON inbox (next_attempt_at_ms, claimed_until_ms) WHERE status = 'pending';

-- Signed batches already accepted, by webhook-id, so that a re-sent batch is not stored twice.
CREATE TABLE forwarder_batches (
    webhook_id TEXT PRIMARY KEY NOT NULL,
    events INTEGER NOT NULL,
    received_at_ms BIGINT NOT NULL
);

-- What user_activity_tracker knows about each (realm, user).
CREATE TABLE user_activity (
    realm_id BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    message_count BIGINT NOT NULL DEFAULT 0,
    reaction_count BIGINT NOT NULL DEFAULT 0,
    last_presence TEXT,
    last_presence_at_ms BIGINT,
    last_typing_at_ms BIGINT,
    PRIMARY KEY (realm_id, user_id)
);
