-- Who made a change or took a dead-letter action: the name of the admin token used (the
-- admin API, the dashboard; `admin.token` is "admin"). NULL for the command line, the
-- breaker and retention, and for rows written before.
ALTER TABLE listener_history ADD COLUMN actor TEXT;
