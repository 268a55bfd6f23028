//! `pipes keys rotate`: re-encrypts every secret column under the newest key,
//! online (compare-and-swap per row, so concurrent writers win), in batches,
//! resumable (rows already under the newest key are skipped).

use sqlx::{PgPool, Row};

use crate::crypto::{aad, KeyRing};

/// One encrypted column: how to page through it and swap a value.
pub struct SecretColumn {
    /// The associated-data name, `table.column`.
    pub aad: &'static str,
    count: &'static str,
    select: &'static str,
    update: &'static str,
}

macro_rules! secret_column {
    ($table:literal, $id:literal, $col:literal, $aad:literal) => {
        SecretColumn {
            aad: $aad,
            count: concat!("SELECT count(*) FROM ", $table, " WHERE ", $col, " IS NOT NULL"),
            select: concat!(
                "SELECT ",
                $id,
                " AS id, ",
                $col,
                " AS value FROM ",
                $table,
                " WHERE ",
                $id,
                " > $1 AND ",
                $col,
                " IS NOT NULL ORDER BY ",
                $id,
                " LIMIT $2"
            ),
            update: concat!("UPDATE ", $table, " SET ", $col, " = $1 WHERE ", $id, " = $2 AND ", $col, " = $3"),
        }
    };
}

/// Associated-data names of every encrypted column.
pub mod columns {
    pub const CLIENT_SECRET: &str = "integrations.client_secret";
    pub const ACCESS_TOKEN: &str = "connected_accounts.access_token";
    pub const REFRESH_TOKEN: &str = "connected_accounts.refresh_token";
    pub const ACCOUNT_CLIENT_SECRET: &str = "connected_accounts.client_secret";
    pub const ORGANIZATION_CLIENT_SECRET: &str = "organization_configurations.client_secret";
    pub const PKCE_VERIFIER: &str = "oauth_states.pkce_verifier";
    pub const AUTHORIZATION_URL: &str = "oauth_states.authorization_url";
    pub const PROVIDER_CODE: &str = "oauth_states.provider_code";
    pub const WEBHOOK_SECRET: &str = "webhook_endpoints.secret";
    /// The Redis cache entry of an account (not a table, same key ring).
    pub const CACHE_ENTRY: &str = "cache.token";
}

pub const SECRET_COLUMNS: &[SecretColumn] = &[
    secret_column!("integrations", "id", "client_secret_enc", "integrations.client_secret"),
    secret_column!("connected_accounts", "id", "access_token_enc", "connected_accounts.access_token"),
    secret_column!("connected_accounts", "id", "refresh_token_enc", "connected_accounts.refresh_token"),
    secret_column!("connected_accounts", "id", "client_secret_enc", "connected_accounts.client_secret"),
    secret_column!(
        "organization_configurations",
        "id",
        "client_secret_enc",
        "organization_configurations.client_secret"
    ),
    secret_column!("oauth_states", "state_hash", "pkce_verifier_enc", "oauth_states.pkce_verifier"),
    secret_column!("oauth_states", "state_hash", "authorization_url_enc", "oauth_states.authorization_url"),
    secret_column!("oauth_states", "state_hash", "provider_code_enc", "oauth_states.provider_code"),
    secret_column!("webhook_endpoints", "id", "secret_enc", "webhook_endpoints.secret"),
];

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("{column} of row {row}: {source}")]
    Crypto {
        column: &'static str,
        row: String,
        #[source]
        source: crate::crypto::CryptoError,
    },
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RotateReport {
    pub examined: u64,
    pub rewritten: u64,
    /// Rows changed by someone else meanwhile (their new value is already current).
    pub raced: u64,
}

/// Counts every stored ciphertext (for the progress bar).
pub async fn count_secrets(db: &PgPool) -> Result<u64, sqlx::Error> {
    let mut total = 0u64;
    for column in SECRET_COLUMNS {
        let n: i64 = sqlx::query_scalar(column.count).fetch_one(db).await?;
        total += n as u64;
    }
    Ok(total)
}

/// Re-encrypts every ciphertext not under the newest key. `progress` is told
/// how many rows each batch examined.
pub async fn rotate(
    db: &PgPool,
    ring: &KeyRing,
    batch_size: i64,
    mut progress: impl FnMut(u64),
) -> Result<RotateReport, RotateError> {
    let mut report = RotateReport::default();
    for column in SECRET_COLUMNS {
        let mut after = String::new();
        loop {
            let rows = sqlx::query(column.select).bind(&after).bind(batch_size).fetch_all(db).await?;
            let Some(last) = rows.last() else { break };
            after = last.get("id");
            for row in &rows {
                let id: String = row.get("id");
                let value: Vec<u8> = row.get("value");
                let resealed = ring.reseal(&value, aad(column.aad, &id)).map_err(|source| RotateError::Crypto {
                    column: column.aad,
                    row: id.clone(),
                    source,
                })?;
                if let Some(new_value) = resealed {
                    let done = sqlx::query(column.update).bind(&new_value).bind(&id).bind(&value).execute(db).await?;
                    if done.rows_affected() == 1 {
                        report.rewritten += 1;
                    } else {
                        report.raced += 1;
                    }
                }
            }
            report.examined += rows.len() as u64;
            progress(rows.len() as u64);
        }
    }
    Ok(report)
}
