//! The one integration-test binary: every test talks to real PostgreSQL, Redis and RabbitMQ.

mod foundation;
mod support;
mod catalog;
mod demo_provider;
