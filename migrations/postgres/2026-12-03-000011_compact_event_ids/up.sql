-- Event ids are stored compactly (src/db/event_key.rs): a UUID in canonical form (lowercase,
-- hyphenated, as the forwarder writes it) as the byte 0x00 and its 16 bytes, any other id as
-- the byte 0x01 and its UTF-8 text. The unique index over 36-character texts was more than
-- twice as large; with random ids nearly every commit changed a different leaf of it per event.
ALTER TABLE inbox ALTER COLUMN event_id TYPE BYTEA USING CASE WHEN event_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
        THEN decode('00' || replace(event_id, '-', ''), 'hex')
        ELSE '\x01'::bytea || convert_to(event_id, 'UTF8') END;
ALTER TABLE inbox_work ALTER COLUMN event_id TYPE BYTEA USING CASE WHEN event_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
        THEN decode('00' || replace(event_id, '-', ''), 'hex')
        ELSE '\x01'::bytea || convert_to(event_id, 'UTF8') END;
