-- Runtime changes to a listener (admin API, CLI), as a JSON object of the changed fields;
-- they override the configuration file.
ALTER TABLE listeners ADD COLUMN overrides TEXT;

-- What changed on a listener, when, and from where (admin API, CLI, automatic breaker).
CREATE TABLE listener_history (
    id INTEGER PRIMARY KEY,
    listener TEXT NOT NULL,
    changed_at_ms BIGINT NOT NULL,
    source TEXT NOT NULL,
    field TEXT NOT NULL,
    old_value TEXT,
    new_value TEXT
);
CREATE INDEX listener_history_listener ON listener_history (listener, id);
