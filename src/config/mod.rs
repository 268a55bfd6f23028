//! Configuration: environment variables (DESIGN §5) over an optional TOML file
//! with the same keys. Every setting has a local default except the encryption
//! keys; a bad value stops start-up with a message naming the setting.

use std::net::SocketAddr;
use std::time::Duration;

use url::Url;

use crate::crypto::KeyRing;

mod settings;
pub use settings::Settings;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}: {problem}")]
    Invalid { key: &'static str, problem: String },
    #[error("{key} is required: {hint}")]
    Missing { key: &'static str, hint: &'static str },
    #[error("config file {path}: {source}")]
    File {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A service URL that may carry a password (`postgres://user:pass@…`). Reads as
/// the URL (`&str`); `Debug` shows it with every password replaced by `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceUrl(String);

impl ServiceUrl {
    pub fn new(url: impl Into<String>) -> Self {
        ServiceUrl(url.into())
    }

    /// The URL with passwords masked (each part of a comma-separated list on its own).
    pub fn redacted(&self) -> String {
        self.0.split(',').map(redact_password).collect::<Vec<_>>().join(",")
    }
}

fn redact_password(part: &str) -> String {
    match Url::parse(part.trim()) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        Ok(_) => part.to_owned(),
        // Not parseable: it could hide a password anywhere.
        Err(_) => "***".to_owned(),
    }
}

impl std::ops::Deref for ServiceUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ServiceUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Every setting of every role. `Debug` is safe: service URLs mask their
/// passwords, the key ring and the demo secret redact themselves.
#[derive(Debug, Clone)]
pub struct Config {
    /// PostgreSQL, the source of truth.
    pub database_url: ServiceUrl,
    /// Connections per process (a worker takes at least its concurrency plus a margin).
    pub database_pool: u32,
    /// Redis for the token cache (a `redis://` URL; several comma-separated, or `redis+cluster://…`, for a cluster).
    pub redis_url: ServiceUrl,
    /// RabbitMQ for refresh jobs and webhook deliveries.
    pub amqp_url: ServiceUrl,
    /// Address `pipes serve` listens on.
    pub listen: SocketAddr,
    /// Public origin of `pipes serve`; OAuth redirect URIs are built from it.
    pub public_url: Url,
    /// AES-256-GCM keys, newest first.
    pub encryption_keys: KeyRing,
    /// When the scheduler ticks (6 or 7 fields, seconds first).
    pub scheduler_cron: cron::Schedule,
    pub scheduler_cron_text: String,
    /// How long before expiry a token is refreshed (capped at half its lifetime).
    pub refresh_lead: Duration,
    /// A served token stays valid at least this long after the response.
    pub min_validity: Duration,
    /// Jobs a worker runs at once (and its prefetch).
    pub worker_concurrency: u16,
    /// Origins that `return_to` may point at.
    pub allowed_return_to: Vec<String>,
    /// `PIPES_RETURN_URLS`: the exact `return_to` URLs a session-bound flow (`code_challenge`) may use.
    pub return_urls: Vec<Url>,
    /// `PIPES_APP_NAME`: the application's name, as the connect confirmation page says it.
    pub app_name: String,
    /// Where scheduler and worker serve `/metrics`.
    pub metrics_listen: SocketAddr,
    /// When set, `pipes serve` answers `/metrics` and `/health/*` here only, not on `listen`.
    pub internal_listen: Option<SocketAddr>,
    /// Per key and per address, for each group of routes (`crate::limits`).
    pub rate_limits: crate::limits::RateLimits,
    /// Development only: outbound requests (providers, webhooks) may use plain http
    /// and reach loopback and private addresses (`crate::outbound`).
    pub allow_private_network: bool,
    /// Prefix of every queue name, so tenants and tests can share one broker.
    pub queue_prefix: String,
    /// Prefix of every Redis key.
    pub redis_prefix: String,
    pub log_format: LogFormat,
    /// Delay steps of refresh-job retries; after the last one a job is dead-lettered.
    pub refresh_retry_delays: Vec<Duration>,
    /// Delay steps of webhook-delivery retries.
    pub webhook_retry_delays: Vec<Duration>,
    /// Timeout of one request to a provider's token endpoint.
    pub provider_timeout: Duration,
    /// How long a refresh lease is held at most; a crashed holder frees it after this.
    pub refresh_lease: Duration,
    /// A job published this long ago without a result makes its account due again.
    pub requeue_after: Duration,
    /// Timeout of one Redis command on the read path before falling back to PostgreSQL.
    pub redis_timeout: Duration,
    /// Lifetime of a widget token.
    pub widget_token_ttl: Duration,
    /// After SIGTERM, how long a process waits for its roles to finish in-flight work
    /// before it exits anyway.
    pub shutdown_timeout: Duration,
    /// Where `pipes demo-provider` (and `pipes dev`) serve the demo OAuth provider.
    pub demo_listen: SocketAddr,
    /// The demo provider's origin as a browser reaches it.
    pub demo_public_url: String,
    /// The demo provider's origin as Pipes reaches it (differs in containers).
    pub demo_internal_url: String,
    /// The demo client's secret (shared by the demo provider and the `demo` integration).
    pub demo_client_secret: crate::secret::Secret,
}

fn invalid(key: &'static str, problem: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid { key, problem: problem.to_string() }
}

fn duration(s: &Settings, key: &'static str, default: &str) -> Result<Duration, ConfigError> {
    let text = s.get_or(key, default);
    humantime::parse_duration(text.trim()).map_err(|e| invalid(key, format!("{e} (write durations like 90s, 10m, 1h)")))
}

fn durations(s: &Settings, key: &'static str, default: &str) -> Result<Vec<Duration>, ConfigError> {
    let text = s.get_or(key, default);
    let steps = text
        .split(',')
        .map(|part| humantime::parse_duration(part.trim()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(key, format!("{e} (a comma-separated list like 5s,30s,2m)")))?;
    if steps.is_empty() || steps.iter().any(|d| d.is_zero()) {
        return Err(invalid(key, "needs at least one non-zero delay"));
    }
    Ok(steps)
}

fn addr(s: &Settings, key: &'static str, default: &str) -> Result<SocketAddr, ConfigError> {
    let text = s.get_or(key, default);
    text.trim().parse().map_err(|e| invalid(key, format!("{e}: expected host:port like 127.0.0.1:8080")))
}

fn boolean(s: &Settings, key: &'static str) -> Result<bool, ConfigError> {
    match s.get(key).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if matches!(v.as_str(), "1" | "true" | "yes" | "on") => Ok(true),
        Some(v) if matches!(v.as_str(), "0" | "false" | "no" | "off") => Ok(false),
        Some(v) => Err(invalid(key, format!("`{v}` is not a boolean (true or false)"))),
    }
}

fn prefix(s: &Settings, key: &'static str) -> Result<String, ConfigError> {
    let value = s.get_or(key, "pipes").trim().to_owned();
    if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(invalid(key, "use letters, digits, '-', '_' or '.'"));
    }
    Ok(value)
}

/// Parses a cron expression and refuses one that never fires.
pub fn parse_cron(key: &'static str, text: &str) -> Result<cron::Schedule, ConfigError> {
    let schedule: cron::Schedule =
        text.trim().parse().map_err(|e| invalid(key, format!("{e} (6 or 7 fields, seconds first: */5 * * * * *)")))?;
    if schedule.upcoming(chrono::Utc).next().is_none() {
        return Err(invalid(key, "the expression never fires"));
    }
    Ok(schedule)
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_settings(&Settings::from_env()?)
    }

    pub fn from_settings(s: &Settings) -> Result<Self, ConfigError> {
        if s.get("PIPES_WEBHOOK_ALLOW_PRIVATE").is_some() {
            return Err(invalid(
                "PIPES_WEBHOOK_ALLOW_PRIVATE",
                "renamed to PIPES_ALLOW_PRIVATE_NETWORK, which covers provider endpoints too",
            ));
        }
        let encryption_keys = match s.get("PIPES_ENCRYPTION_KEYS") {
            Some(text) => KeyRing::parse(&text).map_err(|e| invalid("PIPES_ENCRYPTION_KEYS", e))?,
            None => {
                return Err(ConfigError::Missing {
                    key: "PIPES_ENCRYPTION_KEYS",
                    hint: "generate one with `pipes keys generate` (format kid:base64-of-32-bytes, newest first)",
                })
            }
        };
        let public_url_text = s.get_or("PIPES_PUBLIC_URL", "http://localhost:8080");
        let public_url = Url::parse(public_url_text.trim())
            .map_err(|e| invalid("PIPES_PUBLIC_URL", format!("{e}: expected an absolute URL")))?;
        if !matches!(public_url.scheme(), "http" | "https") || public_url.host().is_none() {
            return Err(invalid("PIPES_PUBLIC_URL", "must be an http(s) URL with a host"));
        }
        let cron_text = s.get_or("PIPES_SCHEDULER_CRON", "*/5 * * * * *").trim().to_owned();
        let scheduler_cron = parse_cron("PIPES_SCHEDULER_CRON", &cron_text)?;
        let allowed_return_to = s
            .get_or("PIPES_ALLOWED_RETURN_TO", "http://localhost:3000,http://127.0.0.1:3000")
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(|o| {
                let url = Url::parse(o).map_err(|e| invalid("PIPES_ALLOWED_RETURN_TO", format!("{o}: {e}")))?;
                Ok(url.origin().ascii_serialization())
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let return_urls = s
            .get_or("PIPES_RETURN_URLS", "")
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                let url = Url::parse(u).map_err(|e| invalid("PIPES_RETURN_URLS", format!("{u}: {e}")))?;
                if !matches!(url.scheme(), "http" | "https") || url.query().is_some() || url.fragment().is_some() {
                    return Err(invalid("PIPES_RETURN_URLS", format!("{u}: an http(s) URL without query or fragment")));
                }
                Ok(url)
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let worker_concurrency = s
            .get_or("PIPES_WORKER_CONCURRENCY", "16")
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| invalid("PIPES_WORKER_CONCURRENCY", "expected a whole number from 1 to 65535"))?;
        let log_format = match s.get_or("PIPES_LOG_FORMAT", "text").trim() {
            "text" | "pretty" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(invalid("PIPES_LOG_FORMAT", format!("`{other}`: use text or json"))),
        };
        let config = Config {
            database_url: ServiceUrl::new(s.get_or("PIPES_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/pipes")),
            database_pool: s
                .get_or("PIPES_DATABASE_POOL", "20")
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| invalid("PIPES_DATABASE_POOL", "expected a whole number from 1 to 1000"))?,
            redis_url: ServiceUrl::new(s.get_or("PIPES_REDIS_URL", "redis://127.0.0.1:6379")),
            amqp_url: ServiceUrl::new(s.get_or("PIPES_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")),
            listen: addr(s, "PIPES_LISTEN", "127.0.0.1:8080")?,
            public_url,
            encryption_keys,
            scheduler_cron,
            scheduler_cron_text: cron_text,
            refresh_lead: duration(s, "PIPES_REFRESH_LEAD", "10m")?,
            min_validity: duration(s, "PIPES_MIN_VALIDITY", "60s")?,
            worker_concurrency,
            allowed_return_to,
            return_urls,
            app_name: s.get_or("PIPES_APP_NAME", "the application").trim().to_owned(),
            metrics_listen: addr(s, "PIPES_METRICS_LISTEN", "127.0.0.1:9090")?,
            internal_listen: match s.get("PIPES_INTERNAL_LISTEN") {
                Some(_) => Some(addr(s, "PIPES_INTERNAL_LISTEN", "")?),
                None => None,
            },
            rate_limits: crate::limits::RateLimits::parse(&s.get_or("PIPES_RATE_LIMITS", ""))
                .map_err(|e| invalid("PIPES_RATE_LIMITS", e))?,
            allow_private_network: boolean(s, "PIPES_ALLOW_PRIVATE_NETWORK")?,
            queue_prefix: prefix(s, "PIPES_QUEUE_PREFIX")?,
            redis_prefix: prefix(s, "PIPES_REDIS_PREFIX")?,
            log_format,
            refresh_retry_delays: durations(s, "PIPES_REFRESH_RETRY_DELAYS", "5s,30s,2m,10m,1h")?,
            webhook_retry_delays: durations(s, "PIPES_WEBHOOK_RETRY_DELAYS", "5s,30s,2m,10m,1h,6h,12h")?,
            provider_timeout: duration(s, "PIPES_PROVIDER_TIMEOUT", "15s")?,
            refresh_lease: duration(s, "PIPES_REFRESH_LEASE", "60s")?,
            requeue_after: duration(s, "PIPES_REQUEUE_AFTER", "5m")?,
            redis_timeout: duration(s, "PIPES_REDIS_TIMEOUT", "250ms")?,
            widget_token_ttl: duration(s, "PIPES_WIDGET_TOKEN_TTL", "30m")?,
            shutdown_timeout: duration(s, "PIPES_SHUTDOWN_TIMEOUT", "30s")?,
            demo_listen: addr(s, "PIPES_DEMO_LISTEN", "127.0.0.1:8090")?,
            demo_public_url: s.get_or("PIPES_DEMO_PUBLIC_URL", "http://localhost:8090").trim().to_owned(),
            demo_internal_url: s
                .get("PIPES_DEMO_INTERNAL_URL")
                .or_else(|| s.get("PIPES_DEMO_PUBLIC_URL"))
                .unwrap_or_else(|| "http://localhost:8090".to_owned())
                .trim()
                .to_owned(),
            demo_client_secret: crate::secret::Secret::new(s.get_or("PIPES_DEMO_CLIENT_SECRET", "demo-client-secret")),
        };
        // The operator's catalog entries, checked with the built-in ones before anything starts.
        if let Some(path) = s.get("PIPES_CATALOG_FILE") {
            let catalog = crate::oauth::catalog::Catalog::with_operator_file(std::path::Path::new(path.trim()))
                .map_err(|e| invalid("PIPES_CATALOG_FILE", e))?;
            crate::oauth::catalog::Catalog::install(catalog);
        }
        if config.refresh_lease <= config.provider_timeout {
            return Err(invalid("PIPES_REFRESH_LEASE", "must be longer than PIPES_PROVIDER_TIMEOUT"));
        }
        Ok(config)
    }

    /// Whether `return_to` is one of `PIPES_RETURN_URLS` exactly; a loopback URL matches on any port.
    pub fn is_registered_return_url(&self, return_to: &Url) -> bool {
        if return_to.query().is_some() || return_to.fragment().is_some() {
            return false;
        }
        self.return_urls.iter().any(|registered| {
            let loopback = matches!(registered.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
            if loopback {
                registered.scheme() == return_to.scheme()
                    && registered.host_str() == return_to.host_str()
                    && registered.path() == return_to.path()
            } else {
                registered == return_to
            }
        })
    }

    /// Whether Pipes is served over plain http (development on loopback): its cookies cannot be `Secure`.
    pub fn plain_http(&self) -> bool {
        self.public_url.scheme() == "http"
    }

    /// The redirect URI registered at the provider for an integration.
    pub fn redirect_uri(&self, slug: &str) -> String {
        let base = self.public_url.as_str().trim_end_matches('/');
        format!("{base}/data-integrations/{slug}/callback")
    }
}
