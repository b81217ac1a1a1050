-- One name per concept: a column holding the name of a configured listener is called
-- `listener` (as in inbox_work and listener_history), not `handler` (the Rust type a listener
-- is an instance of). Stored values do not change; the indexes follow the columns.
ALTER TABLE event_log RENAME COLUMN handler TO listener;
ALTER INDEX event_log_handler_created RENAME TO event_log_listener_created;

ALTER TABLE listener_stats RENAME COLUMN handler TO listener;
