//! Bulk import of connected accounts from another system (`pipes import FILE`):
//! one JSON object per line: OAuth tokens, an API key, or a client id and secret, as
//! the integration takes them (keys and clients are checked with the provider first). Each line is validated; a bad line is reported
//! with its number and skipped, the rest are stored (and cached), so a rerun
//! of the same file is harmless.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::auth_method::AuthMethod;
use crate::connect::direct::{self, DirectError, Placement};
use crate::connections::{Announce, TokenWrite};
use crate::owner::Ownership;
use crate::secret::Secret;
use crate::state::AppState;
use crate::store::accounts::{AccountState, Credential, Labels, OwnClient, TokenSet, WriteMode};
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
    /// OAuth integrations: the tokens.
    #[serde(default)]
    pub access_token: Option<Secret>,
    #[serde(default)]
    pub refresh_token: Option<Secret>,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// API-key integrations: the key, checked with the provider as a connect is.
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// Client-credentials integrations: the client, which gets its first token now.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<Secret>,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// What a line holds for its integration's auth method.
enum Given {
    Tokens(TokenSet),
    Key(Secret),
    Client(OwnClient, BTreeMap<String, String>),
}

impl ImportLine {
    /// The credential the line gives, if it fits `method`; else what is wrong (never a value).
    fn given(self, method: AuthMethod) -> Result<Given, String> {
        let oauth = self.access_token.is_some() || self.refresh_token.is_some() || self.expires_at.is_some();
        let client = self.client_id.is_some() || self.client_secret.is_some() || !self.config.is_empty();
        match method {
            AuthMethod::OAuth if self.api_key.is_some() || client => {
                Err("an OAuth integration takes access_token (and refresh_token, expires_at), not api_key or client_*"
                    .into())
            }
            AuthMethod::OAuth => match self.access_token.filter(|t| !t.expose().is_empty()) {
                Some(access_token) => Ok(Given::Tokens(TokenSet {
                    access_token,
                    refresh_token: self.refresh_token,
                    expires_at: self.expires_at,
                    scopes: self.scopes,
                })),
                None => Err("access_token must not be empty".into()),
            },
            AuthMethod::ApiKey if oauth || client || !self.scopes.is_empty() => {
                Err("an API-key integration takes api_key only".into())
            }
            AuthMethod::ApiKey => match self.api_key.filter(|k| !k.expose().is_empty()) {
                Some(key) => Ok(Given::Key(key)),
                None => Err("api_key must not be empty".into()),
            },
            AuthMethod::ClientCredentials if oauth || self.api_key.is_some() || !self.scopes.is_empty() => {
                Err("a client-credentials integration takes client_id, client_secret and config only".into())
            }
            AuthMethod::ClientCredentials => match (self.client_id, self.client_secret) {
                (Some(client_id), Some(client_secret))
                    if !client_id.trim().is_empty() && !client_secret.expose().is_empty() =>
                {
                    Ok(Given::Client(OwnClient { client_id: client_id.trim().to_owned(), client_secret }, self.config))
                }
                _ => Err("client_id and client_secret must both be given".into()),
            },
        }
    }
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
        if parsed.user_id.trim().is_empty() {
            report.rejected.push((number, "user_id must not be empty".into()));
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
        let given = match parsed.given(integration.auth_method) {
            Ok(given) => given,
            Err(problem) => {
                report.rejected.push((number, problem));
                continue;
            }
        };
        let established_by = (owner.ownership() == Ownership::Organization).then_some(member.as_str());
        let placement = || Placement {
            owner: &owner,
            established_by,
            labels: Labels::default(),
            mode: WriteMode::Upsert,
            announce: Announce::Quietly,
        };
        let stored = match given {
            Given::Tokens(tokens) => {
                let write = TokenWrite {
                    credential: Credential::OAuth,
                    owner: &owner,
                    established_by,
                    labels: Labels::default(),
                    tokens: &tokens,
                    state: AccountState::Connected,
                    mode: WriteMode::Upsert,
                    announce: Announce::Quietly,
                };
                state.connections.store(integration, write).await?
            }
            Given::Key(key) => match direct::connect_api_key(state, integration, placement(), key).await {
                Ok(stored) => stored,
                Err(DirectError::Account(err)) => return Err(err.into()),
                Err(refused) => {
                    report.rejected.push((number, refused.to_string()));
                    continue;
                }
            },
            Given::Client(client, config) => {
                match direct::connect_client(state, integration, placement(), client, config).await {
                    Ok(stored) => stored,
                    Err(DirectError::Account(err)) => return Err(err.into()),
                    Err(refused) => {
                        report.rejected.push((number, refused.to_string()));
                        continue;
                    }
                }
            }
        };
        if stored.is_some() {
            report.imported += 1;
        }
    }
    Ok(report)
}
