-- Greetings sent by welcome_bot, one per (realm, user, greeting), so that a retried or
-- repeated event (Zulip sends up to three realm_user/add events per new user) greets once.
-- `greeting` is "realm" (joined the organization), "channel:<name>" (subscribed to a
-- configured channel, name in lower case) or "bot" (a bot: never greeted).
CREATE TABLE welcome_greetings (
    realm_id BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    greeting TEXT NOT NULL,
    sent_at_ms BIGINT NOT NULL,
    PRIMARY KEY (realm_id, user_id, greeting)
);
