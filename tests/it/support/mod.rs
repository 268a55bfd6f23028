//! Shared test helpers: a running app per test, fixtures, a TCP proxy for fault tests.

pub mod app;
pub mod cluster;
pub mod fixtures;
pub mod proxy;
