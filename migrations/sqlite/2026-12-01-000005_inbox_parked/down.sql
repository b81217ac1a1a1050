UPDATE inbox SET status = 'pending' WHERE status = 'parked';
DROP INDEX inbox_parked;
