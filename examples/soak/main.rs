//! Soak helper for `benches/soak/run.sh` (not a test). Two commands:
//!
//! * `provider DIR` — holds the third party: runs the demo OAuth provider with access-token
//!   lifetimes spread over `[SOAK_TTL_MIN, SOAK_TTL_MAX]` seconds, seeds `SOAK_ACCOUNTS`
//!   connected accounts whose tokens are real grants there, writes a `tokens` API key to
//!   `DIR/key` and `DIR/ready`; on `DIR/start` drives token reads at `SOAK_RATE`/s for
//!   `SOAK_DURATION` seconds against `SOAK_SERVE_URL`, checking every answer against the
//!   provider; samples the database and the provider every 10 s; on `DIR/stop` audits every
//!   account and writes `DIR/final.json`.
//! * `proxy LISTEN UPSTREAM` — a TCP proxy; `SIGUSR1` cuts every connection and refuses new
//!   ones, `SIGUSR2` restores it.
//!
//! `PIPES_*` settings come from the environment, as for the roles it runs next to;
//! `SOAK_DATABASE_URL` is the direct (unproxied) database the helper itself uses.

// Tests and tools read the clock directly (clippy.toml keeps the library to `pipes::time::now`).
#![allow(clippy::disallowed_methods)]

mod audit;
mod load;
mod provider;
mod proxy;

use anyhow::{bail, Result};

#[tokio::main]
async fn main() -> Result<()> {
    pipes::install_crypto_provider();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match (args.first().map(String::as_str), args.get(1), args.get(2)) {
        (Some("provider"), Some(dir), None) => provider::run(dir.into()).await,
        (Some("proxy"), Some(listen), Some(upstream)) => proxy::run(listen, upstream).await,
        _ => bail!("usage: soak provider DIR | soak proxy LISTEN UPSTREAM"),
    }
}

/// An environment knob with a default.
fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Seconds since the Unix epoch, as a float (the script's timeline uses the same clock).
fn epoch() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}
