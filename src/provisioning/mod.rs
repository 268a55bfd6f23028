//! Provisioning integrations (DESIGN §3.4): the create and update bodies as
//! the wire (and the official SDKs) send them, and their validation into an
//! [`IntegrationDraft`] ready to store. The admin API and `pipes integrations`
//! share it, so both refuse the same input with the same field errors.

mod checks;
pub mod store;

use std::collections::BTreeMap;

use secrecy::ExposeSecret;
use serde::{Deserialize, Deserializer};

use crate::error::FieldError;
use crate::oauth::catalog::{BodyContentType, Catalog, ClientAuth};
use crate::secret::Secret;
use crate::store::integrations::{CustomProvider, Integration};

use checks::Checker;

/// `credentials` of a create or update body.
#[derive(Debug, Default, Clone, Deserialize, utoipa::ToSchema)]
pub struct CredentialsInput {
    /// Only `custom` (the application's own OAuth client) is supported.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub client_secret: Option<Secret>,
}

/// `custom_provider` of a create or update body. On update, absent fields keep their value.
#[derive(Debug, Default, Clone, Deserialize, utoipa::ToSchema)]
pub struct CustomProviderInput {
    pub name: Option<String>,
    pub authorization_url: Option<String>,
    pub token_url: Option<String>,
    pub refresh_token_url: Option<String>,
    /// An RFC 7009 endpoint; tokens are revoked there on disconnect.
    pub revocation_url: Option<String>,
    /// Default `true`.
    pub pkce_enabled: Option<bool>,
    /// `" "` (default), `","` or `"+"`.
    pub request_scope_separator: Option<String>,
    pub scopes_required: Option<bool>,
    /// Default `true`.
    pub client_secret_required: Option<bool>,
    pub additional_authorization_parameters: Option<BTreeMap<String, String>>,
    /// `form` (default, also `application/x-www-form-urlencoded`) or `json` (also `application/json`).
    pub token_body_content_type: Option<String>,
    /// `request_body` (default) or `basic_auth_header`.
    pub authenticate_via: Option<String>,
}

/// `POST /data-integrations`.
#[derive(Debug, Default, Clone, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"provider": "asana", "description": "Tasks", "scopes": ["default"],
    "credentials": {"type": "custom", "client_id": "client-id", "client_secret": "client-secret"}}))]
pub struct CreateIntegration {
    /// A catalog slug (`github`), or the slug of a new custom provider (then `custom_provider` is required).
    pub provider: Option<String>,
    pub description: Option<String>,
    /// Default `true`.
    pub enabled: Option<bool>,
    /// Default: the catalog provider's default scopes (none for a custom provider).
    pub scopes: Option<Vec<String>>,
    pub credentials: Option<CredentialsInput>,
    pub custom_provider: Option<CustomProviderInput>,
    /// Values of the catalog provider's `config_params` (Zendesk `subdomain`, Shopify `shop`,
    /// Microsoft `tenant`); every one is required. Custom providers take none.
    pub config: Option<BTreeMap<String, String>>,
    /// Only `["oauth"]`.
    pub auth_methods: Option<Vec<String>>,
    /// Only `user`.
    pub ownership: Option<String>,
}

/// `PUT /data-integrations/{slug}`: absent fields keep their value.
#[derive(Debug, Default, Clone, Deserialize, utoipa::ToSchema)]
pub struct UpdateIntegration {
    pub description: Option<String>,
    pub enabled: Option<bool>,
    /// `null` resets to the provider's default scopes.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub scopes: Option<Option<Vec<String>>>,
    /// Replaces the client id and/or rotates the client secret; the integration becomes `valid` again.
    pub credentials: Option<CredentialsInput>,
    pub custom_provider: Option<CustomProviderInput>,
    pub config: Option<BTreeMap<String, String>>,
}

/// Tells an explicit `null` (Some(None)) from an absent field (None).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A validated integration, ready to insert or to replace a stored one.
#[derive(Debug, Clone)]
pub struct IntegrationDraft {
    pub slug: String,
    /// The catalog slug, or `slug` for a custom provider.
    pub provider: String,
    pub description: String,
    pub enabled: bool,
    pub scopes: Vec<String>,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub custom_provider: Option<CustomProvider>,
    pub settings: BTreeMap<String, String>,
    /// The client credentials changed (an `invalid` integration becomes `valid` again).
    pub credentials_changed: bool,
}

/// What `redacted_client_secret` shows: the last four characters of a long secret, nothing of a short one.
pub fn redact(secret: Option<&str>) -> String {
    match secret {
        None => String::new(),
        Some(s) => {
            let chars: Vec<char> = s.chars().collect();
            if chars.len() < 12 {
                "****".to_owned()
            } else {
                let tail: String = chars[chars.len() - 4..].iter().collect();
                format!("{}{tail}", "*".repeat(8))
            }
        }
    }
}

/// Validates a create body.
pub fn validate_create(input: CreateIntegration) -> Result<IntegrationDraft, Vec<FieldError>> {
    let mut c = Checker::default();
    let slug = c.slug("provider", input.provider.as_deref());
    c.only("auth_methods", input.auth_methods.as_deref(), "oauth");
    if let Some(ownership) = input.ownership.as_deref() {
        if ownership != "user" {
            c.push("ownership", "unsupported", "Only `user` ownership is supported.");
        }
    }
    let catalog = slug.as_deref().and_then(|s| Catalog::builtin().get(s));
    let custom = match (&input.custom_provider, catalog, &slug) {
        (Some(_), Some(_), _) => {
            c.push(
                "custom_provider",
                "not_allowed",
                "This slug is a catalog provider; omit custom_provider (or pick another slug).",
            );
            None
        }
        (None, None, Some(_)) => {
            c.push(
                "custom_provider",
                "required",
                "This slug is not in the catalog; describe the provider in custom_provider.",
            );
            None
        }
        (Some(cp), None, _) => c.custom_provider(cp, None),
        _ => None,
    };
    let (client_id, client_secret) = match &input.credentials {
        Some(credentials) => c.credentials(credentials, None),
        None => {
            c.push("credentials", "required", "credentials with client_id and client_secret are required.");
            (None, None)
        }
    };
    let mut draft = IntegrationDraft {
        provider: catalog.map(|s| s.slug.clone()).or_else(|| slug.clone()).unwrap_or_default(),
        slug: slug.unwrap_or_default(),
        description: input.description.unwrap_or_default(),
        enabled: input.enabled.unwrap_or(true),
        scopes: match input.scopes {
            Some(scopes) => scopes,
            None => catalog.map(|s| s.default_scopes.clone()).unwrap_or_default(),
        },
        client_id: client_id.unwrap_or_default(),
        client_secret,
        custom_provider: custom,
        settings: input.config.unwrap_or_default(),
        credentials_changed: true,
    };
    let provider_known = catalog.is_some() || draft.custom_provider.is_some();
    c.draft(&mut draft, provider_known);
    c.finish(draft)
}

/// Validates an update body against the stored integration.
pub fn validate_update(existing: &Integration, input: UpdateIntegration) -> Result<IntegrationDraft, Vec<FieldError>> {
    let mut c = Checker::default();
    let catalog = if existing.custom_provider.is_none() { Catalog::builtin().get(&existing.provider) } else { None };
    let custom = match (&input.custom_provider, &existing.custom_provider) {
        (Some(_), None) => {
            c.push(
                "custom_provider",
                "not_allowed",
                "This integration uses a catalog provider; it has no custom_provider.",
            );
            None
        }
        (Some(cp), Some(current)) => c.custom_provider(cp, Some(current)),
        (None, current) => current.clone(),
    };
    let current_secret = existing.client_secret.as_ref().map(|s| Secret::new(s.expose_secret().to_owned()));
    let (client_id, client_secret, credentials_changed) = match &input.credentials {
        None => (Some(existing.client_id.clone()), current_secret, false),
        Some(creds) => {
            let (id, secret) = c.credentials(creds, Some((&existing.client_id, current_secret.as_ref())));
            (id, secret, true)
        }
    };
    let mut draft = IntegrationDraft {
        slug: existing.slug.clone(),
        provider: existing.provider.clone(),
        description: input.description.unwrap_or_else(|| existing.description.clone()),
        enabled: input.enabled.unwrap_or(existing.enabled),
        scopes: match input.scopes {
            None => existing.scopes.clone(),
            Some(Some(scopes)) => scopes,
            Some(None) => catalog.map(|s| s.default_scopes.clone()).unwrap_or_default(),
        },
        client_id: client_id.unwrap_or_default(),
        client_secret,
        custom_provider: custom,
        settings: input.config.unwrap_or_else(|| existing.settings.clone()),
        credentials_changed,
    };
    c.draft(&mut draft, true);
    c.finish(draft)
}

/// Parses `token_body_content_type` in either spelling.
pub fn parse_content_type(value: &str) -> Option<BodyContentType> {
    match value.trim().to_ascii_lowercase().as_str() {
        "form" | "application/x-www-form-urlencoded" => Some(BodyContentType::Form),
        "json" | "application/json" => Some(BodyContentType::Json),
        _ => None,
    }
}

pub fn parse_client_auth(value: &str) -> Option<ClientAuth> {
    match value {
        "request_body" => Some(ClientAuth::RequestBody),
        "basic_auth_header" => Some(ClientAuth::BasicAuthHeader),
        _ => None,
    }
}
