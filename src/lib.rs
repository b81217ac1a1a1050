//! zulip-listeners: a server that lets a Zulip organisation run its own event-driven features.
//! Zulip pushes outgoing webhooks (and, with the forwarder, every real-time event); the server
//! verifies them, runs compiled-in handlers, and persists what they produce.

pub mod cli;
pub mod clock;
pub mod config;
pub mod db;
pub mod events;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
pub mod guards;
pub mod handlers;
pub mod http;
pub mod listeners;
pub mod outbound;
pub mod output;
pub mod processing;
pub mod redact;
pub mod server;
pub mod telemetry;
pub mod verification;
pub mod zulip_api;
