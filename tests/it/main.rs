//! The integration tests, one binary: each module is one area, run against the real server
//! (started in this process on 127.0.0.1:0, or as a process of its own) and real databases.
//! `support` holds the shared harness.

mod admin_changes;
mod admin_identity;
mod architecture;
mod dashboard;
mod dead_letters;
mod docs_links;
mod effects;
mod erasure;
mod fault_disk_full;
mod fault_pg_outage;
mod fault_restart;
mod faults;
mod forwarder;
mod guards;
mod health;
mod layout;
mod listeners;
mod memory_budget;
mod message_writes;
mod migrations;
mod monitoring;
mod newcomer;
mod openapi;
mod operations;
mod operator;
mod outbound;
mod outgoing;
mod privacy;
mod retention;
mod split;
mod support;
mod verify;
mod welcome;
mod writers;
