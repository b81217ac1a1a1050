DROP INDEX event_log_created;
