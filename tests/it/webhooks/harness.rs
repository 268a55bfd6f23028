//! The webhook test harness: a receiver that captures deliveries, the relay and
//! delivery consumer of a test app, and the two signature verifiers.

#![allow(dead_code)] // each test module uses a different subset

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use pipes::events::{self, EventKind};
use pipes::webhooks::{deliver, relay::Relay};
use pipes_workers::lapin::options::QueueDeleteOptions;
use pipes_workers::{Broker, CancellationToken};
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::app::TestApp;

pub const WAIT: Duration = Duration::from_secs(20);

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Captured {
    pub headers: HeaderMap,
    pub body: String,
}

impl Captured {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("delivery body is JSON")
    }
    pub fn header(&self, name: &str) -> String {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
    }
}

#[derive(Clone, Default)]
struct ReceiverState {
    captured: Arc<Mutex<Vec<Captured>>>,
    /// Statuses to answer, in order; 200 once they run out.
    script: Arc<Mutex<VecDeque<u16>>>,
}

/// A webhook receiver on 127.0.0.1, port 0.
pub struct Receiver {
    pub addr: SocketAddr,
    state: ReceiverState,
    stop: CancellationToken,
}

impl Receiver {
    pub async fn start(script: impl IntoIterator<Item = u16>) -> Receiver {
        let state = ReceiverState::default();
        state.script.lock().unwrap().extend(script);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new().route("/hook", post(receive)).with_state(state.clone());
        let stop = CancellationToken::new();
        let until = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).with_graceful_shutdown(async move { until.cancelled().await }).await;
        });
        Receiver { addr, state, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn captured(&self) -> Vec<Captured> {
        self.state.captured.lock().unwrap().clone()
    }

    pub fn answer_always(&self, status: u16) {
        let mut script = self.state.script.lock().unwrap();
        script.clear();
        script.extend(std::iter::repeat_n(status, 1000));
    }

    pub fn answer_ok(&self) {
        self.state.script.lock().unwrap().clear();
    }

    pub async fn wait_for(&self, n: usize) -> Vec<Captured> {
        let got = eventually(WAIT, || async { self.captured().len() >= n }).await;
        assert!(got, "expected {n} deliveries, got {}", self.captured().len());
        self.captured()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn receive(State(state): State<ReceiverState>, headers: HeaderMap, body: Bytes) -> (StatusCode, HeaderMap) {
    state.captured.lock().unwrap().push(Captured { headers, body: String::from_utf8_lossy(&body).into_owned() });
    let status = state.script.lock().unwrap().pop_front().unwrap_or(200);
    let mut out = HeaderMap::new();
    if status == 429 {
        out.insert("retry-after", "0".parse().unwrap());
    }
    (StatusCode::from_u16(status).unwrap(), out)
}

pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The relay and the delivery consumer of one test app, on its own queues
/// (deleted when dropped).
pub struct Workers {
    pub relay: Relay,
    cancel: CancellationToken,
    queues: Vec<String>,
}

impl Workers {
    pub async fn start(app: &TestApp) -> Workers {
        let broker = Broker::connect(&app.config().amqp_url, "pipes-tests-webhooks").await.expect("broker");
        let cancel = app.cancel.child_token();
        let relay = Relay::new(app.db.clone(), &broker, app.config());
        tokio::spawn(relay.clone().run(cancel.clone()));
        let (db, config, stop) = (app.db.clone(), app.config().clone(), cancel.clone());
        tokio::spawn(async move { deliver::run_consumer(db, broker, &config, stop).await.expect("consumer") });
        let queues = pipes::queues::topology(app.config()).queue_names();
        Workers { relay, cancel, queues }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.cancel.cancel();
        let names = std::mem::take(&mut self.queues);
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                let Ok(broker) = Broker::connect("amqp://guest:guest@127.0.0.1:5672/%2f", "pipes-tests-cleanup").await
                else {
                    return;
                };
                let Ok(channel) = broker.channel().await else { return };
                for name in names {
                    let _ = channel.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await;
                }
            });
        })
        .join();
    }
}

/// Creates an endpoint through the API; returns (id, secret).
pub async fn create_endpoint(app: &TestApp, url: &str, events: &[&str]) -> (String, String) {
    let (status, body) =
        app.admin(Method::POST, "/webhook_endpoints", Some(json!({"endpoint_url": url, "events": events}))).await;
    assert_eq!(status, 201, "{body}");
    (body["id"].as_str().unwrap().to_owned(), body["secret"].as_str().unwrap().to_owned())
}

/// Emits an event the way the connect flow does: in a transaction of its own.
pub async fn emit(app: &TestApp, kind: EventKind, data: &Value) -> String {
    let mut tx = app.db.begin().await.unwrap();
    let id = events::emit(&mut tx, kind, data).await.unwrap();
    tx.commit().await.unwrap();
    id
}

pub async fn attempts_of(app: &TestApp, event_id: &str) -> Vec<(Option<i32>, Option<String>)> {
    sqlx::query_as(
        "SELECT a.status_code, a.error FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id
         WHERE d.event_id = $1 ORDER BY a.id",
    )
    .bind(event_id)
    .fetch_all(&app.db)
    .await
    .unwrap()
}

pub async fn delivery_status(app: &TestApp, event_id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM webhook_deliveries WHERE event_id = $1")
        .bind(event_id)
        .fetch_optional(&app.db)
        .await
        .unwrap()
}

pub fn run_script(program: &str, script: &str, input: &Value) -> Result<Value, String> {
    use std::io::Write;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk");
    let mut child = std::process::Command::new(program)
        .arg(format!("{dir}/{script}"))
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {program} (installed by .ci/install-tools): {e}"));
    child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("verifier prints JSON"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Verifies a delivery with the official Node SDK's `webhooks.constructEvent`.
pub fn verify_with_node_sdk(delivery: &Captured, secret: &str) -> Result<Value, String> {
    let input = json!({"payload": delivery.body, "sigHeader": delivery.header("workos-signature"), "secret": secret});
    run_script("node", "node/verify_webhook.mjs", &input)
}

/// Verifies a delivery with the official Python SDK's `webhooks.verify_event` (the SDK
/// in `target/sdk-venv`, installed by `.ci/install-tools`).
pub fn verify_with_python_sdk(delivery: &Captured, secret: &str) -> Result<Value, String> {
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/target/sdk-venv/bin/python");
    let input = json!({"payload": delivery.body, "sigHeader": delivery.header("workos-signature"), "secret": secret});
    run_script(python, "python/verify_webhook_sdk.py", &input)
}

/// Verifies a delivery with the Standard Webhooks reference library (PyPI `standardwebhooks`).
pub fn verify_with_standard_webhooks(delivery: &Captured, secret: &str) -> Result<Value, String> {
    let headers: serde_json::Map<String, Value> = ["webhook-id", "webhook-timestamp", "webhook-signature"]
        .iter()
        .map(|h| (h.to_string(), Value::String(delivery.header(h))))
        .collect();
    let input = json!({"payload": delivery.body, "headers": headers, "secret": secret});
    run_script("python3", "python/verify_standard_webhook.py", &input)
}
