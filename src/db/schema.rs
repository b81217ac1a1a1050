//! The database schema shared by both backends (portable column types only).

diesel::table! {
    listeners (name) {
        name -> Text,
        enabled -> Bool,
        config -> Text,
        disabled_reason -> Nullable<Text>,
        created_at_ms -> BigInt,
        updated_at_ms -> BigInt,
    }
}

diesel::table! {
    event_log (id) {
        id -> BigInt,
        handler -> Text,
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
    messages (id) {
        id -> BigInt,
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

diesel::allow_tables_to_appear_in_same_query!(listeners, event_log, messages, outgoing_replies);
