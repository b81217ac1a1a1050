//! The shared test harness: real databases (a temporary SQLite file, and a fresh schema on the
//! PostgreSQL server named by `ZULIP_LISTENERS_TEST_PG_URL` when set), the real server started
//! in this process or as a process of its own, loopback stand-ins for external systems, and
//! builders for what arrives over the wire. Test modules `use crate::support::*`.

mod backend;
mod browser;
mod db;
mod poll;
mod process;
mod requirements;
mod server;
mod stub;
mod wire;
mod zulip;

pub(crate) use backend::backend_test;
pub use backend::{Backend, postgres_enabled};
pub use browser::{Browser, start_driver, wait_text};
pub use db::{
    TestDatabase, count_of, inbox_count, inbox_counts, inbox_status, log_errors, log_rows_for,
};
pub use poll::eventually;
pub use process::{
    BIN, ConfigFile, ServerProcess, cli, cli_status, free_port, output_text, run, wait_until_up,
};
pub use requirements::{mount_tmpfs, postgres_bin_dir};
pub use server::{ADMIN, Answer, TEST_ROOM, TestApp, TestServer, helper_bot};
pub use stub::{Received, Stub, serve_loopback};
pub use wire::{
    BOT_EMAIL, Envelope, OTHER_SECRET, SECRET, TOKEN, batch, broken_build, channel_message,
    envelope, mention, mention_json, message, now_s, ping, signed_events,
};
pub use zulip::{BOT_ID, FakeZulip, PERSON_EMAIL, PERSON_KEY, ZulipSetup};
// The server's own status vocabularies: tests compare against these, never against strings.
pub use zulip_listeners::db::tables::inbox::InboxStatus;
pub use zulip_listeners::db::tables::inbox_work::WorkStatus;
pub use zulip_listeners::listeners::ListenerState;
