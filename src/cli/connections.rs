//! `pipes connections list | show | refresh`: connected accounts for operators. Tokens
//! are never printed; `refresh` publishes a refresh job (or, with `--inline`, refreshes
//! in this process through the same single flight as the workers).

use chrono::{DateTime, Utc};
use clap::Subcommand;
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;

use crate::auth_method::AuthMethod;
use crate::config::Config;
use crate::queues::{self, RefreshJob, REFRESH};
use crate::refresh::{Reason, RefreshOutcome};
use crate::state::AppState;
use crate::store::{integrations, schedule};

#[derive(Debug, Subcommand)]
pub enum ConnectionsCommand {
    /// Lists connected accounts, newest first.
    List {
        /// Only accounts of this integration (slug).
        #[arg(long)]
        integration: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long, value_parser = ["connected", "needs_reauthorization", "disconnected"])]
        state: Option<String>,
        /// Only accounts whose refresh is due now.
        #[arg(long)]
        due: bool,
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Shows one account: state, expiry, refresh schedule, last error.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Refreshes one account now: publishes a refresh job for the workers, or with
    /// `--inline` refreshes here and prints the outcome.
    Refresh {
        id: String,
        #[arg(long)]
        inline: bool,
    },
}

/// What operators see of an account (no tokens).
#[derive(Debug, Serialize)]
pub struct ConnectionRow {
    pub id: String,
    pub integration: String,
    pub integration_id: String,
    /// `None` for an organization's shared account.
    pub user_id: Option<String>,
    pub organization_id: Option<String>,
    pub state: String,
    pub scopes: Vec<String>,
    pub auth_method: AuthMethod,
    /// A refresh token, or the account's own client: something renews the token.
    pub renewable: bool,
    pub expires_at: Option<DateTime<Utc>>,
    pub refresh_at: Option<DateTime<Utc>>,
    pub enqueued_at: Option<DateTime<Utc>>,
    pub last_refreshed_at: Option<DateTime<Utc>>,
    pub refresh_failures: i32,
    pub last_refresh_error: Option<String>,
    pub reauthorization_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const SELECT: &str = "SELECT c.id, i.slug, c.integration_id, c.user_id, c.organization_id, c.state, c.scopes,
    c.auth_method, (c.refresh_token_enc IS NOT NULL OR c.client_secret_enc IS NOT NULL) AS renewable, c.expires_at, s.refresh_at, rc.enqueued_at,
    c.last_refreshed_at, c.refresh_failures, c.last_refresh_error, c.reauthorization_reason, c.created_at, c.updated_at
    FROM connected_accounts c JOIN integrations i ON i.id = c.integration_id
    LEFT JOIN refresh_schedule s ON s.account_id = c.id
    LEFT JOIN refresh_claims rc ON rc.account_id = c.id";

impl ConnectionRow {
    fn from_row(r: &PgRow) -> Self {
        ConnectionRow {
            id: r.get("id"),
            integration: r.get("slug"),
            integration_id: r.get("integration_id"),
            user_id: r.get("user_id"),
            organization_id: r.get("organization_id"),
            state: r.get("state"),
            scopes: r.get("scopes"),
            auth_method: AuthMethod::parse(r.get("auth_method")).unwrap_or(AuthMethod::OAuth),
            renewable: r.get("renewable"),
            expires_at: r.get("expires_at"),
            refresh_at: r.get("refresh_at"),
            enqueued_at: r.get("enqueued_at"),
            last_refreshed_at: r.get("last_refreshed_at"),
            refresh_failures: r.get("refresh_failures"),
            last_refresh_error: r.get("last_refresh_error"),
            reauthorization_reason: r.get("reauthorization_reason"),
            created_at: r.get("created_at"),
            updated_at: r.get("updated_at"),
        }
    }
}

pub async fn run(config: &Config, cmd: ConnectionsCommand) -> anyhow::Result<()> {
    let db = crate::db::pool(&config.database_url, 2)?;
    match cmd {
        ConnectionsCommand::List { integration, user, state, due, limit, json } => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "{SELECT} WHERE ($1::text IS NULL OR i.slug = $1) AND ($2::text IS NULL OR c.user_id = $2)
                   AND ($3::text IS NULL OR c.state = $3)
                   AND (NOT $4 OR s.refresh_at <= now())
                 ORDER BY c.created_at DESC, c.id LIMIT $5"
            )))
            .bind(integration)
            .bind(user)
            .bind(state)
            .bind(due)
            .bind(limit)
            .fetch_all(&db)
            .await?;
            let rows: Vec<ConnectionRow> = rows.iter().map(ConnectionRow::from_row).collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("{:<42} {:<16} {:<20} {:<22} {:<24}", "ID", "INTEGRATION", "USER", "STATE", "EXPIRES");
                for r in rows {
                    let expires = r.expires_at.map(crate::time::rfc3339).unwrap_or_else(|| "never".into());
                    let owner = r.user_id.as_deref().unwrap_or("(organization)");
                    println!("{:<42} {:<16} {:<20} {:<22} {:<24}", r.id, r.integration, owner, r.state, expires);
                }
            }
        }
        ConnectionsCommand::Show { id, json } => {
            let row = find(&db, &id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&row)?);
            } else {
                let t = |d: Option<DateTime<Utc>>| d.map(crate::time::rfc3339).unwrap_or_else(|| "-".into());
                println!("id:                 {}", row.id);
                println!("integration:        {} ({})", row.integration, row.integration_id);
                println!(
                    "user / organization: {} / {}",
                    row.user_id.as_deref().unwrap_or("- (shared)"),
                    row.organization_id.as_deref().unwrap_or("-")
                );
                println!("state:              {}", row.state);
                println!("scopes:             {}", row.scopes.join(" "));
                println!("auth method:        {}", row.auth_method);
                println!("renewable:          {}", if row.renewable { "yes" } else { "no" });
                println!("expires at:         {}", t(row.expires_at));
                println!("refresh at:         {}", t(row.refresh_at));
                println!("enqueued at:        {}", t(row.enqueued_at));
                println!("last refreshed at:  {}", t(row.last_refreshed_at));
                println!("refresh failures:   {}", row.refresh_failures);
                println!("last refresh error: {}", row.last_refresh_error.as_deref().unwrap_or("-"));
                if let Some(reason) = &row.reauthorization_reason {
                    println!("reauthorization:    {reason}");
                }
            }
        }
        ConnectionsCommand::Refresh { id, inline } => refresh(config, &db, &id, inline).await?,
    }
    Ok(())
}

async fn find(db: &PgPool, id: &str) -> anyhow::Result<ConnectionRow> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("{SELECT} WHERE c.id = $1"))).bind(id).fetch_optional(db).await?;
    row.as_ref().map(ConnectionRow::from_row).ok_or_else(|| anyhow::anyhow!("no connected account with id `{id}`"))
}

async fn refresh(config: &Config, db: &PgPool, id: &str, inline: bool) -> anyhow::Result<()> {
    let row = find(db, id).await?;
    anyhow::ensure!(
        row.state == "connected",
        "account `{id}` is {}; only connected accounts can be refreshed",
        row.state
    );
    anyhow::ensure!(row.renewable, "account `{id}` has nothing to renew its token with; the user must reconnect it");
    // Due now, so the worker's scheduled refresh does not skip it as fresh; claimed so a
    // scheduler does not publish a second job for it.
    let id = &crate::ids::AccountId::from(id);
    schedule::claim_now(db, id, &schedule::new_claim_id()).await?;
    if inline {
        let cancel = CancellationToken::new();
        let state = AppState::new(config.clone(), cancel.clone())?;
        let integration = integrations::by_id(db, state.keyring(), &row.integration_id.clone().into())
            .await?
            .ok_or_else(|| anyhow::anyhow!("integration {} is gone", row.integration_id))?;
        let outcome = state.refresher.refresh(&integration, id, Reason::Scheduled).await?;
        schedule::unclaim(db, id).await?;
        cancel.cancel();
        match outcome {
            RefreshOutcome::Refreshed(a) => {
                println!(
                    "refreshed; expires at {}",
                    a.expires_at.map(crate::time::rfc3339).unwrap_or_else(|| "never".into())
                )
            }
            RefreshOutcome::AlreadyFresh(_) => println!("already fresh"),
            RefreshOutcome::NeedsReauthorization => {
                println!("the grant is revoked: the account now needs reauthorization")
            }
            RefreshOutcome::IntegrationInvalid => {
                println!("the provider refused the client credentials: integration marked invalid")
            }
            RefreshOutcome::Transient { reason, .. } => anyhow::bail!("transient failure ({reason}); try again later"),
            RefreshOutcome::NotConnected(_) => println!("the account is no longer connected"),
            RefreshOutcome::OtherIntegration => anyhow::bail!("the account belongs to another integration"),
        }
        return Ok(());
    }
    let cancel = CancellationToken::new();
    let broker = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        queues::connect_broker(&config.amqp_url, "pipes-cli", &cancel),
    )
    .await
    .ok()
    .flatten()
    .ok_or_else(|| anyhow::anyhow!("the message broker is unreachable; try --inline"))?;
    let topology = queues::topology(config);
    topology.declare(&broker.channel().await?).await?;
    let job = RefreshJob::for_account(row.auth_method, row.id.clone().into(), row.integration_id.clone().into());
    pipes_workers::Publisher::new(&broker)
        .publish(&topology.work_queue(REFRESH), &job, pipes_workers::Headers::new())
        .await?;
    println!("refresh job published for {}", row.id);
    Ok(())
}
