ALTER TABLE inbox_work DROP COLUMN claimed_by;
