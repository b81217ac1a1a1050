-- The Zulip message a forwarded event is about (a `message` event's message, an edit's, a
-- reaction's; NULL for the rest), as the event log keeps it for listener runs: the admin API
-- looks forwarded events up by message (`GET /admin/inbox?message_id=`, used by
-- `zulip-listeners verify`) even after a finished event's envelope is erased. Only rows with
-- a message are indexed.
ALTER TABLE inbox ADD COLUMN message_id BIGINT;
CREATE INDEX inbox_message ON inbox (message_id) WHERE message_id IS NOT NULL;
