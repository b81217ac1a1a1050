DROP TABLE outgoing_replies;
DROP TABLE messages;
DROP TABLE event_log;
DROP TABLE listeners;
