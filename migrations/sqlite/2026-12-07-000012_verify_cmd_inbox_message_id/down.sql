DROP INDEX inbox_message;
ALTER TABLE inbox DROP COLUMN message_id;
