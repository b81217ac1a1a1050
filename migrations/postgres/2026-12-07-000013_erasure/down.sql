-- Envelopes erased or dropped (filtered events) stay as they are.
DROP INDEX inbox_message;
ALTER TABLE inbox DROP COLUMN message_id;
