-- Aggregated handler runs, one row per (handler, interval), written by `stats aggregate`
-- (src/db/retention.rs) from the event log, so that statistics outlive the log's retention.
-- interval_start_ms is a multiple of interval_ms since the Unix epoch.
CREATE TABLE listener_stats (
    handler TEXT NOT NULL,
    interval_start_ms BIGINT NOT NULL,
    interval_ms BIGINT NOT NULL,
    runs BIGINT NOT NULL,
    failures BIGINT NOT NULL,
    total_duration_us BIGINT NOT NULL,
    max_duration_us BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (handler, interval_start_ms)
);
-- Reading by time (the admin API, the latest aggregated interval, retention).
CREATE INDEX listener_stats_interval ON listener_stats (interval_start_ms);
