DROP TABLE keyword_alerts;
