//! Shared test helpers: a running app per test, a TCP proxy for fault tests.

pub mod app;
pub mod proxy;
