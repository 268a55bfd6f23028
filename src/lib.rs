//! Pipes: connected third-party accounts with always-fresh OAuth access tokens.
//!
//! Roles (`pipes serve`, `scheduler`, `worker`) share this library; the
//! RabbitMQ job runtime lives in the `pipes-workers` crate.

pub mod api;
pub mod auth;
pub mod auth_method;
pub mod cache;
pub mod cache_warm;
pub mod cli;
pub mod config;
pub mod connect;
pub mod connections;
pub mod crypto;
pub mod db;
pub mod demo_provider;
pub mod demo_setup;
pub mod error;
pub mod events;
pub mod ids;
pub mod import;
pub mod invalid;
pub mod invalidations;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod oauth;
pub mod outbound;
pub mod owner;
pub mod policy;
pub mod provisioning;
pub mod queues;
pub mod read;
pub mod readiness;
pub mod redis_conn;
pub mod refresh;
pub mod roles;
pub mod scheduler;
pub mod secret;
pub mod state;
pub mod status;
pub mod store;
pub mod tasks;
pub mod telemetry;
pub mod time;
pub mod webhooks;
pub mod widget;
pub mod worker;

/// Installs the process-wide TLS crypto provider (ring) once. Every TLS
/// client in the tree (reqwest, lapin) then uses it.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
