DROP TABLE user_activity;
DROP TABLE forwarder_batches;
DROP TABLE inbox;
