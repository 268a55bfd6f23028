//! The end-of-run audit: every seeded account, read straight from PostgreSQL and decrypted,
//! checked at the provider. An account counts as lost if it is no longer connected, if its
//! refresh token no longer works at the provider (rotation lost, or reuse revoked the grant),
//! or if its stored access token has expired (it was never refreshed) or is not live at the
//! provider for its user. Writes `final.json` with the counts and the provider's counters.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use chrono::{DateTime, Utc};
use pipes::config::Config;
use pipes::crypto::aad;
use pipes::demo_provider::DemoProvider;
use pipes::keys::columns;
use sqlx::PgPool;

type Row = (String, String, String, Option<Vec<u8>>, Option<Vec<u8>>, Option<DateTime<Utc>>);

pub async fn run(config: &Config, db: &PgPool, demo: &DemoProvider, integration_id: &str, dir: &Path) -> Result<()> {
    const SQL: &str = "SELECT id, user_id, state, access_token_enc, refresh_token_enc, expires_at
         FROM connected_accounts WHERE integration_id = $1 AND ($2::text[] IS NULL OR id = ANY($2))";
    let rows: Vec<Row> = sqlx::query_as(SQL).bind(integration_id).bind(None::<Vec<String>>).fetch_all(db).await?;
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut recheck = Vec::new();
    for row in &rows {
        let class = classify(config, demo, row);
        if class != "ok" && class != "not_connected" {
            recheck.push(row.0.clone());
        } else {
            *counts.entry(class).or_default() += 1;
        }
    }
    // The roles keep refreshing while this runs: an account refreshed between its read above
    // and its check at the provider looks dead. Read those again and check once more.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let again: Vec<Row> = sqlx::query_as(SQL).bind(integration_id).bind(Some(&recheck)).fetch_all(db).await?;
    for row in &again {
        *counts.entry(classify(config, demo, row)).or_default() += 1;
    }
    let stats = demo.stats();
    let report = serde_json::json!({
        "accounts": rows.len(), "audit": counts, "rechecked": recheck.len(),
        "provider": {
            "token_requests": stats.token_requests, "refreshes": stats.refreshes,
            "reuse_detected": stats.reuse_detected, "revocations": stats.revocations,
            "grants_alive": stats.grants_alive, "grants_revoked": stats.grants_revoked,
        },
    });
    tokio::fs::write(dir.join("final.json"), serde_json::to_vec_pretty(&report)?).await?;
    eprintln!("audit: {report}");
    Ok(())
}

fn classify(config: &Config, demo: &DemoProvider, row: &Row) -> &'static str {
    let (id, user, state, access, refresh, expires_at) = row;
    if state != "connected" {
        return "not_connected";
    }
    let ring = &config.encryption_keys;
    let refresh = refresh.as_ref().and_then(|r| ring.open_string(r, aad(columns::REFRESH_TOKEN, id)).ok());
    let access = access.as_ref().and_then(|a| ring.open_string(a, aad(columns::ACCESS_TOKEN, id)).ok());
    match (refresh, access) {
        (None, _) | (_, None) => "undecryptable",
        (Some(r), _) if !demo.is_grant_alive_for_refresh(&r) => "refresh_token_dead",
        _ if expires_at.is_none_or(|at| at <= Utc::now()) => "access_token_expired",
        (_, Some(a)) => match demo.access_token_info(&a) {
            Some((owner, _)) if owner == *user => "ok",
            Some(_) => "wrong_user",
            None => "access_token_dead",
        },
    }
}
