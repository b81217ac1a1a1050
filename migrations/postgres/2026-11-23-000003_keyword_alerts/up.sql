-- Alerts sent by keyword_alerts, one per (rule, message), so that a redelivered message does
-- not alert twice.
CREATE TABLE keyword_alerts (
    rule TEXT NOT NULL,
    message_id BIGINT NOT NULL,
    realm TEXT NOT NULL,
    target TEXT NOT NULL,
    sent_at_ms BIGINT NOT NULL,
    PRIMARY KEY (rule, message_id)
);
