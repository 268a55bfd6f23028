//! The one integration-test binary: every test talks to real PostgreSQL, Redis and RabbitMQ.

mod catalog;
mod demo_provider;
mod foundation;
mod operations;
mod queue;
mod refresh_core;
mod support;
mod widget;
