-- One name per concept: a column holding the name of a configured listener is called
-- `listener` (as in inbox_work and listener_history), not `handler` (the Rust type a listener
-- is an instance of). Stored values do not change. SQLite cannot rename an index: the
-- event log's per-listener index is built again under its new name.
ALTER TABLE event_log RENAME COLUMN handler TO listener;
DROP INDEX event_log_handler_created;
CREATE INDEX event_log_listener_created ON event_log (listener, created_at_ms);

ALTER TABLE listener_stats RENAME COLUMN handler TO listener;
