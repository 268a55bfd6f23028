//! The one integration-test binary: every test talks to real PostgreSQL, Redis and RabbitMQ.

mod queue;
mod support;
