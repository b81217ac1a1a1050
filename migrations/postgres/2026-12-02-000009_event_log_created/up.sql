-- The dashboard's per-minute chart counts the last hour of the event log by source and
-- outcome: this index answers it without reading the table, and turns a time filter of the
-- event-log page into an id range with one look-up.
CREATE INDEX event_log_created ON event_log (created_at_ms, source, success);
