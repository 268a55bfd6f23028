//! Provisioning integrations (DESIGN §3.4): the create and update bodies as
//! the wire (and the official SDKs) send them, and their validation into an
//! [`IntegrationDraft`] ready to store. The admin API and `pipes integrations`
//! share it, so both refuse the same input with the same field errors.

mod checks;

use std::collections::BTreeMap;

use secrecy::ExposeSecret;
use serde::{Deserialize, Deserializer};

use crate::auth_method::AuthMethod;
use crate::invalid::FieldError;
use crate::oauth::catalog::{BodyContentType, Catalog, ClientAuth};
use crate::outbound;
use crate::owner::Ownership;
use crate::secret::Secret;
use crate::store::integrations::{CredentialsType, CustomProvider, Integration};

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
    /// Pipes' own: the base of the provider's REST API, which the relay calls (its host
    /// only, and paths under it). An empty string clears it.
    pub api_base_url: Option<String>,
    /// Pipes' own, for an `api_key` integration (which then takes no OAuth fields): where
    /// the key goes (`placement` `header` with `header` and `format` holding `{api_key}`,
    /// `query` with `query_param`, or `basic`), and optionally a `verify` request
    /// (`method`, `url`) that succeeds only with a good key.
    #[schema(value_type = Option<Object>)]
    pub api_key: Option<crate::oauth::catalog::ApiKeySpec>,
}

/// `POST /data-integrations`.
#[derive(Debug, Default, Clone, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"provider": "asana", "description": "Tasks", "scopes": ["default"],
    "credentials": {"type": "custom", "client_id": "client-id", "client_secret": "client-secret"}}))]
pub struct CreateIntegration {
    /// A catalog slug (`github`), or the slug of a new custom provider (then `custom_provider` is required).
    pub provider: Option<String>,
    pub description: Option<String>,
    /// Default `false`: an integration serves nothing until it is enabled.
    pub enabled: Option<bool>,
    /// Default: the catalog provider's default scopes (none for a custom provider).
    pub scopes: Option<Vec<String>>,
    pub credentials: Option<CredentialsInput>,
    pub custom_provider: Option<CustomProviderInput>,
    /// Values of the catalog provider's `config_params` (Zendesk `subdomain`, Shopify `shop`,
    /// Microsoft `tenant`); every one is required. Custom providers take none.
    pub config: Option<BTreeMap<String, String>>,
    /// How accounts authenticate, exactly one of `oauth` (default), `api_key` or
    /// `client_credentials`; fixed once created.
    pub auth_methods: Option<Vec<String>>,
    /// An `api_key` integration's first account: its key, for `user_id` (in `organization_id`).
    pub api_key: Option<ApiKeyInstall>,
    /// Pipes' own: whether an owner may connect several accounts (`connection_intent:
    /// add`). Default `false`.
    pub multiple_connections: Option<bool>,
    /// `user` (default): each user connects their own account; `organization`: an
    /// organization's shared accounts, connected by one of its members. A provider may
    /// have one integration of each.
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
    /// Pipes' own: whether an owner may connect several accounts.
    pub multiple_connections: Option<bool>,
    /// An `api_key` integration: installs or rotates the key of `user_id`'s account.
    pub api_key: Option<ApiKeyInstall>,
}

/// `api_key` of a create or update body: a key for a user's account.
#[derive(Debug, Default, Clone, Deserialize, utoipa::ToSchema)]
pub struct ApiKeyInstall {
    #[schema(value_type = String)]
    pub secret: Option<Secret>,
    pub user_id: Option<String>,
    pub organization_id: Option<String>,
}

/// Tells an explicit `null` (Some(None)) from an absent field (None).
pub(crate) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A validated integration, ready to insert or to replace a stored one.
#[derive(Debug, Clone)]
pub struct IntegrationDraft {
    pub slug: String,
    pub ownership: Ownership,
    pub auth_method: AuthMethod,
    pub credentials_type: CredentialsType,
    /// The catalog slug, or `slug` for a custom provider.
    pub provider: String,
    pub description: String,
    pub enabled: bool,
    pub multiple_connections: bool,
    pub scopes: Vec<String>,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub custom_provider: Option<CustomProvider>,
    pub settings: BTreeMap<String, String>,
    /// The client credentials changed (an `invalid` integration becomes `valid` again).
    pub credentials_changed: bool,
    /// An API key to install for a user with the write (`api_key`).
    pub api_key: Option<KeyInstall>,
}

/// A validated `api_key` block: the key for `owner`'s account.
#[derive(Debug, Clone)]
pub struct KeyInstall {
    pub secret: Secret,
    pub user_id: String,
    pub organization_id: Option<String>,
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

/// Validates a create body. `allow_private`: `PIPES_ALLOW_PRIVATE_NETWORK`.
pub async fn validate_create(
    input: CreateIntegration,
    allow_private: bool,
) -> Result<IntegrationDraft, Vec<FieldError>> {
    let draft = check_create(input, allow_private)?;
    check_hosts(&draft, allow_private).await?;
    Ok(draft)
}

fn check_create(input: CreateIntegration, allow_private: bool) -> Result<IntegrationDraft, Vec<FieldError>> {
    let mut c = Checker::new(allow_private);
    let slug = c.slug("provider", input.provider.as_deref());
    let auth_method = c.auth_method(input.auth_methods.as_deref());
    let ownership = match input.ownership.as_deref() {
        None => Ownership::User,
        Some(sent) => Ownership::parse(sent).unwrap_or_else(|| {
            c.push("ownership", "invalid", "`ownership` must be `user` or `organization`.");
            Ownership::User
        }),
    };
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
        (Some(cp), None, _) => c.custom_provider(cp, None, auth_method),
        _ => None,
    };
    let credentials_type = c.credentials_type(input.credentials.as_ref());
    let (client_id, client_secret) = match (&input.credentials, auth_method) {
        // Each organization brings its own app: the integration has none.
        (Some(_), AuthMethod::OAuth) if credentials_type == CredentialsType::Organization => (None, None),
        (Some(credentials), AuthMethod::OAuth) => c.credentials(credentials, None),
        (None, AuthMethod::OAuth) => {
            c.push("credentials", "required", "credentials with client_id and client_secret are required.");
            (None, None)
        }
        (Some(_), method) => {
            c.push(
                "credentials",
                "not_allowed",
                format!("An `{method}` integration has no OAuth app of its own: each account brings its credential."),
            );
            (None, None)
        }
        (None, _) => (None, None),
    };
    c.method_fits_provider(auth_method, catalog);
    if input.api_key.is_some() && auth_method != AuthMethod::ApiKey {
        c.push("api_key", "not_allowed", "Only an `api_key` integration takes an API key.");
    }
    let mut draft = IntegrationDraft {
        provider: catalog.map(|s| s.slug.clone()).or_else(|| slug.clone()).unwrap_or_default(),
        slug: slug.unwrap_or_default(),
        ownership,
        auth_method,
        credentials_type,
        description: input.description.unwrap_or_default(),
        // Off until enabled, as the hosted product creates integrations.
        enabled: input.enabled.unwrap_or(false),
        multiple_connections: input.multiple_connections.unwrap_or(false),
        scopes: match input.scopes {
            Some(scopes) => scopes,
            // The catalog's defaults are what users consent to; a client asks for none unless told.
            None if auth_method == AuthMethod::OAuth => {
                catalog.and_then(|s| s.oauth.as_ref()).map(|o| o.default_scopes.clone()).unwrap_or_default()
            }
            None => Vec::new(),
        },
        client_id: client_id.unwrap_or_default(),
        client_secret,
        custom_provider: custom,
        settings: input.config.unwrap_or_default(),
        credentials_changed: true,
        api_key: input.api_key.and_then(|key| c.api_key(&key)),
    };
    let provider_known = catalog.is_some() || draft.custom_provider.is_some();
    c.draft(&mut draft, provider_known);
    c.finish(draft)
}

/// Validates an update body against the stored integration.
pub async fn validate_update(
    existing: &Integration,
    input: UpdateIntegration,
    allow_private: bool,
) -> Result<IntegrationDraft, Vec<FieldError>> {
    let draft = check_update(existing, input, allow_private)?;
    check_hosts(&draft, allow_private).await?;
    Ok(draft)
}

fn check_update(
    existing: &Integration,
    input: UpdateIntegration,
    allow_private: bool,
) -> Result<IntegrationDraft, Vec<FieldError>> {
    let mut c = Checker::new(allow_private);
    let secret_given = input.credentials.as_ref().is_some_and(|creds| creds.client_secret.is_some());
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
        (Some(cp), Some(current)) => c.custom_provider(cp, Some(current), existing.auth_method),
        (None, current) => current.clone(),
    };
    let current_secret = existing.client_secret.as_ref().map(|s| Secret::new(s.expose_secret().to_owned()));
    if input.api_key.is_some() && existing.auth_method != AuthMethod::ApiKey {
        c.push("api_key", "not_allowed", "Only an `api_key` integration takes an API key.");
    }
    let (client_id, client_secret, credentials_changed) = match &input.credentials {
        None => (Some(existing.client_id.clone()), current_secret, false),
        Some(_) if existing.credentials_type == CredentialsType::Organization => {
            c.push(
                "credentials",
                "not_allowed",
                "Each organization configures its own OAuth app for this integration \
                 (/organizations/{id}/data_integration_configurations/{slug}).",
            );
            (None, None, false)
        }
        Some(_) if existing.auth_method != AuthMethod::OAuth => {
            c.push(
                "credentials",
                "not_allowed",
                format!(
                    "An `{}` integration has no OAuth app of its own: each account brings its credential.",
                    existing.auth_method
                ),
            );
            (None, None, false)
        }
        Some(creds) => {
            let (id, secret) = c.credentials(creds, Some((&existing.client_id, current_secret.as_ref())));
            (id, secret, true)
        }
    };
    let mut draft = IntegrationDraft {
        slug: existing.slug.clone(),
        ownership: existing.ownership,
        auth_method: existing.auth_method,
        credentials_type: existing.credentials_type,
        provider: existing.provider.clone(),
        description: input.description.unwrap_or_else(|| existing.description.clone()),
        enabled: input.enabled.unwrap_or(existing.enabled),
        multiple_connections: input.multiple_connections.unwrap_or(existing.multiple_connections),
        scopes: match input.scopes {
            None => existing.scopes.clone(),
            Some(Some(scopes)) => scopes,
            Some(None) if existing.auth_method == AuthMethod::OAuth => {
                catalog.and_then(|s| s.oauth.as_ref()).map(|o| o.default_scopes.clone()).unwrap_or_default()
            }
            Some(None) => Vec::new(),
        },
        client_id: client_id.unwrap_or_default(),
        client_secret,
        custom_provider: custom,
        settings: input.config.unwrap_or_else(|| existing.settings.clone()),
        credentials_changed,
        api_key: input.api_key.and_then(|key| c.api_key(&key)),
    };
    c.draft(&mut draft, true);
    // Whoever can change where the secret goes must show they know it: otherwise an
    // admin key alone could point the token endpoint at a host of its choosing and
    // collect the client secret and every refresh token.
    let before = server_side(existing.custom_provider.as_ref(), &existing.provider, &existing.settings);
    let after = server_side(draft.custom_provider.as_ref(), &draft.provider, &draft.settings);
    if before != after && !secret_given {
        c.push(
            "credentials.client_secret",
            "required",
            "Changing the token, refresh or revocation URL or the client authentication method requires \
             the client secret in the same request.",
        );
    }
    c.finish(draft)
}

/// Where an integration sends its client secret and tokens (token, refresh and
/// revocation URLs, with catalog placeholders filled) and how it authenticates.
fn server_side(
    custom: Option<&CustomProvider>,
    provider: &str,
    settings: &BTreeMap<String, String>,
) -> Option<(Vec<String>, ClientAuth)> {
    let normal = |u: &str| url::Url::parse(u.trim()).map_or_else(|_| u.trim().to_owned(), String::from);
    match custom {
        Some(c) if c.api_key.is_some() => {
            // The key goes to the verification request only.
            let verify = c.api_key.as_ref().and_then(|k| k.verify.as_ref()).map(|v| normal(&v.url));
            Some((verify.into_iter().collect(), c.authenticate_via))
        }
        Some(c) => {
            let refresh = c.refresh_token_url.as_deref().unwrap_or(&c.token_url);
            let revocation = c.revocation_url.as_deref().map(normal).unwrap_or_default();
            Some((vec![normal(&c.token_url), normal(refresh), revocation], c.authenticate_via))
        }
        None => {
            let spec = Catalog::builtin().get(provider)?;
            let urls = spec.resolve_urls(settings).ok()?;
            let revocation = urls.revocation_url.map(String::from).unwrap_or_default();
            Some((
                vec![urls.token_url.into(), urls.refresh_token_url.into(), revocation],
                spec.oauth.as_ref()?.client_auth,
            ))
        }
    }
}

/// Save-time look-up of every endpoint host a draft names (custom URLs, catalog hosts
/// filled from config): a name that resolves to an internal address is refused.
async fn check_hosts(draft: &IntegrationDraft, allow_private: bool) -> Result<(), Vec<FieldError>> {
    if allow_private {
        return Ok(());
    }
    let mut urls: Vec<(String, String)> = Vec::new();
    match &draft.custom_provider {
        Some(c) if c.api_key.is_some() => {
            let verify = c.api_key.as_ref().and_then(|k| k.verify.as_ref());
            urls.extend(verify.map(|v| ("custom_provider.api_key.verify.url".to_owned(), v.url.clone())));
            urls.extend(c.api_base_url.clone().map(|u| ("custom_provider.api_base_url".to_owned(), u)));
        }
        Some(c) => {
            let f = |name: &str| format!("custom_provider.{name}");
            if !c.authorization_url.is_empty() {
                urls.push((f("authorization_url"), c.authorization_url.clone()));
            }
            urls.push((f("token_url"), c.token_url.clone()));
            urls.extend(c.refresh_token_url.clone().map(|u| (f("refresh_token_url"), u)));
            urls.extend(c.revocation_url.clone().map(|u| (f("revocation_url"), u)));
            urls.extend(c.api_base_url.clone().map(|u| (f("api_base_url"), u)));
        }
        None => {
            // Only hosts filled from config can differ from the catalog's own.
            let Some(spec) = Catalog::builtin().get(&draft.provider).filter(|s| !s.config_params.is_empty()) else {
                return Ok(());
            };
            if let Ok(resolved) = spec.resolve_urls(&draft.settings) {
                urls.push(("config".into(), resolved.authorization_url.into()));
                urls.push(("config".into(), resolved.token_url.into()));
            }
        }
    }
    let mut errors = Vec::new();
    for (field, url) in urls {
        if let Err(err) = outbound::check_url_for_save(&url, outbound::Schemes::Https, false).await {
            errors.push(FieldError::new(&field, err.code(), format!("The URL {err}.")));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
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
