//! The database schema shared by both backends (portable column types only), as the
//! migrations in `migrations/{sqlite,postgres}` leave it. A column holding the name of a
//! configured listener is called `listener`.

diesel::table! {
    listeners (name) {
        name -> Text,
        enabled -> Bool,
        config -> Text,
        disabled_reason -> Nullable<Text>,
        created_at_ms -> BigInt,
        updated_at_ms -> BigInt,
        overrides -> Nullable<Text>,
    }
}

diesel::table! {
    listener_history (id) {
        id -> BigInt,
        listener -> Text,
        changed_at_ms -> BigInt,
        source -> Text,
        field -> Text,
        old_value -> Nullable<Text>,
        new_value -> Nullable<Text>,
        actor -> Nullable<Text>,
    }
}

diesel::table! {
    event_log (id) {
        id -> BigInt,
        listener -> Text,
        source -> Text,
        event_type -> Text,
        bot -> Nullable<Text>,
        realm -> Nullable<Text>,
        realm_id -> Nullable<BigInt>,
        user_id -> Nullable<BigInt>,
        message_id -> Nullable<BigInt>,
        event_id -> Nullable<Text>,
        duration_us -> BigInt,
        success -> Bool,
        error -> Nullable<Text>,
        created_at_ms -> BigInt,
    }
}

diesel::table! {
    messages (message_id) {
        message_id -> BigInt,
        realm -> Text,
        realm_id -> Nullable<BigInt>,
        message_type -> Text,
        stream_id -> Nullable<BigInt>,
        channel -> Nullable<Text>,
        topic -> Nullable<Text>,
        dm_recipients -> Nullable<Text>,
        sender_id -> Nullable<BigInt>,
        sender_email -> Nullable<Text>,
        sender_name -> Nullable<Text>,
        content -> Text,
        content_truncated -> Bool,
        sent_at -> Nullable<BigInt>,
        source -> Text,
        deleted -> Bool,
        edited_at -> Nullable<BigInt>,
        stored_at_ms -> BigInt,
    }
}

diesel::table! {
    outgoing_replies (bot, message_id) {
        bot -> Text,
        message_id -> BigInt,
        response -> Text,
        created_at_ms -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    listeners,
    listener_history,
    event_log,
    messages,
    outgoing_replies,
    inbox,
    forwarder_batches,
    user_activity,
    keyword_alerts,
    listener_stats,
    inbox_work,
    listener_processes
);

diesel::table! {
    inbox (id) {
        id -> BigInt,
        event_id -> Binary,
        webhook_id -> Text,
        realm_id -> BigInt,
        realm -> Text,
        user_id -> Nullable<BigInt>,
        event_type -> Text,
        op -> Nullable<Text>,
        payload -> Text,
        status -> Text,
        attempts -> Integer,
        next_attempt_at_ms -> BigInt,
        claimed_until_ms -> BigInt,
        last_error -> Nullable<Text>,
        emitted_at_ms -> Nullable<BigInt>,
        received_at_ms -> BigInt,
        updated_at_ms -> BigInt,
        message_id -> Nullable<BigInt>,
    }
}

diesel::table! {
    forwarder_batches (webhook_id) {
        webhook_id -> Text,
        events -> Integer,
        received_at_ms -> BigInt,
    }
}

diesel::table! {
    user_activity (realm_id, user_id) {
        realm_id -> BigInt,
        user_id -> BigInt,
        last_seen_ms -> BigInt,
        message_count -> BigInt,
        reaction_count -> BigInt,
        last_presence -> Nullable<Text>,
        last_presence_at_ms -> Nullable<BigInt>,
        last_typing_at_ms -> Nullable<BigInt>,
    }
}

diesel::table! {
    keyword_alerts (rule, message_id) {
        rule -> Text,
        message_id -> BigInt,
        realm -> Text,
        target -> Text,
        sent_at_ms -> BigInt,
    }
}

diesel::table! {
    listener_stats (listener, interval_start_ms) {
        listener -> Text,
        interval_start_ms -> BigInt,
        interval_ms -> BigInt,
        runs -> BigInt,
        failures -> BigInt,
        total_duration_us -> BigInt,
        max_duration_us -> BigInt,
        updated_at_ms -> BigInt,
    }
}

diesel::table! {
    inbox_work (event_id, listener) {
        event_id -> Binary,
        listener -> Text,
        status -> Text,
        attempts -> Integer,
        next_attempt_at_ms -> BigInt,
        claimed_until_ms -> BigInt,
        last_error -> Nullable<Text>,
        updated_at_ms -> BigInt,
        claimed_by -> Text,
    }
}

diesel::table! {
    listener_processes (process_id) {
        process_id -> Text,
        host -> Text,
        pid -> BigInt,
        listeners -> Text,
        started_at_ms -> BigInt,
        heartbeat_at_ms -> BigInt,
    }
}
