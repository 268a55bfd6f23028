//! Integrations: a provider (from the catalog, or custom) with the
//! application's OAuth client credentials and the scopes it asks for.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, Row};
use url::Url;

use crate::auth_method::AuthMethod;
use crate::crypto::{aad, KeyRing};
use crate::ids::IntegrationId;
use crate::keys::columns;
use crate::oauth::catalog::{
    ApiKeySpec, BodyContentType, Catalog, ClientAuth, OAuthSpec, ProviderSpec, ResolvedUrls, TokenResponseShape,
};
use crate::owner::Ownership;

mod write;
pub use write::{account_counts, all, delete, insert, list_page, update, Cursor, Order, ProvisionError};

/// A provider that is not in the catalog, described by the integration itself
/// (the wire shape of DESIGN §3.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomProvider {
    pub name: String,
    pub authorization_url: String,
    pub token_url: String,
    #[serde(default)]
    pub refresh_token_url: Option<String>,
    #[serde(default)]
    pub revocation_url: Option<String>,
    #[serde(default)]
    pub pkce_enabled: bool,
    /// `" "`, `","` or `"+"`.
    #[serde(default = "space")]
    pub request_scope_separator: String,
    #[serde(default)]
    pub scopes_required: bool,
    #[serde(default = "yes")]
    pub client_secret_required: bool,
    #[serde(default)]
    pub additional_authorization_parameters: BTreeMap<String, String>,
    /// `form` (application/x-www-form-urlencoded) or `json`.
    #[serde(default = "form")]
    pub token_body_content_type: BodyContentType,
    /// `request_body` or `basic_auth_header`.
    #[serde(default = "body")]
    pub authenticate_via: ClientAuth,
    /// Where an `api_key` integration's keys go. Such a provider has no OAuth endpoints
    /// (`authorization_url` and `token_url` are empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeySpec>,
    /// The base of the provider's REST API: the relay calls its host, and paths under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_base_url: Option<String>,
}

fn space() -> String {
    " ".to_owned()
}
fn yes() -> bool {
    true
}
fn form() -> BodyContentType {
    BodyContentType::Form
}
fn body() -> ClientAuth {
    ClientAuth::RequestBody
}

/// Whose OAuth app the integration's accounts use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialsType {
    /// The integration's own (the application's).
    Custom,
    /// Each organization's own, configured by the organization (organization-scoped providers).
    Organization,
}

impl CredentialsType {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialsType::Custom => "custom",
            CredentialsType::Organization => "organization",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IntegrationState {
    Valid,
    Invalid,
}

/// One integration with its secret decrypted. `Debug` never shows the secret.
#[derive(Debug, Clone)]
pub struct Integration {
    pub id: IntegrationId,
    pub slug: String,
    /// The catalog slug, or the integration's own slug for a custom provider.
    pub provider: String,
    /// Who owns its accounts: users, or organizations (shared accounts). A provider may
    /// have one root of each kind under the same slug.
    pub ownership: Ownership,
    /// How its accounts authenticate, fixed at creation.
    pub auth_method: AuthMethod,
    /// Whose OAuth app its accounts use (OAuth integrations).
    pub credentials_type: CredentialsType,
    pub description: String,
    pub enabled: bool,
    /// Whether an owner may connect accounts beside the first (`connection_intent: add`).
    pub multiple_connections: bool,
    pub state: IntegrationState,
    pub state_reason: Option<String>,
    pub scopes: Vec<String>,
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub redacted_secret: String,
    pub custom_provider: Option<CustomProvider>,
    /// Values of the catalog entry's `{placeholders}` (Zendesk subdomain, Shopify shop, …).
    pub settings: BTreeMap<String, String>,
    /// Scopes an organization asks its members for instead of `scopes`, by organization id.
    pub organization_scopes: BTreeMap<String, Vec<String>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// What [`Integration::spec`] and [`Integration::urls`] derive from the fields above,
    /// worked out on first use and shared by the clones: every refresh asks for both, and
    /// a custom provider's spec is built, and its URLs parsed, from text. An integration
    /// is never edited in place (a change is a write and a reload), so they stay right.
    derived: Arc<Derived>,
}

#[derive(Debug, Default)]
struct Derived {
    spec: OnceLock<Arc<ProviderSpec>>,
    urls: OnceLock<ResolvedUrls>,
}

#[derive(Debug, thiserror::Error)]
pub enum IntegrationError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("integration {id}: the client secret does not decrypt: {source}")]
    Secret {
        id: String,
        #[source]
        source: crate::crypto::CryptoError,
    },
    #[error("integration {0}: its provider is not in the catalog and it has no custom_provider")]
    UnknownProvider(String),
    #[error("integration {slug}: {message}")]
    Urls { slug: String, message: String },
}

/// The columns an [`Integration`] is read from, for `SELECT` and `RETURNING`; the last
/// gathers the organizations' scope overrides (`organization_configurations`).
macro_rules! columns {
    () => {
        "id, slug, provider, ownership, auth_method, credentials_type, description, enabled, multiple_connections, state, state_reason, scopes, client_id,
    client_secret_enc, redacted_secret, custom_provider, settings, created_at, updated_at,
    (SELECT COALESCE(jsonb_object_agg(oc.organization_id, to_jsonb(oc.scopes)), '{}'::jsonb) FROM organization_configurations oc
      WHERE oc.slug = integrations.slug AND oc.scopes IS NOT NULL) AS organization_scopes"
    };
}
pub const COLUMNS: &str = columns!();
pub const SELECT: &str = concat!("SELECT ", columns!(), " FROM integrations");

impl Integration {
    pub fn from_row(row: &PgRow, ring: &KeyRing) -> Result<Self, IntegrationError> {
        let id: String = row.get("id");
        let secret: Option<Vec<u8>> = row.get("client_secret_enc");
        let client_secret = secret
            .map(|c| ring.open_string(&c, aad(columns::CLIENT_SECRET, &id)))
            .transpose()
            .map_err(|source| IntegrationError::Secret { id: id.clone(), source })?
            .map(SecretString::from);
        let custom: Option<serde_json::Value> = row.get("custom_provider");
        let settings: serde_json::Value = row.get("settings");
        Ok(Integration {
            slug: row.get("slug"),
            provider: row.get("provider"),
            ownership: Ownership::parse(row.get("ownership")).unwrap_or(Ownership::User),
            auth_method: AuthMethod::parse(row.get("auth_method")).unwrap_or(AuthMethod::OAuth),
            credentials_type: if row.get::<&str, _>("credentials_type") == "organization" {
                CredentialsType::Organization
            } else {
                CredentialsType::Custom
            },
            description: row.get("description"),
            enabled: row.get("enabled"),
            multiple_connections: row.get("multiple_connections"),
            state: if row.get::<&str, _>("state") == "invalid" {
                IntegrationState::Invalid
            } else {
                IntegrationState::Valid
            },
            state_reason: row.get("state_reason"),
            scopes: row.get("scopes"),
            client_id: row.get("client_id"),
            client_secret,
            redacted_secret: row.get("redacted_secret"),
            custom_provider: custom.and_then(|v| serde_json::from_value(v).ok()),
            settings: serde_json::from_value(settings).unwrap_or_default(),
            organization_scopes: serde_json::from_value(row.get("organization_scopes")).unwrap_or_default(),
            created_at: row.get("created_at"),
            updated_at: row.get("updated_at"),
            derived: Arc::default(),
            id: id.into(),
        })
    }

    /// The provider's behaviour: the catalog entry, or one made from `custom_provider`.
    pub fn spec(&self) -> Result<Arc<ProviderSpec>, IntegrationError> {
        if let Some(spec) = self.derived.spec.get() {
            return Ok(spec.clone());
        }
        let spec = match &self.custom_provider {
            Some(custom) => custom_spec(&self.slug, custom),
            None => Catalog::builtin()
                .get(&self.provider)
                .cloned()
                .ok_or_else(|| IntegrationError::UnknownProvider(self.slug.clone()))?,
        };
        Ok(self.derived.spec.get_or_init(|| Arc::new(spec)).clone())
    }

    /// The provider's endpoints, placeholders filled from the integration's settings.
    pub fn urls(&self) -> Result<&ResolvedUrls, IntegrationError> {
        if let Some(urls) = self.derived.urls.get() {
            return Ok(urls);
        }
        let urls_error = |message: String| IntegrationError::Urls { slug: self.slug.clone(), message };
        let urls = match &self.custom_provider {
            Some(c) => {
                let parse = |s: &str| Url::parse(s).map_err(|e| urls_error(format!("{s}: {e}")));
                let token_url = parse(&c.token_url)?;
                ResolvedUrls {
                    // A client-credentials provider may have none; no flow ever sends a user there.
                    authorization_url: if c.authorization_url.is_empty() {
                        token_url.clone()
                    } else {
                        parse(&c.authorization_url)?
                    },
                    refresh_token_url: match &c.refresh_token_url {
                        Some(u) => parse(u)?,
                        None => token_url.clone(),
                    },
                    token_url,
                    revocation_url: c.revocation_url.as_deref().map(parse).transpose()?,
                    userinfo_url: None,
                }
            }
            None => self.spec()?.resolve_urls(&self.settings).map_err(|e| urls_error(e.to_string()))?,
        };
        Ok(self.derived.urls.get_or_init(|| urls))
    }

    /// The base of the provider's REST API, if it has one: the custom provider's (checked
    /// when saved), or the catalog's with the integration's config filled in.
    pub fn api_base(&self) -> Result<Option<Url>, IntegrationError> {
        let urls_error = |message: String| IntegrationError::Urls { slug: self.slug.clone(), message };
        match &self.custom_provider {
            Some(c) => c
                .api_base_url
                .as_deref()
                .map(|u| Url::parse(u).map_err(|e| urls_error(format!("{u}: {e}"))))
                .transpose(),
            None => self.spec()?.api_base(&self.settings).map_err(|e| urls_error(e.to_string())),
        }
    }

    /// The hosts the relay may call: the API base URL's, and the catalog's `api_hosts`.
    pub fn api_hosts(&self) -> Result<Vec<String>, IntegrationError> {
        let mut hosts: Vec<String> =
            self.api_base()?.and_then(|u| u.host_str().map(str::to_ascii_lowercase)).into_iter().collect();
        hosts.extend(self.spec()?.api_hosts.iter().map(|h| h.to_ascii_lowercase()));
        Ok(hosts)
    }

    /// The scopes members of `organization_id` are asked for: the organization's
    /// override, else the integration's.
    pub fn scopes_for(&self, organization_id: Option<&str>) -> &[String] {
        organization_id.and_then(|org| self.organization_scopes.get(org)).unwrap_or(&self.scopes)
    }

    /// Scopes asked of an account in `organization_id` that `granted` lacks.
    pub fn missing_scopes(&self, organization_id: Option<&str>, granted: &[String]) -> Vec<String> {
        self.scopes_for(organization_id).iter().filter(|s| !granted.contains(s)).cloned().collect()
    }

    /// Display name (catalog name or custom provider name).
    pub fn display_name(&self) -> String {
        self.spec().map(|s| s.name.clone()).unwrap_or_else(|_| self.slug.clone())
    }
}

/// A `ProviderSpec` for a custom provider: standard responses, `invalid_grant` only.
pub fn custom_spec(slug: &str, c: &CustomProvider) -> ProviderSpec {
    ProviderSpec {
        slug: slug.to_owned(),
        name: c.name.clone(),
        description: String::new(),
        logo_color: "#6B7280".to_owned(),
        categories: Vec::new(),
        aliases: Vec::new(),
        sources: Vec::new(),
        docs_url: String::new(),
        setup_steps: Vec::new(),
        api_base_url: c.api_base_url.clone(),
        api_hosts: Vec::new(),
        params: BTreeMap::new(),
        config_params: Vec::new(),
        // A custom provider of API keys has no OAuth endpoints.
        oauth: c.api_key.is_none().then(|| OAuthSpec {
            authorization_url: c.authorization_url.clone(),
            token_url: c.token_url.clone(),
            refresh_token_url: c.refresh_token_url.clone(),
            revocation_url: c.revocation_url.clone(),
            userinfo_url: None,
            scope_separator: c.request_scope_separator.clone(),
            scope_param: "scope".to_owned(),
            scopes_configured_at_provider: false,
            default_scopes: Vec::new(),
            scope_sets: BTreeMap::new(),
            scope_descriptions: BTreeMap::new(),
            authorization_params: c.additional_authorization_parameters.clone(),
            token_params: BTreeMap::new(),
            client_auth: c.authenticate_via,
            token_body_content_type: c.token_body_content_type,
            pkce: c.pkce_enabled,
            token_response: TokenResponseShape::Standard,
            token_path: None,
            expires_in_as_string: false,
            tokens_expire: true,
            refresh_token_rotation: false,
            invalid_grant_errors: vec!["invalid_grant".to_owned()],
            invalid_client_errors: Vec::new(),
            account_identifier: None,
            account_display_name: None,
        }),
        api_key: c.api_key.clone(),
    }
}

/// The integration root `slug` whose accounts are owned as `ownership` says.
#[tracing::instrument(level = "debug", skip_all, fields(slug = %slug))]
pub async fn by_slug(
    db: impl PgExecutor<'_>,
    ring: &KeyRing,
    slug: &str,
    ownership: Ownership,
) -> Result<Option<Integration>, IntegrationError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("{SELECT} WHERE slug = $1 AND ownership = $2")))
        .bind(slug)
        .bind(ownership.as_str())
        .fetch_optional(db)
        .await?;
    row.map(|r| Integration::from_row(&r, ring)).transpose()
}

#[tracing::instrument(level = "debug", skip_all, fields(integration_id = %id))]
pub async fn by_id(
    db: impl PgExecutor<'_>,
    ring: &KeyRing,
    id: &IntegrationId,
) -> Result<Option<Integration>, IntegrationError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("{SELECT} WHERE id = $1"))).bind(id).fetch_optional(db).await?;
    row.map(|r| Integration::from_row(&r, ring)).transpose()
}

/// Marks the integration's credentials as refused by the provider (DESIGN §2.4).
#[tracing::instrument(level = "debug", skip_all, fields(integration_id = %id))]
pub async fn mark_invalid(db: impl PgExecutor<'_>, id: &str, reason: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE integrations SET state = 'invalid', state_reason = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(reason)
        .execute(db)
        .await?;
    Ok(())
}
