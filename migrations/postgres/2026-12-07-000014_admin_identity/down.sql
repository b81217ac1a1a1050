ALTER TABLE listener_history DROP COLUMN actor;
