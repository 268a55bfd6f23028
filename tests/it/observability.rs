//! What operators see: after a scripted flow (connect, token reads, scheduled
//! refresh, reauthorization, webhook delivery), each role's `/metrics` carries
//! the series of DESIGN §4 with the right counts, and `pipes status` reports
//! the same numbers.

use std::collections::HashMap;
use std::time::Duration;

use pipes::demo_provider::ClientAuthMethod;
use serde_json::json;

use crate::connect::{api_integration, connect};
use crate::pipeline::{eventually, load, Pipeline};
use crate::support::app::TestApp;
use crate::support::fixtures::seed_account;
use crate::tokens::read;
use crate::webhooks::harness::{create_endpoint, Receiver, Workers};

/// Parses the Prometheus text format into `name{labels}` → value.
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The value of `name` whose labels include every `labels` pair (summed over the rest).
fn value(metrics: &HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .iter()
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series.as_str(), ""));
            n == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| *v)
        .sum()
}

async fn scrape(app: &TestApp, url: &str) -> HashMap<String, f64> {
    let text = app.http.get(url).send().await.unwrap().text().await.unwrap();
    parse(&text)
}

#[tokio::test]
async fn metrics_and_status_tell_the_story_of_a_scripted_flow() {
    let app = TestApp::spawn().await;
    let slug = "ob-flow";
    let receiver = Receiver::start([]).await;
    create_endpoint(
        &app,
        &receiver.url(),
        &["pipes.connected_account.connected", "pipes.connected_account.reauthorization_needed"],
    )
    .await;
    let _webhooks = Workers::start(&app).await;
    let provider = api_integration(&app, slug, ClientAuthMethod::Basic, |_| {}).await;

    // Connect one user through the OAuth flow.
    let resp = connect(&app, slug, "alice", None, None).await;
    assert!(resp.status().is_success() || resp.status().is_redirection(), "{}", resp.status());

    // Reads: hit or miss for alice, not_installed for bob.
    for _ in 0..3 {
        let (status, answer) = read(&app, slug, json!({"user_id": "alice"})).await;
        assert_eq!((status, answer["active"].as_bool()), (200, Some(true)), "{answer}");
    }
    let (_, answer) = read(&app, slug, json!({"user_id": "bob"})).await;
    assert_eq!(answer["error"], "not_installed");

    // Two more accounts that come due at once: one refreshes, one's grant is revoked.
    let integration =
        pipes::store::integrations::by_slug(&app.db, app.state.keyring(), slug, pipes::owner::Ownership::User)
            .await
            .unwrap()
            .unwrap();
    let fixture = crate::support::fixtures::Provider { demo: provider.demo.clone(), integration };
    let (due, _) = seed_account(&app, &fixture, "carol", None, Duration::from_secs(4)).await;
    let (doomed, doomed_token) = seed_account(&app, &fixture, "dave", None, Duration::from_secs(4)).await;
    provider.demo.revoke_grant_of(&doomed_token);
    let mut pipeline = Pipeline::start(&app);
    let refreshed = eventually(Duration::from_secs(30), || async {
        load(&app, &due.id).await.token_version > due.token_version
            && load(&app, &doomed.id).await.state == pipes::store::accounts::AccountState::NeedsReauthorization
    })
    .await;
    assert!(refreshed, "the scheduler refreshed carol and flagged dave");
    let (_, answer) = read(&app, slug, json!({"user_id": "dave"})).await;
    assert_eq!(answer["error"], "needs_reauthorization");
    receiver.wait_for(2).await;

    // Each role's /metrics: serve's API port, and the scheduler/worker metrics listener.
    pipes::scheduler::refresh_gauges(&app.state).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    tokio::spawn(pipes::api::serve(listener, pipes::roles::metrics_router(app.state.clone()), app.cancel.clone()));
    let webhook_delivered =
        |m: &HashMap<String, f64>| value(m, "pipes_webhook_deliveries_total", &[("outcome", "delivered")]);
    // The receiver answers before the worker counts the delivery.
    assert!(
        eventually(Duration::from_secs(5), || async {
            webhook_delivered(&scrape(&app, &app.url("/metrics")).await) >= 2.0
        })
        .await,
        "both deliveries counted"
    );
    let mut roles = Vec::new();
    for url in [app.url("/metrics"), format!("http://{metrics_addr}/metrics")] {
        let m = scrape(&app, &url).await;
        let alice = value(&m, "pipes_token_reads_total", &[("provider", slug), ("result", "hit")])
            + value(&m, "pipes_token_reads_total", &[("provider", slug), ("result", "miss")]);
        assert_eq!(alice, 3.0, "{url}: alice's three reads are hits or misses");
        assert_eq!(value(&m, "pipes_token_reads_total", &[("provider", slug), ("result", "not_installed")]), 1.0);
        assert_eq!(
            value(&m, "pipes_token_reads_total", &[("provider", slug), ("result", "needs_reauthorization")]),
            1.0
        );
        assert_eq!(value(&m, "pipes_stale_tokens_served_total", &[("provider", slug)]), 0.0);
        assert!(value(&m, "pipes_token_read_duration_seconds_count", &[]) >= 5.0);
        assert!(value(&m, "pipes_refresh_jobs_enqueued_total", &[("provider", slug)]) >= 2.0);
        assert_eq!(
            value(&m, "pipes_refresh_attempts_total", &[("provider", slug), ("outcome", "reauthorization_needed")]),
            1.0
        );
        assert!(value(&m, "pipes_refresh_attempts_total", &[("provider", slug), ("outcome", "success")]) >= 1.0);
        assert!(value(&m, "pipes_refresh_duration_seconds_count", &[("provider", slug)]) >= 2.0);
        assert!(value(&m, "pipes_refresh_lag_seconds_count", &[]) >= 1.0);
        assert!(webhook_delivered(&m) >= 2.0);
        assert_eq!(value(&m, "pipes_connected_accounts", &[("provider", slug), ("state", "connected")]), 2.0);
        assert_eq!(
            value(&m, "pipes_connected_accounts", &[("provider", slug), ("state", "needs_reauthorization")]),
            1.0
        );
        assert_eq!(value(&m, "pipes_integrations_invalid", &[("provider", slug)]), 0.0);
        assert!(m.keys().any(|k| k.starts_with("pipes_scheduler_tick_duration_seconds_count")));
        assert!(m.keys().any(|k| k.starts_with("pipes_queue_messages{")), "queue depths sampled");
        assert!(m.keys().all(|k| !k.contains("alice") && !k.contains("carol")), "no user id in a label");
        roles.push(m);
    }

    // `pipes status` reports the same numbers.
    let status = pipes::status::gather(&app.db, app.config(), chrono::Utc::now()).await.unwrap();
    let ours = status.integrations.iter().find(|i| i.slug == slug).expect("integration in status");
    let m = &roles[0];
    assert_eq!(
        ours.accounts.connected as f64,
        value(m, "pipes_connected_accounts", &[("provider", slug), ("state", "connected")])
    );
    assert_eq!(
        ours.accounts.needs_reauthorization as f64,
        value(m, "pipes_connected_accounts", &[("provider", slug), ("state", "needs_reauthorization")])
    );
    assert_eq!(
        status.invalid_integrations.is_empty(),
        value(m, "pipes_integrations_invalid", &[("provider", slug)]) == 0.0
    );
    assert!(status.webhooks.delivered_last_24h >= 2);
    let json = serde_json::to_value(&status).unwrap();
    assert!(json["queues"]["depths"].as_array().is_some_and(|d| !d.is_empty()), "{json}");
    pipeline.stop().await;
}

/// A port nothing listens on right now.
async fn free_port() -> u16 {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn with_an_otlp_endpoint_every_request_span_reaches_the_collector_with_its_request_id() {
    use axum::body::Bytes;
    use std::sync::{Arc, Mutex};
    let app = TestApp::spawn().await;
    // The collector: every body POSTed to /v1/traces, kept.
    let received: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let collector = {
        let received = received.clone();
        axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let received = received.clone();
                async move {
                    received.lock().unwrap().push(body);
                    axum::http::StatusCode::OK
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let port = free_port().await;
    let mut serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_pipes"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("PIPES_") || k.starts_with("OTEL_")) {
        serve.env_remove(key);
    }
    let mut serve = serve
        .arg("serve")
        .env("PIPES_DATABASE_URL", format!("postgres://postgres@127.0.0.1:5432/{}", app.db_name))
        .env("PIPES_ENCRYPTION_KEYS", crate::support::app::TEST_KEY)
        .env("PIPES_LISTEN", format!("127.0.0.1:{port}"))
        .env("PIPES_REDIS_PREFIX", format!("it_{}", app.unique))
        .env("PIPES_QUEUE_PREFIX", format!("it_{}", app.unique))
        .env("PIPES_LOG", "warn")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector_url)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start pipes serve");
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    assert!(
        eventually(Duration::from_secs(20), || async { http.get(format!("{base}/health/live")).send().await.is_ok() })
            .await,
        "pipes serve answers"
    );
    let request_id = format!("req_otlp_{}", ulid::Ulid::new());
    let answer = http.get(format!("{base}/health/live")).header("x-request-id", &request_id).send().await.unwrap();
    assert_eq!(answer.headers()["x-request-id"], request_id.as_str());

    // SIGTERM: the process exports what it buffered before it exits.
    let pid = serve.id().expect("running").to_string();
    let killed = tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(30), serve.wait()).await.expect("exits").unwrap();
    assert!(status.success(), "{status:?}");
    let bodies = received.lock().unwrap().clone();
    let exported = |needle: &[u8]| bodies.iter().any(|b| b.windows(needle.len()).any(|w| w == needle));
    assert!(!bodies.is_empty(), "the collector received spans");
    assert!(exported(request_id.as_bytes()), "the request's span carries its request id");
    assert!(exported(b"pipes"), "under the service name");
}
