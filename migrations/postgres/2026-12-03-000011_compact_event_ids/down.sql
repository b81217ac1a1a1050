-- Event ids back to text.
ALTER TABLE inbox ALTER COLUMN event_id TYPE TEXT USING CASE WHEN get_byte(event_id, 0) = 0 THEN
        substr(encode(event_id, 'hex'), 3, 8) || '-' || substr(encode(event_id, 'hex'), 11, 4) || '-' ||
        substr(encode(event_id, 'hex'), 15, 4) || '-' || substr(encode(event_id, 'hex'), 19, 4) || '-' ||
        substr(encode(event_id, 'hex'), 23, 12)
        ELSE convert_from(substring(event_id from 2), 'UTF8') END;
ALTER TABLE inbox_work ALTER COLUMN event_id TYPE TEXT USING CASE WHEN get_byte(event_id, 0) = 0 THEN
        substr(encode(event_id, 'hex'), 3, 8) || '-' || substr(encode(event_id, 'hex'), 11, 4) || '-' ||
        substr(encode(event_id, 'hex'), 15, 4) || '-' || substr(encode(event_id, 'hex'), 19, 4) || '-' ||
        substr(encode(event_id, 'hex'), 23, 12)
        ELSE convert_from(substring(event_id from 2), 'UTF8') END;
