//! The HTTP ceiling for `benches/read.sh`: a bare axum server with one route that
//! answers a fixed ~300-byte JSON body, no middleware, no state. What `pipes serve`
//! reaches on its token route is compared with this and with `redis-benchmark`.
//!
//! Usage: `bare_http ADDR` (for example `127.0.0.1:18081`).

use axum::http::header;
use axum::routing::post;
use axum::Router;

const BODY: &str = concat!(
    r#"{"active":true,"access_token":{"object":"access_token","access_token":"#,
    r#""gho_bench_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","#,
    r#""expires_at":"2026-11-27T12:00:00.000Z","scopes":["repo","read:user"],"missing_scopes":[]}}"#
);

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18081".into());
    let app = Router::new().route(
        "/data-integrations/{slug}/token",
        post(|| async { ([(header::CONTENT_TYPE, "application/json")], BODY) }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await
}
