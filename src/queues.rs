//! The queues of Pipes and their job payloads. Payloads are tagged, versioned
//! and carry ids only — never a token.

use pipes_workers::{QueueSpec, Topology};
use serde::{Deserialize, Serialize};

use crate::auth_method::AuthMethod;
use crate::config::Config;
use crate::ids::{AccountId, IntegrationId};

pub const REFRESH: &str = "refresh";
pub const WEBHOOKS: &str = "webhooks";

/// Redeliveries (e.g. consumers dying mid-job) before the broker dead-letters a
/// message. Set explicitly: newer brokers default it and silently drop.
const DELIVERY_LIMIT: u32 = 20;

/// Both work queues with their delay steps, under `PIPES_QUEUE_PREFIX`.
pub fn topology(config: &Config) -> Topology {
    Topology {
        prefix: config.queue_prefix.clone(),
        queues: vec![
            QueueSpec {
                name: REFRESH.to_owned(),
                retry_delays: config.refresh_retry_delays.clone(),
                delivery_limit: DELIVERY_LIMIT,
            },
            QueueSpec {
                name: WEBHOOKS.to_owned(),
                retry_delays: config.webhook_retry_delays.clone(),
                delivery_limit: DELIVERY_LIMIT,
            },
        ],
    }
}

/// A job renewing one account's token before it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum RefreshJob {
    /// Present the account's refresh token (OAuth accounts).
    #[serde(rename = "refresh.v1")]
    V1 { account_id: AccountId, integration_id: IntegrationId },
    /// Obtain a new token with the account's own client (client-credentials accounts).
    #[serde(rename = "client_credentials.v1")]
    ClientCredentialsV1 { account_id: AccountId, integration_id: IntegrationId },
}

impl RefreshJob {
    /// The job that renews an account of an integration authenticating with `method`.
    pub fn for_account(method: AuthMethod, account_id: AccountId, integration_id: IntegrationId) -> Self {
        match method {
            AuthMethod::ClientCredentials => RefreshJob::ClientCredentialsV1 { account_id, integration_id },
            AuthMethod::OAuth | AuthMethod::ApiKey => RefreshJob::V1 { account_id, integration_id },
        }
    }

    pub fn account_id(&self) -> &AccountId {
        match self {
            RefreshJob::V1 { account_id, .. } | RefreshJob::ClientCredentialsV1 { account_id, .. } => account_id,
        }
    }

    pub fn integration_id(&self) -> &IntegrationId {
        match self {
            RefreshJob::V1 { integration_id, .. } | RefreshJob::ClientCredentialsV1 { integration_id, .. } => {
                integration_id
            }
        }
    }

    /// The auth method of the accounts this kind of job renews.
    pub fn auth_method(&self) -> AuthMethod {
        match self {
            RefreshJob::V1 { .. } => AuthMethod::OAuth,
            RefreshJob::ClientCredentialsV1 { .. } => AuthMethod::ClientCredentials,
        }
    }
}

/// A webhook delivery job: one event to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum DeliveryJob {
    #[serde(rename = "webhook_delivery.v1")]
    V1 { delivery_id: String },
}

/// Connects to the broker, retrying with a capped backoff until it answers or `cancel`
/// fires (then `None`): a role started before RabbitMQ waits instead of crash-looping.
pub async fn connect_broker(
    url: &str,
    name: &str,
    cancel: &tokio_util::sync::CancellationToken,
) -> Option<pipes_workers::Broker> {
    use backon::Retryable;
    let backoff = backon::ExponentialBuilder::new()
        .with_min_delay(std::time::Duration::from_millis(200))
        .with_max_delay(std::time::Duration::from_secs(5))
        .without_max_times();
    let connect = (|| pipes_workers::Broker::connect(url, name)).retry(backoff).notify(
        |err, pause| tracing::warn!(error = %err, connection = name, retry_in = ?pause, "message broker unreachable"),
    );
    // A broker that accepts the socket but never answers must not hold up shutdown.
    tokio::select! {
        () = cancel.cancelled() => None,
        connected = connect => connected.ok(),
    }
}
