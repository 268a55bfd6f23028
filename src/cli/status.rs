//! `pipes status [--json]`.

use crate::config::Config;
use crate::status::{self, Status};

pub async fn run(config: &Config, json: bool) -> anyhow::Result<()> {
    let db = crate::db::pool(&config.database_url, 2)?;
    let status = status::gather(&db, config, crate::time::now()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(())
}

/// The one-screen text view.
pub fn render(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "Pipes status at {}", s.generated_at);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<24} {:<16} {:<18} {:<8} {:>10} {:>10} {:>9}",
        "INTEGRATION", "PROVIDER", "AUTH", "STATE", "CONNECTED", "REAUTH", "FAILING"
    );
    for i in &s.integrations {
        let state = if !i.enabled { "disabled" } else { i.state.as_str() };
        // An organization-owned integration shares its provider's slug.
        let name = if i.ownership == "organization" { format!("{} (org)", i.slug) } else { i.slug.clone() };
        let _ = writeln!(
            out,
            "{:<24} {:<16} {:<18} {:<8} {:>10} {:>10} {:>9}",
            name,
            i.provider,
            i.auth_method,
            state,
            i.accounts.connected,
            i.accounts.needs_reauthorization,
            i.accounts_with_refresh_failures
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "accounts: {} connected, {} need reauthorization",
        s.accounts.connected, s.accounts.needs_reauthorization
    );
    let _ = writeln!(out, "due: {} now, {} in the next 10 minutes", s.due.now, s.due.next_10_minutes);
    match &s.due.oldest_overdue {
        Some(o) => {
            let _ = writeln!(
                out,
                "oldest overdue: {} ({}) due {} ({} s ago)",
                o.account_id, o.integration, o.refresh_at, o.overdue_seconds
            );
        }
        None => {
            let _ = writeln!(out, "oldest overdue: none");
        }
    }
    match (&s.queues.depths, &s.queues.error) {
        (Some(depths), _) => {
            let _ = writeln!(out, "queues ({} dead letters):", s.queues.dead_letters.unwrap_or(0));
            for q in depths {
                let _ = writeln!(out, "  {:<48} {:>8}", q.name, q.messages);
            }
        }
        (None, Some(err)) => {
            let _ = writeln!(out, "queues: unknown ({err})");
        }
        (None, None) => {}
    }
    let _ = writeln!(
        out,
        "webhooks: {} failed and {} delivered in 24 h, {} pending",
        s.webhooks.failed_last_24h, s.webhooks.delivered_last_24h, s.webhooks.pending
    );
    let invalid = if s.invalid_integrations.is_empty() { "none".to_owned() } else { s.invalid_integrations.join(", ") };
    let _ = writeln!(out, "invalid integrations: {invalid}");
    let _ = writeln!(out, "roles seen:");
    if s.roles.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for r in &s.roles {
        let _ = writeln!(
            out,
            "  {:<10} {:<32} last seen {} {}",
            r.role,
            r.instance,
            r.last_seen,
            if r.alive { "alive" } else { "SILENT" }
        );
    }
    out
}
