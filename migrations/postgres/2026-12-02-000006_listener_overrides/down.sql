DROP TABLE listener_history;
ALTER TABLE listeners DROP COLUMN overrides;
