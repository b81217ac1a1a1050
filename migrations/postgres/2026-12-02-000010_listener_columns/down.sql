ALTER TABLE listener_stats RENAME COLUMN listener TO handler;

ALTER INDEX event_log_listener_created RENAME TO event_log_handler_created;
ALTER TABLE event_log RENAME COLUMN listener TO handler;
