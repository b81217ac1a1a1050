-- The message whose text an inbox envelope holds (a `message` event, the message an
-- `update_message` edits, a `submessage`'s message), set while the row keeps its envelope:
-- a deletion in Zulip finds every envelope of the message through `inbox_message` and erases
-- it (src/events/erasure.rs). Rows processed as they arrived keep no envelope and are not
-- indexed, so the index stays small and costs intake nothing for them.
ALTER TABLE inbox ADD COLUMN message_id BIGINT;
-- Events refused by the filters keep only what de-duplication and counting need.
UPDATE inbox SET payload = '' WHERE status = 'filtered';
-- Row by row, so that an envelope PostgreSQL cannot read as JSON (a `\u0000` escape or a lone
-- surrogate, which serde accepts in text it does not type) stays unindexed instead of failing
-- the migration: retention still erases it. `\u0000` becomes `\u0001` (the same length, still
-- valid after an escaped backslash), so that such envelopes are read all the same.
DO $$
DECLARE
    r RECORD;
    doc json;
BEGIN
    FOR r IN SELECT id, event_type, payload FROM inbox
        WHERE event_type IN ('message', 'update_message', 'submessage') AND payload <> ''
    LOOP
        BEGIN
            doc := replace(r.payload, '\u0000', '\u0001')::json;
            doc := CASE r.event_type WHEN 'message' THEN doc #> '{event,message,id}'
                ELSE doc #> '{event,message_id}' END;
            IF json_typeof(doc) = 'number' THEN
                UPDATE inbox SET message_id = (doc::text)::numeric::bigint WHERE id = r.id;
            END IF;
        EXCEPTION WHEN others THEN
            NULL;
        END;
    END LOOP;
END
$$;
CREATE INDEX inbox_message ON inbox (message_id) WHERE message_id IS NOT NULL;
