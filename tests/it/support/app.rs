//! `TestApp::spawn()`: a `pipes serve` on port 0 with a fresh database, a unique
//! Redis prefix and queue prefix, torn down when the test ends (even on panic).

use std::net::SocketAddr;
use std::time::Duration;

use pipes::api;
use pipes::auth::Role;
use pipes::config::{Config, Settings};
use pipes::state::AppState;
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const TEST_KEY: &str = "test1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

pub struct TestApp {
    pub addr: SocketAddr,
    pub base_url: String,
    pub state: AppState,
    pub db: PgPool,
    pub db_name: String,
    pub admin_key: String,
    pub tokens_key: String,
    /// The test's browser (and API client): it keeps cookies.
    pub http: reqwest::Client,
    pub cancel: CancellationToken,
    pub unique: String,
}

/// An HTTP client as a browser is to Pipes: a cookie jar, redirects not followed.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Settings every test app shares; `extra` overrides.
pub fn test_settings(db_name: &str, unique: &str, public_url: &str) -> Settings {
    let mut s = Settings::default();
    s.set("PIPES_DATABASE_URL", format!("postgres://postgres@127.0.0.1:5432/{db_name}"))
        .set("PIPES_ENCRYPTION_KEYS", TEST_KEY)
        .set("PIPES_PUBLIC_URL", public_url)
        .set("PIPES_REDIS_PREFIX", format!("it_{unique}"))
        .set("PIPES_QUEUE_PREFIX", format!("it_{unique}"))
        .set("PIPES_ALLOWED_RETURN_TO", "http://localhost:3000,http://app.test")
        .set("PIPES_RETURN_URLS", "http://app.test/pipes/return,http://localhost:3000/return")
        .set("PIPES_ALLOW_PRIVATE_NETWORK", "true")
        .set("PIPES_SCHEDULER_CRON", "* * * * * *")
        .set("PIPES_REFRESH_RETRY_DELAYS", "200ms,400ms,800ms")
        .set("PIPES_WEBHOOK_RETRY_DELAYS", "200ms,400ms,800ms,1s")
        .set("PIPES_PROVIDER_TIMEOUT", "2s")
        .set("PIPES_REFRESH_LEASE", "5s")
        .set("PIPES_METRICS_LISTEN", "127.0.0.1:0");
    s
}

/// Creates an empty, migrated database and returns its name.
pub async fn fresh_database() -> String {
    let name = format!("pipes_it_{}", ulid::Ulid::new().to_string().to_lowercase());
    let admin = PgPool::connect(ADMIN_URL).await.expect("connect to PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create test database");
    admin.close().await;
    let db = PgPool::connect(&format!("postgres://postgres@127.0.0.1:5432/{name}")).await.expect("connect");
    pipes::db::migrate(&db).await.expect("migrate");
    db.close().await;
    name
}

/// When `PIPES_TEST_LOG` names a file, every test's logs (ours at TRACE) go
/// there as JSON, so CI can check that no secret ever reached a log line.
fn init_test_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Some(path) = std::env::var_os("PIPES_TEST_LOG") else { return };
        let Ok(file) = std::fs::OpenOptions::new().create(true).append(true).open(&path) else { return };
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let filter = tracing_subscriber::EnvFilter::new("info,pipes=trace,pipes_workers=trace");
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::fmt::layer().json().with_writer(std::sync::Mutex::new(file)))
            .try_init();
    });
}

/// `PIPES_TEST_KEEP_DB=1` keeps each test's database and Redis keys for the
/// security scan that runs after the suite (it drops them afterwards).
fn keep_data() -> bool {
    std::env::var_os("PIPES_TEST_KEEP_DB").is_some()
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    /// Spawns with extra settings applied after the defaults.
    pub async fn spawn_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
        pipes::install_crypto_provider();
        init_test_logging();
        let unique = ulid::Ulid::new().to_string().to_lowercase();
        let db_name = fresh_database().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let base_url = format!("http://{addr}");
        let mut settings = test_settings(&db_name, &unique, &base_url);
        tweak(&mut settings);
        let config = Config::from_settings(&settings).expect("test config");
        let cancel = CancellationToken::new();
        let state = AppState::new(config, cancel.clone()).expect("state");
        assert!(state.redis.wait_connected(Duration::from_secs(5)).await, "redis reachable");
        // Redis answers are used once the invalidation outbox was drained after connecting.
        let started = std::time::Instant::now();
        while !state.cache.trusted() && started.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::spawn(api::serve_api(listener, api::service(state.clone()), cancel.clone()));
        let (admin_key, _) = pipes::auth::create_key(&state.db, "test-admin", Role::Admin).await.expect("key");
        let (tokens_key, _) = pipes::auth::create_key(&state.db, "test-tokens", Role::Tokens).await.expect("key");
        let http = browser();
        TestApp { addr, base_url, db: state.db.clone(), state, db_name, admin_key, tokens_key, http, cancel, unique }
    }

    /// Another browser: its own cookie jar, so flows `http` started are not its own.
    pub fn browser(&self) -> reqwest::Client {
        browser()
    }

    pub fn config(&self) -> &Config {
        &self.state.config
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Sends `method path` with `key` (if any) and a JSON body (if any); returns status and JSON.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let json =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, json)
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(method, path, Some(&self.admin_key.clone()), body).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.cancel.cancel();
        if keep_data() {
            return;
        }
        let db_name = self.db_name.clone();
        let prefix = self.state.redis.prefix().to_owned();
        // A fresh runtime on its own thread: Drop may run inside (or outside) a runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                if let Ok(admin) = PgPool::connect(ADMIN_URL).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")))
                        .execute(&admin)
                        .await;
                }
                if let Ok(client) = redis::Client::open("redis://127.0.0.1:6379") {
                    if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                        let keys: Vec<String> = redis::cmd("KEYS")
                            .arg(format!("{prefix}:*"))
                            .query_async(&mut conn)
                            .await
                            .unwrap_or_default();
                        if !keys.is_empty() {
                            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
                        }
                    }
                }
            });
        })
        .join();
    }
}
