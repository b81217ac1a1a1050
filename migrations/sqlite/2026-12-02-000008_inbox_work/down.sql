DROP TABLE listener_processes;
DROP INDEX inbox_work_due;
DROP TABLE inbox_work;
