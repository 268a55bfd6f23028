//! Metric names (DESIGN §4: they are part of the interface; the dashboard and
//! alert rules use them) and the Prometheus recorder every role renders.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const TOKEN_READS: &str = "pipes_token_reads_total";
pub const TOKEN_READ_DURATION: &str = "pipes_token_read_duration_seconds";
pub const STALE_TOKENS_SERVED: &str = "pipes_stale_tokens_served_total";
pub const CACHE_DEGRADED: &str = "pipes_cache_degraded_total";
pub const REFRESH_JOBS_ENQUEUED: &str = "pipes_refresh_jobs_enqueued_total";
pub const REFRESH_ATTEMPTS: &str = "pipes_refresh_attempts_total";
pub const REFRESH_DURATION: &str = "pipes_refresh_duration_seconds";
pub const REFRESH_LAG: &str = "pipes_refresh_lag_seconds";
pub const CONNECTED_ACCOUNTS: &str = "pipes_connected_accounts";
pub const INTEGRATIONS_INVALID: &str = "pipes_integrations_invalid";
pub const ACCOUNTS_DUE: &str = "pipes_accounts_due";
pub const WEBHOOK_DELIVERIES: &str = "pipes_webhook_deliveries_total";
pub const QUEUE_MESSAGES: &str = "pipes_queue_messages";
pub const SCHEDULER_TICK_DURATION: &str = "pipes_scheduler_tick_duration_seconds";
pub const SCHEDULER_LAST_TICK: &str = "pipes_scheduler_last_tick_timestamp_seconds";
pub const PROVIDER_RESPONSES_REFUSED: &str = "pipes_provider_responses_refused_total";
pub const REFRESH_JOBS_DROPPED: &str = "pipes_refresh_jobs_dropped_total";
pub const RATE_LIMITED: &str = "pipes_rate_limited_total";
pub const CACHE_INVALIDATIONS_DRAINED: &str = "pipes_cache_invalidations_drained_total";
pub const RELAY_REQUESTS: &str = "pipes_relay_requests_total";
pub const RELAY_DURATION: &str = "pipes_relay_duration_seconds";
pub const RELAY_BYTES: &str = "pipes_relay_bytes_total";

/// Every metric name this code exports (checked against the dashboard in CI).
pub const ALL: &[&str] = &[
    TOKEN_READS,
    TOKEN_READ_DURATION,
    STALE_TOKENS_SERVED,
    CACHE_DEGRADED,
    REFRESH_JOBS_ENQUEUED,
    REFRESH_ATTEMPTS,
    REFRESH_DURATION,
    REFRESH_LAG,
    CONNECTED_ACCOUNTS,
    INTEGRATIONS_INVALID,
    ACCOUNTS_DUE,
    WEBHOOK_DELIVERIES,
    QUEUE_MESSAGES,
    SCHEDULER_TICK_DURATION,
    SCHEDULER_LAST_TICK,
    PROVIDER_RESPONSES_REFUSED,
    REFRESH_JOBS_DROPPED,
    RATE_LIMITED,
    CACHE_INVALIDATIONS_DRAINED,
    RELAY_REQUESTS,
    RELAY_DURATION,
    RELAY_BYTES,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder once and returns its handle.
pub fn recorder() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let fast = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
            let slow = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(TOKEN_READ_DURATION.into()), &fast)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(SCHEDULER_TICK_DURATION.into()), &fast))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(REFRESH_DURATION.into()), &slow))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(REFRESH_LAG.into()), &slow))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(RELAY_DURATION.into()), &fast));
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            // Another recorder may be installed already (several apps in one test process).
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(TOKEN_READS, "Token reads by provider and result.");
    describe_histogram!(TOKEN_READ_DURATION, Unit::Seconds, "Token read latency by result.");
    describe_counter!(
        RELAY_REQUESTS,
        "Relayed provider calls by provider and outcome (the provider's status class, or Pipes' refusal)."
    );
    describe_histogram!(
        RELAY_DURATION,
        Unit::Seconds,
        "Relayed provider calls: time to the provider's response headers, by provider."
    );
    describe_counter!(RELAY_BYTES, Unit::Bytes, "Bytes relayed by provider and direction (request, response).");
    describe_counter!(STALE_TOKENS_SERVED, "Tokens served with less than min_validity left (must stay 0).");
    describe_counter!(CACHE_DEGRADED, "Reads answered from PostgreSQL because Redis failed.");
    describe_counter!(REFRESH_JOBS_ENQUEUED, "Refresh jobs confirmed by the broker.");
    describe_counter!(REFRESH_ATTEMPTS, "Refresh attempts by provider and outcome.");
    describe_histogram!(REFRESH_DURATION, Unit::Seconds, "Time of one refresh at the provider.");
    describe_histogram!(REFRESH_LAG, Unit::Seconds, "Time from refresh_at to the new token stored.");
    describe_gauge!(CONNECTED_ACCOUNTS, "Connected accounts by provider, auth method and state.");
    describe_gauge!(INTEGRATIONS_INVALID, "1 for each integration whose credentials the provider refused.");
    describe_counter!(PROVIDER_RESPONSES_REFUSED, "Provider answers refused unread: too large, or too slow.");
    describe_counter!(
        REFRESH_JOBS_DROPPED,
        "Refresh jobs dropped unrun, by reason (e.g. a job naming another integration)."
    );
    describe_counter!(RATE_LIMITED, "Requests answered 429, by route group and limit.");
    describe_counter!(CACHE_INVALIDATIONS_DRAINED, "Cache invalidations written to Redis from the outbox.");
    describe_gauge!(ACCOUNTS_DUE, "Accounts whose refresh_at has passed.");
    describe_counter!(WEBHOOK_DELIVERIES, "Webhook delivery attempts by outcome.");
    describe_gauge!(QUEUE_MESSAGES, "Messages ready in each queue.");
    describe_histogram!(SCHEDULER_TICK_DURATION, Unit::Seconds, "Duration of one scheduler tick.");
    describe_gauge!(SCHEDULER_LAST_TICK, "Unix time of the last completed scheduler tick.");
}
