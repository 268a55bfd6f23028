//! Webhooks end to end: the endpoints API, the outbox relay, signed delivery with
//! retries through the real broker, replay, and signatures checked by the official
//! Node SDK and the Standard Webhooks reference library. A small receiver server
//! captures what arrives.

mod api;
mod delivery;
mod flows;
pub mod harness;
