//! The built-in provider catalog: OAuth 2.0 endpoints and quirks as data.
//!
//! `providers/catalog.toml` is embedded at build time and parsed once. Each entry
//! says where to send users and token requests, how to authenticate the client,
//! which error codes mean "the grant is dead", and whether tokens expire at all.
//! URL templates may carry `{param}` placeholders (Zendesk subdomain, Shopify
//! shop, Microsoft tenant) that `ProviderSpec::resolve_urls` fills from an
//! integration's config, refusing any value that could point at another host.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use url::Url;

mod validate;

const BUILTIN_TOML: &str = include_str!("../../providers/catalog.toml");

static BUILTIN: LazyLock<Catalog> = LazyLock::new(|| {
    // The file is compiled in, so a failure is a programming error, and the
    // catalog tests parse and validate it before it can ship.
    #[allow(clippy::expect_used)]
    Catalog::from_toml_str(BUILTIN_TOML).expect("providers/catalog.toml must parse")
});

/// Separators a provider may expect between scopes in the `scope` parameter.
pub const SCOPE_SEPARATORS: [&str; 3] = [" ", ",", "+"];

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("the catalog does not match its schema: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("provider `{provider}` needs the config parameter `{param}`")]
    MissingParam { provider: String, param: String },
    #[error("config parameter `{param}` of provider `{provider}` is invalid: {reason}")]
    InvalidParam { provider: String, param: String, reason: &'static str },
    #[error("provider `{provider}`: `{template}` does not resolve to an https URL on the provider's host")]
    InvalidUrl { provider: String, template: String },
}

/// How the client authenticates at the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    RequestBody,
    BasicAuthHeader,
}

/// Where the token sits in the token endpoint's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenResponseShape {
    /// RFC 6749 §5.1 at the top level, errors per §5.2.
    Standard,
    /// Slack: the user token under `authed_user`, errors as HTTP 200 `{"ok": false, "error"}`.
    Slack,
}

/// Encoding of the token request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyContentType {
    Form,
    Json,
}

/// One provider of the catalog, as written in `providers/catalog.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// The table key; filled after parsing.
    #[serde(skip_deserializing)]
    pub slug: String,
    pub name: String,
    pub description: String,
    pub logo_color: String,
    pub authorization_url: String,
    pub token_url: String,
    #[serde(default)]
    pub refresh_token_url: Option<String>,
    /// An RFC 7009-style endpoint (POST `token=…`), if the provider has one.
    #[serde(default)]
    pub revocation_url: Option<String>,
    pub scope_separator: String,
    /// The authorization query key carrying scopes (Slack user scopes: `user_scope`).
    #[serde(default = "default_scope_param")]
    pub scope_param: String,
    /// Scopes are chosen in the app's settings at the provider; none are sent.
    #[serde(default)]
    pub scopes_configured_at_provider: bool,
    pub default_scopes: Vec<String>,
    #[serde(default)]
    pub scope_sets: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub authorization_params: BTreeMap<String, String>,
    pub client_auth: ClientAuth,
    pub pkce: bool,
    pub token_response: TokenResponseShape,
    pub token_body_content_type: BodyContentType,
    #[serde(default)]
    pub expires_in_as_string: bool,
    /// Error codes meaning the grant is dead and the user must reauthorize.
    pub invalid_grant_errors: Vec<String>,
    /// Provider-specific codes meaning the client credentials are wrong, on top
    /// of `invalid_client` and `unauthorized_client`.
    #[serde(default)]
    pub invalid_client_errors: Vec<String>,
    /// `false`: tokens never expire; served as-is and never scheduled for refresh.
    pub tokens_expire: bool,
    /// Placeholders the integration must supply, e.g. `["subdomain"]`.
    #[serde(default)]
    pub config_params: Vec<String>,
    /// Where a code exchange's answer names the provider's account (its subject), as a
    /// dotted path into the JSON (`authed_user.id`), a claim of its ID token
    /// (`id_token.sub`), or a field of the `userinfo_url` answer (`userinfo.id`): stored as
    /// the account's `account_identifier`, so connecting the same account again updates it.
    #[serde(default)]
    pub account_identifier: Option<String>,
    /// A GET, made with the new access token, that answers the account's profile.
    #[serde(default)]
    pub userinfo_url: Option<String>,
}

fn default_scope_param() -> String {
    "scope".to_owned()
}

/// A provider's endpoints with every placeholder filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUrls {
    pub authorization_url: Url,
    pub token_url: Url,
    /// The refresh endpoint, which is the token endpoint unless the provider has its own.
    pub refresh_token_url: Url,
    pub revocation_url: Option<Url>,
    pub userinfo_url: Option<Url>,
}

impl ProviderSpec {
    /// Every URL template with its role, for checks that treat them alike.
    fn url_templates(&self) -> Vec<(&'static str, &str)> {
        let mut urls =
            vec![("authorization_url", self.authorization_url.as_str()), ("token_url", self.token_url.as_str())];
        if let Some(url) = &self.refresh_token_url {
            urls.push(("refresh_token_url", url));
        }
        if let Some(url) = &self.revocation_url {
            urls.push(("revocation_url", url));
        }
        if let Some(url) = &self.userinfo_url {
            urls.push(("userinfo_url", url));
        }
        urls
    }

    /// Fills the `{param}` placeholders of every endpoint from `params`.
    ///
    /// A value must be a hostname-safe string, and a single DNS label where it
    /// lands in the host, so `{subdomain}.zendesk.com` can only ever name a
    /// Zendesk host. Extra entries in `params` are ignored.
    pub fn resolve_urls(&self, params: &BTreeMap<String, String>) -> Result<ResolvedUrls, CatalogError> {
        for param in &self.config_params {
            let value = params
                .get(param)
                .ok_or_else(|| CatalogError::MissingParam { provider: self.slug.clone(), param: param.clone() })?;
            let in_host = self
                .url_templates()
                .iter()
                .any(|(_, template)| template_host(template).contains(&format!("{{{param}}}")));
            let check = if in_host { check_dns_label(value) } else { check_hostname(value) };
            check.map_err(|reason| CatalogError::InvalidParam {
                provider: self.slug.clone(),
                param: param.clone(),
                reason,
            })?;
        }
        let resolve = |template: &str| self.resolve_one(template, params);
        let token_url = resolve(&self.token_url)?;
        Ok(ResolvedUrls {
            authorization_url: resolve(&self.authorization_url)?,
            refresh_token_url: match &self.refresh_token_url {
                Some(url) => resolve(url)?,
                None => token_url.clone(),
            },
            token_url,
            revocation_url: self.revocation_url.as_deref().map(resolve).transpose()?,
            userinfo_url: self.userinfo_url.as_deref().map(resolve).transpose()?,
        })
    }

    fn resolve_one(&self, template: &str, params: &BTreeMap<String, String>) -> Result<Url, CatalogError> {
        let invalid = || CatalogError::InvalidUrl { provider: self.slug.clone(), template: template.to_owned() };
        let mut filled = template.to_owned();
        for param in &self.config_params {
            if let Some(value) = params.get(param) {
                filled = filled.replace(&format!("{{{param}}}"), value);
            }
        }
        if filled.contains('{') || filled.contains('}') {
            return Err(invalid());
        }
        let url = Url::parse(&filled).map_err(|_| invalid())?;
        let host = url.host_str().ok_or_else(invalid)?;
        // Defence in depth behind the value checks: the resolved host must still
        // be the template's fixed host, or end with its fixed domain.
        let template_host = template_host(template).to_ascii_lowercase();
        let host_ok = match template_host.rfind('}') {
            None => host == template_host,
            Some(end) => host.ends_with(&template_host[end.saturating_add(1)..]),
        };
        if url.scheme() != "https" || !host_ok {
            return Err(invalid());
        }
        Ok(url)
    }

    /// The scopes joined the way this provider expects them.
    pub fn scope_string(&self, scopes: &[String]) -> String {
        scopes.join(&self.scope_separator)
    }

    /// A named scope set, e.g. Google's `gmail`.
    pub fn scope_set(&self, name: &str) -> Option<&[String]> {
        self.scope_sets.get(name).map(Vec::as_slice)
    }

    /// Whether a token endpoint error code means the user must reauthorize.
    pub fn is_invalid_grant(&self, code: &str) -> bool {
        self.invalid_grant_errors.iter().any(|c| c == code)
    }

    /// Whether a token endpoint error code means the client credentials are wrong.
    pub fn is_invalid_client(&self, code: &str) -> bool {
        matches!(code, "invalid_client" | "unauthorized_client") || self.invalid_client_errors.iter().any(|c| c == code)
    }
}

/// The provider catalog, keyed by slug.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    providers: BTreeMap<String, ProviderSpec>,
}

impl Catalog {
    /// The catalog compiled into the binary.
    pub fn builtin() -> &'static Catalog {
        &BUILTIN
    }

    /// Parses a catalog in the `providers/catalog.toml` format. This checks the
    /// schema only; call [`Catalog::validate`] for the content rules.
    pub fn from_toml_str(source: &str) -> Result<Catalog, CatalogError> {
        let mut catalog: Catalog = toml::from_str(source)?;
        for (slug, spec) in &mut catalog.providers {
            spec.slug.clone_from(slug);
        }
        Ok(catalog)
    }

    pub fn get(&self, slug: &str) -> Option<&ProviderSpec> {
        self.providers.get(slug)
    }

    /// All providers, sorted by slug.
    pub fn iter(&self) -> impl Iterator<Item = &ProviderSpec> {
        self.providers.values()
    }

    pub fn len(&self) -> usize {
        self.providers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// Every problem in the catalog, as readable lines; empty when it is sound.
    pub fn validate(&self) -> Vec<String> {
        let mut out: Vec<String> = self.iter().flat_map(ProviderSpec::problems).collect();
        if self.is_empty() {
            out.push("the catalog has no providers".into());
        }
        out
    }
}

/// The authority part of a URL template (between `https://` and the path).
fn template_host(template: &str) -> &str {
    let rest = template.split_once("://").map_or(template, |(_, rest)| rest);
    rest.split(['/', '?', '#']).next().unwrap_or(rest)
}

/// One DNS label: 1-63 of `[A-Za-z0-9-]`, not starting or ending with '-'.
fn check_dns_label(value: &str) -> Result<(), &'static str> {
    if value.is_empty() || value.len() > 63 {
        return Err("must be a DNS label of 1 to 63 characters");
    }
    if !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err("may only hold letters, digits and '-'");
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err("may not start or end with '-'");
    }
    Ok(())
}

/// A hostname-safe value: DNS labels joined by single dots, at most 253 characters.
fn check_hostname(value: &str) -> Result<(), &'static str> {
    if value.len() > 253 {
        return Err("is longer than 253 characters");
    }
    value.split('.').try_for_each(check_dns_label)
}
