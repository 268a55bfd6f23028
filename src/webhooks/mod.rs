//! Webhooks (DESIGN §3.5): endpoints, the outbox relay, signed delivery with
//! retries, replay.
//!
//! Flow: a change writes its event to the `events` outbox in its own
//! transaction (`crate::events::emit`); the scheduler's relay
//! ([`relay::Relay`]) turns each event into one delivery per matching enabled
//! endpoint and publishes a `DeliveryJob` for each; the worker's
//! [`deliver::DeliveryHandler`] POSTs it, signed ([`sign`]), to an address
//! allowed by [`target`], and retries through the `webhooks` delay queues.

pub mod deliver;
pub mod endpoints;
pub mod relay;
pub mod sign;

use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// The outbox relay of the scheduler role, until `cancel` fires.
pub async fn run_relay(state: AppState, cancel: CancellationToken) {
    let Some(broker) = crate::queues::connect_broker(&state.config.amqp_url, "pipes-outbox-relay", &cancel).await
    else {
        return;
    };
    tracing::info!("outbox relay started");
    relay::Relay::new(state.db.clone(), &broker, &state.config).run(cancel).await;
}

/// The webhook delivery consumer of the worker role, until `cancel` fires.
pub async fn run_deliveries(state: AppState, cancel: CancellationToken) {
    let Some(broker) = crate::queues::connect_broker(&state.config.amqp_url, "pipes-webhooks", &cancel).await else {
        return;
    };
    if let Err(error) = deliver::run_consumer(state.db.clone(), broker, &state.config, cancel).await {
        tracing::error!(error = %error, "webhook delivery consumer stopped");
    }
}
