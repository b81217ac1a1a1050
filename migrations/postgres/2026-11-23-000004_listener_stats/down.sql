DROP TABLE listener_stats;
