//! The one integration-test binary: every test talks to real PostgreSQL, Redis and RabbitMQ.

// Tests and tools read the clock directly (clippy.toml keeps the library to `pipes::time::now`).
#![allow(clippy::disallowed_methods)]

mod auth;
mod catalog;
mod cli;
mod connect;
mod connected_accounts;
mod credentials;
mod demo_provider;
mod foundation;
mod hardening;
mod input_guard;
mod integrations;
mod multiple;
mod observability;
mod operations;
mod organization_apps;
mod pipeline;
mod policy;
mod queue;
mod redis_cluster;
mod refresh_core;
mod relay;
mod sdk_node;
mod sdk_python;
mod securing;
mod sharing;
mod soak;
mod support;
mod tokens;
mod webhooks;
mod widget;
