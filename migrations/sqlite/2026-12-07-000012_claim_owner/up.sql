-- Which serving process holds a claim on a listener's work (`claimed_by`, its process id as
-- in `listener_processes`; empty when nobody does, and always on SQLite, where one server
-- owns the database). A process renews its own claims while their runs wait or run, and a
-- run whose claim another process took does not start.
ALTER TABLE inbox_work ADD COLUMN claimed_by TEXT NOT NULL DEFAULT '';
