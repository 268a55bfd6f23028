//! Bulk import of connected accounts from another system (`pipes import FILE`):
//! one JSON object per line. Each line is validated; a bad line is reported
//! with its number and skipped, the rest are stored (and cached), so a rerun
//! of the same file is harmless.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::connections::{Announce, TokenWrite};
use crate::owner::Ownership;
use crate::secret::Secret;
use crate::state::AppState;
use crate::store::accounts::{AccountState, Credential, Labels, TokenSet, WriteMode};
use crate::store::integrations::{self, Integration};

/// One line of the import file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportLine {
    /// The integration's slug.
    pub integration: String,
    /// The owning user; for an organization's account, the member it is imported on behalf of.
    pub user_id: String,
    #[serde(default)]
    pub organization_id: Option<String>,
    /// `user` (default) or `organization`: the organization's shared account, of the
    /// provider's organization-owned integration (needs `organization_id`).
    #[serde(default)]
    pub connection_owner: Option<String>,
    pub access_token: Secret,
    #[serde(default)]
    pub refresh_token: Option<Secret>,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub imported: u64,
    /// `(line number, what was wrong)`; never a token.
    pub rejected: Vec<(usize, String)>,
}

/// Imports every line; `progress` is called once per line.
pub async fn import_lines(state: &AppState, text: &str, mut progress: impl FnMut()) -> anyhow::Result<ImportReport> {
    let mut report = ImportReport::default();
    let mut integrations: std::collections::HashMap<(String, Ownership), Option<Integration>> = Default::default();
    for (index, line) in text.lines().enumerate() {
        progress();
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: ImportLine = match serde_json::from_str(line) {
            Ok(p) => p,
            Err(e) => {
                // serde's message names the field and position, never the value of a token.
                report.rejected.push((
                    number,
                    format!("not a valid account: {}", e.to_string().split(" at line").next().unwrap_or("invalid")),
                ));
                continue;
            }
        };
        if parsed.user_id.trim().is_empty() || parsed.access_token.expose().is_empty() {
            report.rejected.push((number, "user_id and access_token must not be empty".into()));
            continue;
        }
        let org = parsed.organization_id.clone().filter(|o| !o.is_empty());
        let mut problems = Vec::new();
        let member = parsed.user_id.clone();
        let owner = crate::owner::requested(parsed.connection_owner.as_deref(), member.clone(), org, &mut problems);
        if let Some(problem) = problems.first() {
            report.rejected.push((number, problem.message.clone().unwrap_or_else(|| problem.field.clone())));
            continue;
        }
        let key = (parsed.integration.clone(), owner.ownership());
        if !integrations.contains_key(&key) {
            let found = integrations::by_slug(&state.db, state.keyring(), &key.0, key.1).await?;
            integrations.insert(key.clone(), found);
        }
        let Some(Some(integration)) = integrations.get(&key) else {
            let kind = if key.1 == Ownership::Organization { "organization-owned " } else { "" };
            report.rejected.push((number, format!("no {kind}integration `{}`", parsed.integration)));
            continue;
        };
        let tokens = TokenSet {
            access_token: parsed.access_token,
            refresh_token: parsed.refresh_token,
            expires_at: parsed.expires_at,
            scopes: parsed.scopes,
        };
        let write = TokenWrite {
            credential: Credential::OAuth,
            owner: &owner,
            established_by: (owner.ownership() == Ownership::Organization).then_some(member.as_str()),
            labels: Labels::default(),
            tokens: &tokens,
            state: AccountState::Connected,
            mode: WriteMode::Upsert,
            announce: Announce::Quietly,
        };
        let stored = state.connections.store(integration, write).await?;
        if stored.is_some() {
            report.imported += 1;
        }
    }
    Ok(report)
}
