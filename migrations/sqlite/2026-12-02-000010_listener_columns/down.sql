ALTER TABLE listener_stats RENAME COLUMN listener TO handler;

DROP INDEX event_log_listener_created;
ALTER TABLE event_log RENAME COLUMN listener TO handler;
CREATE INDEX event_log_handler_created ON event_log (handler, created_at_ms);
