//! The field checks behind `validate_create` and `validate_update`. A
//! `Checker` collects every problem, so one 422 names all bad fields at once.

use url::Url;

use super::{parse_client_auth, parse_content_type, CustomProviderInput, IntegrationDraft};
use crate::auth_method::AuthMethod;
use crate::invalid::FieldError;
use crate::oauth::catalog::{BodyContentType, Catalog, CatalogError, ClientAuth, SCOPE_SEPARATORS};
use crate::outbound::{self, Schemes};
use crate::secret::Secret;
use crate::store::integrations::{CredentialsType, CustomProvider};

const MAX_SCOPES: usize = 100;
const MAX_SCOPE_LEN: usize = 200;
const MAX_TEXT: usize = 2000;
/// Longest API key or client secret taken.
pub(crate) const MAX_SECRET: usize = 4096;
/// Authorization parameters Pipes sets itself; an integration may not override them.
const RESERVED_PARAMS: [&str; 7] =
    ["response_type", "client_id", "redirect_uri", "state", "scope", "code_challenge", "code_challenge_method"];

pub(super) struct Checker {
    errors: Vec<FieldError>,
    /// `PIPES_ALLOW_PRIVATE_NETWORK`: endpoints may be plain http and internal.
    allow_private: bool,
}

impl Checker {
    pub(super) fn new(allow_private: bool) -> Self {
        Checker { errors: Vec::new(), allow_private }
    }

    pub(super) fn push(&mut self, field: &str, code: &str, message: impl Into<String>) {
        self.errors.push(FieldError::new(field, code, message));
    }

    pub(super) fn finish<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(self.errors)
        }
    }

    /// A slug: 1-64 of lowercase letters, digits, `-` and `_`, starting with a letter or digit.
    pub(super) fn slug(&mut self, field: &str, value: Option<&str>) -> Option<String> {
        let Some(value) = value else {
            self.push(field, "required", "The provider slug is required.");
            return None;
        };
        let ok = (1..=64).contains(&value.len())
            && value.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !ok {
            self.push(
                field,
                "invalid",
                "A slug is 1-64 lowercase letters, digits, '-' or '_', starting with a letter or digit.",
            );
            return None;
        }
        // `/data-integrations/finish` is a route of its own.
        if value == "finish" {
            self.push(field, "reserved", "`finish` is reserved: POST /data-integrations/finish finishes connections.");
            return None;
        }
        Some(value.to_owned())
    }

    /// A list that may only be `[only]`.
    /// `auth_methods`: one method (an integration authenticates its accounts one way), default `oauth`.
    pub(super) fn auth_method(&mut self, value: Option<&[String]>) -> AuthMethod {
        match value {
            None => AuthMethod::OAuth,
            Some([one]) => AuthMethod::parse(one).unwrap_or_else(|| {
                self.push(
                    "auth_methods",
                    "invalid",
                    format!("Unknown auth method `{one}`: use `oauth`, `api_key` or `client_credentials`."),
                );
                AuthMethod::OAuth
            }),
            Some(_) => {
                self.push(
                    "auth_methods",
                    "invalid",
                    "Name exactly one auth method: an integration authenticates its accounts one way.",
                );
                AuthMethod::OAuth
            }
        }
    }

    /// Whether the catalog provider can authenticate accounts with `method`: API keys need
    /// the entry to say where the key goes; OAuth and client credentials its `[oauth]`.
    pub(super) fn method_fits_provider(
        &mut self,
        method: AuthMethod,
        catalog: Option<&crate::oauth::catalog::ProviderSpec>,
    ) {
        let Some(spec) = catalog else { return };
        match method {
            AuthMethod::ApiKey if spec.api_key.is_none() => self.push(
                "auth_methods",
                "unsupported",
                format!("{} takes no API keys (the catalog entry has no `api_key`).", spec.name),
            ),
            AuthMethod::OAuth | AuthMethod::ClientCredentials if spec.oauth.is_none() => self.push(
                "auth_methods",
                "unsupported",
                format!("{} takes API keys only: use `auth_methods: [\"api_key\"]`.", spec.name),
            ),
            _ => {}
        }
    }

    /// An `api_key` block: a key (1-4096 characters) for a user.
    pub(super) fn api_key(&mut self, input: &super::ApiKeyInstall) -> Option<super::KeyInstall> {
        let secret = match &input.secret {
            Some(s) if !s.expose().trim().is_empty() && s.expose().len() <= MAX_SECRET => Some(s.clone()),
            Some(_) => {
                self.push("api_key.secret", "invalid", format!("The API key must be 1-{MAX_SECRET} characters."));
                None
            }
            None => {
                self.push("api_key.secret", "required", "The API key is required.");
                None
            }
        };
        let user_id = match &input.user_id {
            Some(id) if self.text("api_key.user_id", id, 256) => Some(id.clone()),
            Some(_) => None,
            None => {
                self.push("api_key.user_id", "required", "The user whose key it is is required.");
                None
            }
        };
        if let Some(org) = &input.organization_id {
            self.text("api_key.organization_id", org, 256);
        }
        Some(super::KeyInstall { secret: secret?, user_id: user_id?, organization_id: input.organization_id.clone() })
    }

    fn text(&mut self, field: &str, value: &str, max: usize) -> bool {
        if value.trim().is_empty() {
            self.push(field, "required", "Must not be empty.");
            false
        } else if value.chars().count() > max || value.chars().any(char::is_control) {
            self.push(field, "invalid", format!("At most {max} characters, no control characters."));
            false
        } else {
            true
        }
    }

    /// An endpoint: absolute https on a host outside this machine and its network
    /// (`crate::outbound`), unless private networks are allowed (development).
    pub(super) fn endpoint(&mut self, field: &str, value: &str) {
        let url = match Url::parse(value.trim()) {
            Ok(url) => url,
            Err(e) => return self.push(field, "invalid_url", format!("Not an absolute URL: {e}.")),
        };
        if let Err(err) = outbound::check_url(&url, Schemes::Https, self.allow_private) {
            self.push(field, err.code(), format!("The URL {err}."));
        } else if url.fragment().is_some() || value.contains(['{', '}']) {
            self.push(field, "invalid_url", "The URL must be static, without a fragment or placeholders.");
        }
    }

    fn required_url(&mut self, field: &str, value: Option<&String>) -> String {
        match value {
            Some(v) => {
                self.endpoint(field, v);
                v.trim().to_owned()
            }
            None => {
                self.push(field, "required", "Required.");
                String::new()
            }
        }
    }

    /// Merges `input` over `current` (update) or defaults (create) and checks the result.
    pub(super) fn custom_provider(
        &mut self,
        input: &CustomProviderInput,
        current: Option<&CustomProvider>,
        method: AuthMethod,
    ) -> Option<CustomProvider> {
        let f = |name: &str| format!("custom_provider.{name}");
        let name = input.name.clone().or_else(|| current.map(|c| c.name.clone())).unwrap_or_default();
        self.text(&f("name"), &name, 200);
        // An empty string clears it.
        let api_base_url = match &input.api_base_url {
            Some(v) if v.trim().is_empty() => None,
            Some(v) => {
                self.endpoint(&f("api_base_url"), v);
                Some(v.trim().trim_end_matches('/').to_owned())
            }
            None => current.and_then(|c| c.api_base_url.clone()),
        };
        if method == AuthMethod::ApiKey {
            return self.api_key_provider(input, current, name, api_base_url);
        }
        if input.api_key.is_some() {
            self.push(&f("api_key"), "not_allowed", "Only an `api_key` integration says where keys go.");
        }
        let authorization_url = input.authorization_url.as_ref().or(current.map(|c| &c.authorization_url));
        let authorization_url = match (method, authorization_url) {
            // The client_credentials grant sends no user anywhere: only the token endpoint counts.
            (AuthMethod::ClientCredentials, None) => String::new(),
            (AuthMethod::ClientCredentials, Some(url)) if url.trim().is_empty() => String::new(),
            (_, url) => self.required_url(&f("authorization_url"), url),
        };
        let token_url = self.required_url(&f("token_url"), input.token_url.as_ref().or(current.map(|c| &c.token_url)));
        let mut optional_url = |name: &str, new: &Option<String>, old: Option<&Option<String>>| {
            // An empty string clears an optional endpoint.
            let value = match new {
                Some(v) if v.trim().is_empty() => None,
                Some(v) => Some(v.trim().to_owned()),
                None => old.cloned().flatten(),
            };
            if let Some(v) = &value {
                self.endpoint(&f(name), v);
            }
            value
        };
        let refresh_token_url =
            optional_url("refresh_token_url", &input.refresh_token_url, current.map(|c| &c.refresh_token_url));
        let revocation_url = optional_url("revocation_url", &input.revocation_url, current.map(|c| &c.revocation_url));
        let separator = input
            .request_scope_separator
            .clone()
            .or_else(|| current.map(|c| c.request_scope_separator.clone()))
            .unwrap_or_else(|| " ".into());
        if !SCOPE_SEPARATORS.contains(&separator.as_str()) {
            self.push(&f("request_scope_separator"), "invalid", "Use \" \", \",\" or \"+\".");
        }
        let token_body_content_type = match &input.token_body_content_type {
            Some(v) => parse_content_type(v).unwrap_or_else(|| {
                self.push(
                    &f("token_body_content_type"),
                    "invalid",
                    "Use form (application/x-www-form-urlencoded) or json (application/json).",
                );
                BodyContentType::Form
            }),
            None => current.map_or(BodyContentType::Form, |c| c.token_body_content_type),
        };
        let authenticate_via = match &input.authenticate_via {
            Some(v) => parse_client_auth(v).unwrap_or_else(|| {
                self.push(&f("authenticate_via"), "invalid", "Use request_body or basic_auth_header.");
                ClientAuth::RequestBody
            }),
            None => current.map_or(ClientAuth::RequestBody, |c| c.authenticate_via),
        };
        let params = input
            .additional_authorization_parameters
            .clone()
            .or_else(|| current.map(|c| c.additional_authorization_parameters.clone()))
            .unwrap_or_default();
        for key in params.keys() {
            if key.trim().is_empty() || RESERVED_PARAMS.contains(&key.as_str()) {
                self.push(
                    &f(&format!("additional_authorization_parameters.{key}")),
                    "not_allowed",
                    "Pipes sets this parameter itself.",
                );
            }
        }
        Some(CustomProvider {
            name: name.trim().to_owned(),
            authorization_url,
            token_url,
            refresh_token_url,
            revocation_url,
            // WorkOS defaults: PKCE on, a client secret required.
            pkce_enabled: input.pkce_enabled.or(current.map(|c| c.pkce_enabled)).unwrap_or(true),
            request_scope_separator: separator,
            scopes_required: input.scopes_required.or(current.map(|c| c.scopes_required)).unwrap_or(false),
            client_secret_required: input
                .client_secret_required
                .or(current.map(|c| c.client_secret_required))
                .unwrap_or(true),
            additional_authorization_parameters: params,
            token_body_content_type,
            authenticate_via,
            api_key: None,
            api_base_url,
        })
    }

    /// A custom provider of API keys: a name and where keys go, no OAuth endpoints.
    fn api_key_provider(
        &mut self,
        input: &CustomProviderInput,
        current: Option<&CustomProvider>,
        name: String,
        api_base_url: Option<String>,
    ) -> Option<CustomProvider> {
        let oauth_fields = [
            ("authorization_url", input.authorization_url.is_some()),
            ("token_url", input.token_url.is_some()),
            ("refresh_token_url", input.refresh_token_url.is_some()),
            ("revocation_url", input.revocation_url.is_some()),
            ("pkce_enabled", input.pkce_enabled.is_some()),
            ("request_scope_separator", input.request_scope_separator.is_some()),
            ("scopes_required", input.scopes_required.is_some()),
            ("client_secret_required", input.client_secret_required.is_some()),
            ("additional_authorization_parameters", input.additional_authorization_parameters.is_some()),
            ("token_body_content_type", input.token_body_content_type.is_some()),
            ("authenticate_via", input.authenticate_via.is_some()),
        ];
        for (field, _) in oauth_fields.iter().filter(|(_, given)| *given) {
            self.push(
                &format!("custom_provider.{field}"),
                "not_allowed",
                "An API-key provider has no OAuth endpoints or settings.",
            );
        }
        let Some(key) = input.api_key.clone().or_else(|| current.and_then(|c| c.api_key.clone())) else {
            self.push("custom_provider.api_key", "required", "Say where the provider takes the key (`placement`).");
            return None;
        };
        if let Err(why) = key.check_placement() {
            self.push("custom_provider.api_key", "invalid", why);
        }
        if let Some(verify) = &key.verify {
            if !matches!(verify.method.as_str(), "GET" | "POST" | "HEAD") {
                self.push("custom_provider.api_key.verify.method", "invalid", "Use GET, POST or HEAD.");
            }
            self.endpoint("custom_provider.api_key.verify.url", &verify.url);
        }
        Some(CustomProvider {
            name: name.trim().to_owned(),
            authorization_url: String::new(),
            token_url: String::new(),
            refresh_token_url: None,
            revocation_url: None,
            pkce_enabled: false,
            request_scope_separator: " ".to_owned(),
            scopes_required: false,
            client_secret_required: false,
            additional_authorization_parameters: Default::default(),
            token_body_content_type: BodyContentType::Form,
            authenticate_via: ClientAuth::RequestBody,
            api_key: Some(key),
            api_base_url,
        })
    }

    /// `credentials.type`: `custom` (default, the application's own OAuth app) or
    /// `organization` (each organization's, which then takes no client id or secret here).
    pub(super) fn credentials_type(&mut self, input: Option<&super::CredentialsInput>) -> CredentialsType {
        let Some(input) = input else { return CredentialsType::Custom };
        match input.kind.as_deref() {
            None | Some("custom") => CredentialsType::Custom,
            Some("organization") => {
                for (field, given) in [
                    ("credentials.client_id", input.client_id.is_some()),
                    ("credentials.client_secret", input.client_secret.is_some()),
                ] {
                    if given {
                        self.push(
                            field,
                            "not_allowed",
                            "With organization credentials, each organization brings its own.",
                        );
                    }
                }
                CredentialsType::Organization
            }
            Some(_) => {
                self.push("credentials.type", "invalid", "`credentials.type` is `custom` or `organization`.");
                CredentialsType::Custom
            }
        }
    }

    /// Client id and secret from `input`, falling back to `current` (update).
    pub(super) fn credentials(
        &mut self,
        input: &super::CredentialsInput,
        current: Option<(&String, Option<&Secret>)>,
    ) -> (Option<String>, Option<Secret>) {
        let client_id = input.client_id.clone().or_else(|| current.map(|(id, _)| id.clone()));
        match &client_id {
            Some(id) => {
                self.text("credentials.client_id", id, 512);
            }
            None => self.push("credentials.client_id", "required", "The OAuth client id is required."),
        }
        let secret = match &input.client_secret {
            Some(s) if s.expose().trim().is_empty() || s.expose().len() > 2048 => {
                self.push("credentials.client_secret", "invalid", "The client secret must be 1-2048 characters.");
                None
            }
            Some(s) => Some(s.clone()),
            None => current.and_then(|(_, s)| s.cloned()),
        };
        (client_id.map(|id| id.trim().to_owned()), secret)
    }

    /// Whole-draft rules: description, scopes, config, the secret requirement.
    pub(super) fn draft(&mut self, d: &mut IntegrationDraft, provider_known: bool) {
        if d.description.chars().count() > MAX_TEXT {
            self.push("description", "invalid", format!("At most {MAX_TEXT} characters."));
        }
        let catalog = if d.custom_provider.is_none() { Catalog::builtin().get(&d.provider) } else { None };
        let separator = match (&d.custom_provider, catalog) {
            (Some(c), _) => c.request_scope_separator.clone(),
            (None, Some(spec)) => spec.oauth.as_ref().map_or_else(|| " ".to_owned(), |o| o.scope_separator.clone()),
            (None, None) => " ".to_owned(),
        };
        if d.auth_method == AuthMethod::ApiKey && !d.scopes.is_empty() {
            self.push("scopes", "not_allowed", "An API key carries no OAuth scopes.");
        }
        if d.scopes.len() > MAX_SCOPES {
            self.push("scopes", "invalid", format!("At most {MAX_SCOPES} scopes."));
        }
        for (i, scope) in d.scopes.iter().enumerate() {
            let bad_char =
                |c: char| c.is_whitespace() || c.is_control() || c == '"' || c == '\\' || separator.contains(c);
            if scope.is_empty() || scope.len() > MAX_SCOPE_LEN || scope.chars().any(bad_char) {
                self.push(
                    &format!("scopes[{i}]"),
                    "invalid",
                    "A scope is 1-200 characters without spaces, quotes or the provider's separator.",
                );
            }
        }
        let mut seen = std::collections::HashSet::new();
        d.scopes.retain(|s| seen.insert(s.clone()));
        if d.custom_provider.as_ref().is_some_and(|c| c.scopes_required) && d.scopes.is_empty() {
            self.push("scopes", "required", "This provider requires at least one scope.");
        }
        // Only an integration with its own OAuth app has a secret of its own.
        let secret_required = d.auth_method == AuthMethod::OAuth
            && d.credentials_type == CredentialsType::Custom
            && d.custom_provider.as_ref().is_none_or(|c| c.client_secret_required);
        if secret_required && d.client_secret.is_none() && provider_known {
            self.push("credentials.client_secret", "required", "The OAuth client secret is required.");
        }
        match catalog {
            Some(spec) => {
                for key in d.settings.keys() {
                    if !spec.config_params.contains(key) {
                        self.push(
                            &format!("config.{key}"),
                            "unknown",
                            format!("{} takes no config `{key}`.", spec.name),
                        );
                    }
                }
                // The values fill the OAuth endpoints, or a key provider's verification URL.
                let resolved = match &spec.oauth {
                    Some(_) => spec.resolve_urls(&d.settings).map(drop),
                    None => spec.verify_url(&d.settings).map(drop),
                };
                match resolved {
                    Ok(()) => {}
                    // Each organization names its own instance with its app.
                    Err(CatalogError::MissingParam { .. }) if d.credentials_type == CredentialsType::Organization => {}
                    Err(CatalogError::MissingParam { param, .. }) => self.push(
                        &format!("config.{param}"),
                        "required",
                        format!("{} needs config `{param}`.", spec.name),
                    ),
                    Err(CatalogError::InvalidParam { param, reason, .. }) => {
                        self.push(&format!("config.{param}"), "invalid", format!("config `{param}` {reason}."))
                    }
                    Err(e) => self.push("config", "invalid", e.to_string()),
                }
            }
            None if !d.settings.is_empty() => {
                self.push("config", "not_allowed", "Custom providers take no config values.")
            }
            None => {}
        }
    }
}
