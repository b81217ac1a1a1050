-- The message whose text an inbox envelope holds (a `message` event, the message an
-- `update_message` edits, a `submessage`'s message), set while the row keeps its envelope:
-- a deletion in Zulip finds every envelope of the message through `inbox_message` and erases
-- it (src/events/erasure.rs). Rows processed as they arrived keep no envelope and are not
-- indexed, so the index stays small and costs intake nothing for them.
ALTER TABLE inbox ADD COLUMN message_id BIGINT;
-- Events refused by the filters keep only what de-duplication and counting need.
UPDATE inbox SET payload = '' WHERE status = 'filtered';
UPDATE inbox SET message_id = CASE event_type
        WHEN 'message' THEN CASE WHEN json_type(payload, '$.event.message.id') = 'integer'
            THEN json_extract(payload, '$.event.message.id') END
        ELSE CASE WHEN json_type(payload, '$.event.message_id') = 'integer'
            THEN json_extract(payload, '$.event.message_id') END
    END
WHERE event_type IN ('message', 'update_message', 'submessage') AND payload <> ''
    AND json_valid(payload);
CREATE INDEX inbox_message ON inbox (message_id) WHERE message_id IS NOT NULL;
