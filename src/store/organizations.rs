//! Organizations' configurations of a provider (organization-scoped providers): whether
//! it is enabled for the organization, the scopes its members are asked for, and, for an
//! integration with organization credentials, the organization's own OAuth app, which
//! every authorization, code exchange, refresh and revocation of its accounts uses.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, PgPool, Row};

use crate::crypto::{aad, CryptoError, KeyRing};
use crate::ids::IdKind;
use crate::keys::columns;
use crate::oauth::catalog::{CatalogError, ResolvedUrls};
use crate::oauth::client::OAuthClient;
use crate::store::accounts::{last_4, OwnClient};
use crate::store::integrations::{CredentialsType, Integration};

/// One organization's configuration of a provider.
#[derive(Debug, Clone)]
pub struct OrganizationConfiguration {
    pub organization_id: String,
    pub slug: String,
    /// `None`: the integration's.
    pub enabled: Option<bool>,
    /// `None`: the integration's.
    pub scopes: Option<Vec<String>>,
    /// The organization's own OAuth app (integrations with organization credentials).
    pub client: Option<OwnClient>,
    pub client_secret_last_4: Option<String>,
    pub config: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigurationError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("an organization's client secret does not seal or open: {0}")]
    Crypto(#[from] CryptoError),
    /// The integration uses each organization's app, and the account names none.
    #[error("`{slug}` connects through each organization's own OAuth app; name the organization")]
    NoOrganization { slug: String },
    /// The organization has not configured its app for the integration.
    #[error("the organization `{organization_id}` has not configured its OAuth app for `{slug}`")]
    NotConfigured { slug: String, organization_id: String },
    /// The provider needs a config value (its instance) that neither the organization nor
    /// the integration set.
    #[error("the organization `{organization_id}` has not configured `{param}` for `{slug}`")]
    MissingConfig { slug: String, organization_id: String, param: String },
    #[error("the provider's endpoints do not resolve: {0}")]
    Urls(String),
}

/// A write to an organization's configuration: `None` keeps a value; `scopes: Some(None)`
/// inherits the integration's again.
#[derive(Debug, Default)]
pub struct ConfigurationWrite {
    pub enabled: Option<bool>,
    pub scopes: Option<Option<Vec<String>>>,
    pub client: Option<OwnClient>,
    pub config: Option<BTreeMap<String, String>>,
}

const COLUMNS: &str = "id, organization_id, slug, enabled, scopes, client_id, client_secret_enc, client_secret_last_4,
    config, created_at, updated_at";

fn from_row(row: &PgRow, ring: &KeyRing) -> Result<OrganizationConfiguration, ConfigurationError> {
    let id: String = row.get("id");
    let secret: Option<Vec<u8>> = row.get("client_secret_enc");
    let secret = secret.map(|c| ring.open_string(&c, aad(columns::ORGANIZATION_CLIENT_SECRET, &id))).transpose()?;
    let client_id: Option<String> = row.get("client_id");
    let config: serde_json::Value = row.get("config");
    Ok(OrganizationConfiguration {
        organization_id: row.get("organization_id"),
        slug: row.get("slug"),
        enabled: row.get("enabled"),
        scopes: row.get("scopes"),
        client: client_id
            .zip(secret)
            .map(|(client_id, secret)| OwnClient { client_id, client_secret: crate::secret::Secret::new(secret) }),
        client_secret_last_4: row.get("client_secret_last_4"),
        config: serde_json::from_value(config).unwrap_or_default(),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}

/// The organization's configuration of `slug`, if it made one.
pub async fn get(
    db: impl PgExecutor<'_>,
    ring: &KeyRing,
    organization_id: &str,
    slug: &str,
) -> Result<Option<OrganizationConfiguration>, ConfigurationError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM organization_configurations WHERE organization_id = $1 AND slug = $2"
    )))
    .bind(organization_id)
    .bind(slug)
    .fetch_optional(db)
    .await?;
    row.map(|r| from_row(&r, ring)).transpose()
}

/// Every configuration the organization made, by slug.
pub async fn all(
    db: impl PgExecutor<'_>,
    ring: &KeyRing,
    organization_id: &str,
) -> Result<BTreeMap<String, OrganizationConfiguration>, ConfigurationError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM organization_configurations WHERE organization_id = $1"
    )))
    .bind(organization_id)
    .fetch_all(db)
    .await?;
    rows.iter().map(|r| from_row(r, ring).map(|c| (c.slug.clone(), c))).collect()
}

/// Creates or changes the organization's configuration of `slug`; its client secret is
/// sealed to the row.
pub async fn upsert(
    db: &PgPool,
    ring: &KeyRing,
    organization_id: &str,
    slug: &str,
    write: &ConfigurationWrite,
) -> Result<OrganizationConfiguration, ConfigurationError> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO organization_configurations (id, organization_id, slug) VALUES ($1, $2, $3)
         ON CONFLICT (organization_id, slug) DO NOTHING",
    )
    .bind(IdKind::OrganizationConfiguration.new_id())
    .bind(organization_id)
    .bind(slug)
    .execute(&mut *tx)
    .await?;
    let id: String = sqlx::query_scalar(
        "SELECT id FROM organization_configurations WHERE organization_id = $1 AND slug = $2 FOR UPDATE",
    )
    .bind(organization_id)
    .bind(slug)
    .fetch_one(&mut *tx)
    .await?;
    let sealed = write
        .client
        .as_ref()
        .map(|c| ring.seal_str(c.client_secret.expose(), aad(columns::ORGANIZATION_CLIENT_SECRET, &id)))
        .transpose()?;
    let (set_scopes, scopes) = match &write.scopes {
        None => (false, None),
        Some(scopes) => (true, scopes.clone()),
    };
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE organization_configurations SET
           enabled = COALESCE($2, enabled),
           scopes = CASE WHEN $3 THEN $4 ELSE scopes END,
           client_id = CASE WHEN $5 THEN $6 ELSE client_id END,
           client_secret_enc = CASE WHEN $5 THEN $7 ELSE client_secret_enc END,
           client_secret_last_4 = CASE WHEN $5 THEN $8 ELSE client_secret_last_4 END,
           config = COALESCE($9, config), updated_at = now()
         WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(&id)
    .bind(write.enabled)
    .bind(set_scopes)
    .bind(scopes)
    .bind(write.client.is_some())
    .bind(write.client.as_ref().map(|c| c.client_id.as_str()))
    .bind(sealed)
    .bind(write.client.as_ref().and_then(|c| last_4(c.client_secret.expose())))
    .bind(write.config.as_ref().map(|c| serde_json::to_value(c).unwrap_or_default()))
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    from_row(&row, ring)
}

/// Drops every organization's configuration of `slug` once no integration root of it is left.
pub async fn forget_unused(db: impl PgExecutor<'_>, slug: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM organization_configurations WHERE slug = $1
           AND NOT EXISTS (SELECT 1 FROM integrations WHERE slug = $1)",
    )
    .bind(slug)
    .execute(db)
    .await?;
    Ok(())
}

/// The provider config values for an organization's accounts: its own `config` over the
/// integration's.
pub fn config_over(integration: &Integration, config: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut values = integration.settings.clone();
    values.extend(config.clone());
    values
}

/// Whether members of an organization with configuration `configured` may connect
/// accounts of `integration`: an organization can switch a provider off for itself, not
/// on where the application switched it off.
pub fn enabled_for(integration: &Integration, configured: Option<&OrganizationConfiguration>) -> bool {
    integration.enabled && configured.and_then(|c| c.enabled) != Some(false)
}

/// The OAuth app that authenticates requests for an account of `integration`.
#[derive(Debug, Clone)]
pub enum App {
    /// The integration's own.
    Integration,
    /// The account's organization's, with the endpoints its config values resolve to
    /// when it sets any (its own Zendesk subdomain, Okta domain, …).
    Organization { client: OwnClient, urls: Option<Box<ResolvedUrls>> },
}

impl App {
    pub fn client<'a>(&'a self, integration: &'a Integration) -> OAuthClient<'a> {
        match self {
            App::Integration => OAuthClient::of_integration(integration),
            App::Organization { client, urls } => {
                OAuthClient { urls: urls.as_deref(), ..OAuthClient::of_account(client) }
            }
        }
    }
}

/// The app for an account of `integration` in `organization_id`: the integration's own,
/// or (organization credentials) the organization's, which must be configured.
pub async fn app_for(
    db: impl PgExecutor<'_>,
    ring: &KeyRing,
    integration: &Integration,
    organization_id: Option<&str>,
) -> Result<App, ConfigurationError> {
    match (integration.credentials_type, organization_id) {
        (CredentialsType::Custom, _) => Ok(App::Integration),
        (CredentialsType::Organization, None) => {
            Err(ConfigurationError::NoOrganization { slug: integration.slug.clone() })
        }
        (CredentialsType::Organization, Some(org)) => {
            app_of(integration, org, get(db, ring, org, &integration.slug).await?.as_ref())
        }
    }
}

/// [`app_for`] with the organization's configuration already read.
pub fn app_of(
    integration: &Integration,
    organization_id: &str,
    configured: Option<&OrganizationConfiguration>,
) -> Result<App, ConfigurationError> {
    if integration.credentials_type != CredentialsType::Organization {
        return Ok(App::Integration);
    }
    let not_configured = || ConfigurationError::NotConfigured {
        slug: integration.slug.clone(),
        organization_id: organization_id.to_owned(),
    };
    let configured = configured.ok_or_else(not_configured)?;
    let client = configured.client.clone().ok_or_else(not_configured)?;
    let spec = integration.spec().map_err(|e| ConfigurationError::Urls(e.to_string()))?;
    let urls = if spec.config_params.is_empty() {
        None
    } else {
        Some(Box::new(spec.resolve_urls(&config_over(integration, &configured.config)).map_err(|e| match e {
            CatalogError::MissingParam { param, .. } => ConfigurationError::MissingConfig {
                slug: integration.slug.clone(),
                organization_id: organization_id.to_owned(),
                param,
            },
            other => ConfigurationError::Urls(other.to_string()),
        })?))
    };
    Ok(App::Organization { client, urls })
}
