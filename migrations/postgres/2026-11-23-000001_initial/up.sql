-- Handlers known to this server and their persisted state.
CREATE TABLE listeners (
    name TEXT PRIMARY KEY NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    config TEXT NOT NULL DEFAULT '{}',
    disabled_reason TEXT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

-- One row per (event, handler) run.
CREATE TABLE event_log (
    id BIGSERIAL PRIMARY KEY,
    handler TEXT NOT NULL,
    source TEXT NOT NULL,
    event_type TEXT NOT NULL,
    bot TEXT,
    realm TEXT,
    realm_id BIGINT,
    user_id BIGINT,
    message_id BIGINT,
    event_id TEXT,
    duration_us BIGINT NOT NULL,
    success BOOLEAN NOT NULL,
    error TEXT,
    created_at_ms BIGINT NOT NULL
);
-- Per-handler statistics read this index; retention deletes by id, which grows with time.
CREATE INDEX event_log_handler_created ON event_log (handler, created_at_ms);

-- Messages stored by the message_logger handler (message ids are unique per Zulip server).
CREATE TABLE messages (
    message_id BIGINT PRIMARY KEY,
    realm TEXT NOT NULL,
    realm_id BIGINT,
    message_type TEXT NOT NULL,
    stream_id BIGINT,
    channel TEXT,
    topic TEXT,
    dm_recipients TEXT,
    sender_id BIGINT,
    sender_email TEXT,
    sender_name TEXT,
    content TEXT NOT NULL,
    content_truncated BOOLEAN NOT NULL,
    sent_at BIGINT,
    source TEXT NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    edited_at BIGINT,
    stored_at_ms BIGINT NOT NULL
);

-- The answer given to each (bot, message id), so that Zulip's retries are not run twice.
CREATE TABLE outgoing_replies (
    bot TEXT NOT NULL,
    message_id BIGINT NOT NULL,
    response TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (bot, message_id)
);
CREATE INDEX outgoing_replies_created ON outgoing_replies (created_at_ms);
