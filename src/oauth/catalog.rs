//! The built-in provider catalog: OAuth 2.0 endpoints and quirks as data.
//!
//! `providers/catalog/{slug}.toml` (one file per provider, format in
//! `providers/README.md`) is embedded at build time and parsed once; an operator's
//! `PIPES_CATALOG_FILE` adds or overrides entries at start-up. Each entry says where
//! to send users and token requests, how to authenticate the client, which error
//! codes mean "the grant is dead", whether tokens expire at all, and what an
//! operator needs to set the provider up (setup steps, docs, scope descriptions).
//! URL templates may carry `{param}` placeholders (Zendesk subdomain, Shopify
//! shop, Microsoft tenant) that `ProviderSpec::resolve_urls` fills from an
//! integration's config, refusing any value that could point at another host.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use url::Url;

mod validate;

/// `(slug, file)` for every file of `providers/catalog/`, written by `build.rs`.
const BUILTIN_FILES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/catalog_files.rs"));

static BUILTIN: LazyLock<Catalog> = LazyLock::new(|| {
    // The files are compiled in, so a failure is a programming error, and the
    // catalog tests parse and validate them before they can ship.
    #[allow(clippy::expect_used)]
    Catalog::from_files(BUILTIN_FILES).expect("providers/catalog/ must parse")
});

/// The built-in catalog with the operator's file over it, set once at start-up.
static INSTALLED: std::sync::OnceLock<Catalog> = std::sync::OnceLock::new();

/// Categories an entry may list (`providers/README.md`).
pub const CATEGORIES: [&str; 28] = [
    "accounting",
    "ai",
    "analytics",
    "calendar",
    "communication",
    "crm",
    "customer-support",
    "data",
    "design",
    "developer-tools",
    "documents",
    "e-commerce",
    "email",
    "erp",
    "file-storage",
    "finance",
    "hr",
    "identity",
    "marketing",
    "payments",
    "productivity",
    "project-management",
    "recruiting",
    "sales",
    "scheduling",
    "security",
    "social",
    "video",
];

/// Separators a provider may expect between scopes in the `scope` parameter.
pub const SCOPE_SEPARATORS: [&str; 3] = [" ", ",", "+"];

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("the catalog does not match its schema: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("provider `{entry}` does not match the catalog schema: {source}")]
    Entry {
        entry: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("the catalog has problems:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
    #[error("provider `{provider}` needs the config parameter `{param}`")]
    MissingParam { provider: String, param: String },
    #[error("config parameter `{param}` of provider `{provider}` is invalid: {reason}")]
    InvalidParam { provider: String, param: String, reason: &'static str },
    #[error("provider `{provider}` takes API keys only: it has no OAuth 2.0")]
    NoOAuth { provider: String },
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
    /// RFC 6749 §5.1 fields inside an envelope object at `token_path`.
    Nested,
}

/// Encoding of the token request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyContentType {
    Form,
    Json,
}

/// How a connect-time parameter (a `{param}` of the entry's URLs) is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    /// One DNS label: a subdomain (`{subdomain}.zendesk.com`).
    DnsLabel,
    /// DNS labels joined by dots.
    Hostname,
    /// One path segment of letters, digits, `.`, `-`, `_` (a tenant id or domain).
    PathSegment,
    /// One of `values`.
    OneOf,
}

/// A connect-time parameter the integration supplies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    pub description: String,
    pub kind: ParamKind,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// Where an API key goes on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyPlacement {
    Header,
    Query,
    Basic,
}

/// A cheap request that succeeds only with a good key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    pub method: String,
    pub url: String,
}

/// How the provider takes an API key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    pub placement: KeyPlacement,
    /// `header`: the header name, and its value with `{api_key}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// `query`: the parameter name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_param: Option<String>,
    /// `basic`: `username` or `password`, the half holding the key; `basic_other` the other half.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_other: Option<String>,
    /// Where a user finds their key, in a line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_help: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyRequest>,
}

/// One provider of the catalog, as its entry file says (the slug is the file name).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderSpec {
    /// The file name (or the operator file's table key).
    pub slug: String,
    pub name: String,
    pub description: String,
    pub logo_color: String,
    pub categories: Vec<String>,
    /// Other slugs that name this entry.
    pub aliases: Vec<String>,
    /// The provider's pages every fact comes from.
    pub sources: Vec<String>,
    /// Where an operator registers the OAuth app (or a user creates a key).
    pub docs_url: String,
    pub setup_steps: Vec<String>,
    /// The base of the provider's REST API (may hold `{param}`s).
    pub api_base_url: Option<String>,
    pub api_hosts: Vec<String>,
    /// Connect-time parameters, by name.
    pub params: BTreeMap<String, ParamSpec>,
    /// Placeholders the integration must supply (the names of `params`).
    #[serde(skip)]
    pub config_params: Vec<String>,
    /// How the provider speaks OAuth 2.0; `None` for a provider of API keys only.
    pub oauth: Option<OAuthSpec>,
    /// How the provider takes API keys (used by API-key integrations).
    pub api_key: Option<ApiKeySpec>,
}

/// A provider's OAuth 2.0: its `[oauth]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthSpec {
    pub authorization_url: String,
    pub token_url: String,
    #[serde(default)]
    pub refresh_token_url: Option<String>,
    /// An RFC 7009-style endpoint (POST `token=…`), if the provider has one.
    #[serde(default)]
    pub revocation_url: Option<String>,
    /// A GET, made with the new access token, that answers the account's profile.
    #[serde(default)]
    pub userinfo_url: Option<String>,
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
    /// One line for every scope named in the entry.
    #[serde(default)]
    pub scope_descriptions: BTreeMap<String, String>,
    #[serde(default)]
    pub authorization_params: BTreeMap<String, String>,
    /// Extra fields of every token request (Withings' `action=requesttoken`).
    #[serde(default)]
    pub token_params: BTreeMap<String, String>,
    pub client_auth: ClientAuth,
    pub token_body_content_type: BodyContentType,
    pub pkce: bool,
    pub token_response: TokenResponseShape,
    /// `token_response = "nested"`: the dotted path of the object holding the tokens
    /// (Withings: `body`).
    #[serde(default)]
    pub token_path: Option<String>,
    #[serde(default)]
    pub expires_in_as_string: bool,
    /// `false`: tokens never expire; served as-is and never scheduled for refresh.
    pub tokens_expire: bool,
    /// The provider documents single-use refresh tokens (Pipes stores whichever comes back).
    #[serde(default)]
    pub refresh_token_rotation: bool,
    /// Error codes meaning the grant is dead and the user must reauthorize.
    pub invalid_grant_errors: Vec<String>,
    /// Provider-specific codes meaning the client credentials are wrong, on top
    /// of `invalid_client` and `unauthorized_client`.
    #[serde(default)]
    pub invalid_client_errors: Vec<String>,
    /// Where a code exchange's answer names the provider's account (its subject), as a
    /// dotted path into the JSON (`authed_user.id`), a claim of its ID token
    /// (`id_token.sub`), or a field of the `userinfo_url` answer (`userinfo.id`): stored as
    /// the account's `account_identifier`, so connecting the same account again updates it.
    #[serde(default)]
    pub account_identifier: Option<String>,
    /// Where the provider names the account for people (an e-mail, a workspace), in the
    /// same forms: it fills an account's empty `account_display_name`.
    #[serde(default)]
    pub account_display_name: Option<String>,
}

/// An entry as written in its file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFile {
    name: String,
    description: String,
    logo_color: String,
    categories: Vec<String>,
    #[serde(default)]
    aliases: Vec<String>,
    sources: Vec<String>,
    docs_url: String,
    setup_steps: Vec<String>,
    #[serde(default)]
    api_base_url: Option<String>,
    #[serde(default)]
    api_hosts: Vec<String>,
    #[serde(default)]
    params: BTreeMap<String, ParamSpec>,
    #[serde(default)]
    oauth: Option<OAuthSpec>,
    #[serde(default)]
    api_key: Option<ApiKeySpec>,
}

impl EntryFile {
    fn into_spec(self, slug: &str) -> ProviderSpec {
        ProviderSpec {
            slug: slug.to_owned(),
            name: self.name,
            description: self.description,
            logo_color: self.logo_color,
            categories: self.categories,
            aliases: self.aliases,
            sources: self.sources,
            docs_url: self.docs_url,
            setup_steps: self.setup_steps,
            api_base_url: self.api_base_url,
            api_hosts: self.api_hosts,
            config_params: self.params.keys().cloned().collect(),
            params: self.params,
            oauth: self.oauth,
            api_key: self.api_key,
        }
    }
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
        let mut urls = Vec::new();
        if let Some(o) = &self.oauth {
            urls.push(("authorization_url", o.authorization_url.as_str()));
            urls.push(("token_url", o.token_url.as_str()));
            urls.extend(o.refresh_token_url.as_deref().map(|u| ("refresh_token_url", u)));
            urls.extend(o.revocation_url.as_deref().map(|u| ("revocation_url", u)));
            urls.extend(o.userinfo_url.as_deref().map(|u| ("userinfo_url", u)));
        }
        if let Some(url) = &self.api_base_url {
            urls.push(("api_base_url", url));
        }
        if let Some(verify) = self.api_key.as_ref().and_then(|k| k.verify.as_ref()) {
            urls.push(("api_key.verify.url", verify.url.as_str()));
        }
        urls
    }

    /// Fills the `{param}` placeholders of every endpoint from `params`.
    ///
    /// A value must be a hostname-safe string, and a single DNS label where it
    /// lands in the host, so `{subdomain}.zendesk.com` can only ever name a
    /// Zendesk host. Extra entries in `params` are ignored.
    pub fn resolve_urls(&self, params: &BTreeMap<String, String>) -> Result<ResolvedUrls, CatalogError> {
        self.check_params(params)?;
        let o = self.oauth()?;
        let resolve = |template: &str| self.resolve_one(template, params);
        let token_url = resolve(&o.token_url)?;
        Ok(ResolvedUrls {
            authorization_url: resolve(&o.authorization_url)?,
            refresh_token_url: match &o.refresh_token_url {
                Some(url) => resolve(url)?,
                None => token_url.clone(),
            },
            token_url,
            revocation_url: o.revocation_url.as_deref().map(resolve).transpose()?,
            userinfo_url: o.userinfo_url.as_deref().map(resolve).transpose()?,
        })
    }

    /// The entry's OAuth 2.0, or an error for a provider of API keys only.
    pub fn oauth(&self) -> Result<&OAuthSpec, CatalogError> {
        self.oauth.as_ref().ok_or_else(|| CatalogError::NoOAuth { provider: self.slug.clone() })
    }

    /// Checks every connect-time value `params` must hold for this entry.
    fn check_params(&self, params: &BTreeMap<String, String>) -> Result<(), CatalogError> {
        for param in &self.config_params {
            let value = params
                .get(param)
                .ok_or_else(|| CatalogError::MissingParam { provider: self.slug.clone(), param: param.clone() })?;
            let in_host = self
                .url_templates()
                .iter()
                .any(|(_, template)| template_host(template).contains(&format!("{{{param}}}")));
            let check = match self.params.get(param) {
                Some(ParamSpec { kind: ParamKind::OneOf, values, .. }) if !values.contains(value) => {
                    Err("is not one of the provider's documented values")
                }
                Some(ParamSpec { kind: ParamKind::PathSegment, .. }) => check_path_segment(value),
                Some(ParamSpec { kind: ParamKind::Hostname, .. }) => check_hostname(value),
                _ => check_dns_label(value),
            }
            // In a host, whatever its kind, a value is one label under the fixed domain.
            .and_then(|()| if in_host { check_dns_label(value) } else { Ok(()) });
            check.map_err(|reason| CatalogError::InvalidParam {
                provider: self.slug.clone(),
                param: param.clone(),
                reason,
            })?;
        }
        Ok(())
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
}

impl OAuthSpec {
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

impl ApiKeySpec {
    /// `request` with `key` where the provider takes it.
    pub fn attach(&self, request: reqwest::RequestBuilder, key: &str) -> reqwest::RequestBuilder {
        match self.placement {
            KeyPlacement::Header => {
                let name = self.header.as_deref().unwrap_or("Authorization");
                let value = self.format.as_deref().unwrap_or("{api_key}").replace("{api_key}", key);
                request.header(name, value)
            }
            KeyPlacement::Query => request.query(&[(self.query_param.as_deref().unwrap_or("api_key"), key)]),
            KeyPlacement::Basic => {
                let other = self.basic_other.clone().unwrap_or_default();
                match self.basic.as_deref() {
                    Some("password") => request.basic_auth(other, Some(key)),
                    _ => request.basic_auth(key, Some(other)),
                }
            }
        }
    }
}

impl ProviderSpec {
    /// The provider's API base URL with its `{param}`s filled, if the entry has one.
    pub fn api_base(&self, params: &BTreeMap<String, String>) -> Result<Option<Url>, CatalogError> {
        let Some(template) = &self.api_base_url else { return Ok(None) };
        self.check_params(params)?;
        self.resolve_one(template, params).map(Some)
    }

    /// The `api_key.verify` URL with its `{param}`s filled, if the entry has one.
    pub fn verify_url(&self, params: &BTreeMap<String, String>) -> Result<Option<Url>, CatalogError> {
        let Some(verify) = self.api_key.as_ref().and_then(|k| k.verify.as_ref()) else { return Ok(None) };
        self.check_params(params)?;
        self.resolve_one(&verify.url, params).map(Some)
    }
}

/// The provider catalog, keyed by slug.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    providers: BTreeMap<String, ProviderSpec>,
}

impl Catalog {
    /// The catalog in use: the built-in one, with the operator's file over it once
    /// [`Catalog::install`] ran.
    pub fn builtin() -> &'static Catalog {
        INSTALLED.get().unwrap_or(&BUILTIN)
    }

    /// The catalog compiled into the binary, whatever was installed.
    pub fn compiled() -> &'static Catalog {
        &BUILTIN
    }

    /// Parses one entry per file: `(slug, TOML)` pairs. Checks the schema only; call
    /// [`Catalog::validate`] for the content rules.
    pub fn from_files(files: &[(&str, &str)]) -> Result<Catalog, CatalogError> {
        let mut providers = BTreeMap::new();
        for (slug, text) in files {
            let entry: EntryFile =
                toml::from_str(text).map_err(|source| CatalogError::Entry { entry: (*slug).to_owned(), source })?;
            providers.insert((*slug).to_owned(), entry.into_spec(slug));
        }
        Ok(Catalog { providers })
    }

    /// Parses a document of entries, one table per slug (`[acme]`, `[acme.oauth]`, …):
    /// the format of `PIPES_CATALOG_FILE`.
    pub fn from_toml_str(source: &str) -> Result<Catalog, CatalogError> {
        let tables: BTreeMap<String, toml::Value> = toml::from_str(source)?;
        let mut providers = BTreeMap::new();
        for (slug, table) in tables {
            let entry: EntryFile =
                table.try_into().map_err(|source| CatalogError::Entry { entry: slug.clone(), source })?;
            let spec = entry.into_spec(&slug);
            providers.insert(slug, spec);
        }
        Ok(Catalog { providers })
    }

    /// The built-in catalog with the operator's entries from `path` added or put in
    /// place of built-in ones, checked as a whole: an error names the entry and field.
    pub fn with_operator_file(path: &std::path::Path) -> Result<Catalog, CatalogError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CatalogError::File { path: path.display().to_string(), message: e.to_string() })?;
        let own = Catalog::from_toml_str(&text)?;
        let mut merged = Catalog::compiled().clone();
        merged.providers.extend(own.providers);
        let problems = merged.validate();
        if !problems.is_empty() {
            return Err(CatalogError::Invalid(problems));
        }
        Ok(merged)
    }

    /// Makes `catalog` the one [`Catalog::builtin`] answers, for the rest of the process
    /// (once: a process reads its configuration once).
    pub fn install(catalog: Catalog) {
        let _ = INSTALLED.set(catalog);
    }

    /// The entry of `slug`, or of the entry that lists it among its aliases.
    pub fn get(&self, slug: &str) -> Option<&ProviderSpec> {
        self.providers.get(slug).or_else(|| self.providers.values().find(|p| p.aliases.iter().any(|a| a == slug)))
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
        let mut names: BTreeMap<&str, &str> = self.providers.keys().map(|k| (k.as_str(), k.as_str())).collect();
        for p in self.iter() {
            for alias in &p.aliases {
                if let Some(owner) = names.insert(alias.as_str(), p.slug.as_str()) {
                    out.push(format!("{}: aliases: `{alias}` already names `{owner}`", p.slug));
                }
            }
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

/// One path segment: 1-128 of letters, digits, `.`, `-` and `_`, no `..`.
fn check_path_segment(value: &str) -> Result<(), &'static str> {
    if value.is_empty() || value.len() > 128 || value.contains("..") || value.starts_with('.') {
        return Err("must be a path segment of 1 to 128 characters, without '..'");
    }
    if !value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) {
        return Err("may only hold letters, digits, '.', '-' and '_'");
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
