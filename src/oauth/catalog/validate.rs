//! The catalog's content rules: what `Catalog::validate` reports for one entry.
//!
//! Parsing already enforces the schema (field names, enum values); these rules
//! cover what types cannot: https URLs, placeholders declared and confined to a
//! subdomain or path segment, known scope separators, `invalid_grant` listed.

use std::collections::BTreeSet;

use url::Url;

use super::{
    check_hostname, template_host, ApiKeySpec, KeyPlacement, OAuthSpec, ParamKind, ProviderSpec, TokenResponseShape,
    CATEGORIES, SCOPE_SEPARATORS,
};

/// Token request fields Pipes sets itself; a catalog entry may not override them.
const RESERVED_TOKEN_PARAMS: [&str; 8] =
    ["grant_type", "code", "redirect_uri", "client_id", "client_secret", "refresh_token", "code_verifier", "scope"];

/// Authorization query keys Pipes sets itself; a catalog entry may not override them.
const RESERVED_AUTHORIZATION_PARAMS: [&str; 7] =
    ["response_type", "client_id", "redirect_uri", "state", "scope", "code_challenge", "code_challenge_method"];

impl ProviderSpec {
    /// Every problem with this entry, each prefixed with the slug.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut problem = |msg: String| out.push(format!("{}: {msg}", self.slug));

        if !is_slug(&self.slug) {
            problem("slug must be lowercase [a-z0-9-], not starting or ending with '-'".into());
        }
        for (field, value) in [("name", &self.name), ("description", &self.description)] {
            if value.trim().is_empty() {
                problem(format!("{field} is empty"));
            }
        }
        if self.categories.is_empty() {
            problem("categories: at least one".into());
        }
        for c in &self.categories {
            if !CATEGORIES.contains(&c.as_str()) {
                problem(format!("categories: `{c}` is not one of providers/README.md's"));
            }
        }
        for alias in &self.aliases {
            if !is_slug(alias) || *alias == self.slug {
                problem(format!("aliases: `{alias}` is not another slug"));
            }
        }
        if self.sources.is_empty() {
            problem("sources: name the provider's pages the facts come from".into());
        }
        for (field, url) in self.sources.iter().map(|u| ("sources", u)).chain([("docs_url", &self.docs_url)]) {
            if !Url::parse(url).is_ok_and(|u| u.scheme() == "https" && u.host_str().is_some()) {
                problem(format!("{field}: {url:?} is not an absolute https URL"));
            }
        }
        if self.setup_steps.is_empty() || self.setup_steps.iter().any(|s| s.trim().is_empty()) {
            problem("setup_steps: one or more steps, none empty".into());
        }
        for host in &self.api_hosts {
            if check_hostname(host).is_err() || !host.contains('.') {
                problem(format!("api_hosts: `{host}` is not a host name"));
            }
        }
        for (name, param) in &self.params {
            if param.description.trim().is_empty() {
                problem(format!("params.{name}.description is empty"));
            }
            match (param.kind, param.values.is_empty()) {
                (ParamKind::OneOf, true) => problem(format!("params.{name}: kind one_of needs values")),
                (ParamKind::OneOf, false) | (_, true) => {}
                (_, false) => problem(format!("params.{name}: values go with kind one_of only")),
            }
        }
        if let Some(key) = &self.api_key {
            if let Err(why) = key.check_placement() {
                problem(format!("api_key: {why}"));
            }
            if let Some(verify) = &key.verify {
                if !matches!(verify.method.as_str(), "GET" | "POST" | "HEAD") {
                    problem(format!("api_key.verify.method `{}` is not GET, POST or HEAD", verify.method));
                }
            }
        }
        let color = self.logo_color.strip_prefix('#').unwrap_or("");
        if color.len() != 6 || !color.chars().all(|c| c.is_ascii_hexdigit()) {
            problem(format!("logo_color {:?} is not #RRGGBB", self.logo_color));
        }

        let mut used = BTreeSet::new();
        for (field, template) in self.url_templates() {
            match placeholders(template) {
                Ok(names) => used.extend(names),
                Err(e) => problem(format!("{field}: {e}")),
            }
            if let Err(e) = check_template(template) {
                problem(format!("{field}: {e}"));
            }
        }
        let declared: BTreeSet<String> = self.config_params.iter().cloned().collect();
        for name in used.difference(&declared) {
            problem(format!("placeholder {{{name}}} is not declared under [params]"));
        }
        for name in declared.difference(&used) {
            problem(format!("params.{name} is declared, but no URL uses it"));
        }

        match &self.oauth {
            Some(oauth) => oauth.problems(&mut problem),
            None if self.api_key.is_none() => problem("an entry needs [oauth], [api_key] or both".into()),
            None => {}
        }
        out
    }
}

impl OAuthSpec {
    /// The `[oauth]` table's rules; each problem goes to `problem`.
    fn problems(&self, problem: &mut impl FnMut(String)) {
        if !SCOPE_SEPARATORS.contains(&self.scope_separator.as_str()) {
            problem(format!("scope_separator {:?} is not one of {SCOPE_SEPARATORS:?}", self.scope_separator));
        }
        if !is_param_name(&self.scope_param) {
            problem(format!("scope_param {:?} is not a parameter name", self.scope_param));
        }
        if self.default_scopes.is_empty() && !self.scopes_configured_at_provider {
            problem(
                "default_scopes is empty (set scopes_configured_at_provider if scopes live in the app's settings)"
                    .into(),
            );
        }
        let mut scope_lists = vec![("default_scopes".to_owned(), &self.default_scopes)];
        for (name, scopes) in &self.scope_sets {
            if !is_param_name(name) {
                problem(format!("scope set name {name:?} must be lowercase [a-z0-9_]"));
            }
            if scopes.is_empty() {
                problem(format!("scope set `{name}` is empty"));
            }
            scope_lists.push((format!("scope set `{name}`"), scopes));
        }
        for (what, scopes) in scope_lists {
            for scope in scopes {
                if scope.is_empty()
                    || scope.chars().any(char::is_whitespace)
                    || scope.contains(self.scope_separator.as_str())
                {
                    problem(format!("{what}: scope {scope:?} is empty or contains whitespace or the separator"));
                }
            }
            if scopes.iter().collect::<BTreeSet<_>>().len() != scopes.len() {
                problem(format!("{what} has duplicates"));
            }
            for scope in scopes {
                if self.scope_descriptions.get(scope).is_none_or(|d| d.trim().is_empty()) {
                    problem(format!("{what}: scope `{scope}` has no line in oauth.scope_descriptions"));
                }
            }
        }

        for (key, value) in &self.authorization_params {
            if RESERVED_AUTHORIZATION_PARAMS.contains(&key.as_str()) || *key == self.scope_param {
                problem(format!("authorization_params may not set `{key}`; Pipes sets it"));
            }
            if value.is_empty() {
                problem(format!("authorization_params.{key} is empty"));
            }
        }
        for (key, value) in &self.token_params {
            if RESERVED_TOKEN_PARAMS.contains(&key.as_str()) || !is_param_name(key) {
                problem(format!("token_params may not set `{key}`; Pipes sets it, or it is not a field name"));
            }
            if value.is_empty() {
                problem(format!("token_params.{key} is empty"));
            }
        }
        match (self.token_response, &self.token_path) {
            (TokenResponseShape::Nested, None) => problem("token_response nested needs token_path".into()),
            (TokenResponseShape::Nested, Some(path)) if path.split('.').any(|k| k.is_empty() || !is_param_name(k)) => {
                problem(format!("token_path {path:?} must be dotted lowercase field names"))
            }
            (TokenResponseShape::Standard | TokenResponseShape::Slack, Some(_)) => {
                problem("token_path goes with token_response nested only".into())
            }
            _ => {}
        }
        if !self.is_invalid_grant("invalid_grant") {
            problem("invalid_grant_errors must include \"invalid_grant\"".into());
        }
        for codes in [&self.invalid_grant_errors, &self.invalid_client_errors] {
            if codes.iter().any(|c| c.trim().is_empty()) {
                problem("error code lists may not hold empty codes".into());
            }
        }
        let from_userinfo = [&self.account_identifier, &self.account_display_name]
            .iter()
            .any(|path| path.as_deref().is_some_and(|p| p.starts_with("userinfo.")));
        if from_userinfo != self.userinfo_url.is_some() {
            problem("account_identifier or account_display_name `userinfo.…` and userinfo_url go together".into());
        }
        if !self.tokens_expire && self.refresh_token_url.is_some() {
            problem("refresh_token_url is set but tokens_expire is false".into());
        }
    }
}

impl ApiKeySpec {
    /// Whether the fields the placement needs are there and well formed.
    pub fn check_placement(&self) -> Result<(), &'static str> {
        let ok = match self.placement {
            KeyPlacement::Header => {
                self.header.as_deref().is_some_and(is_header_name)
                    && self.format.as_deref().is_some_and(|f| f.contains("{api_key}"))
            }
            KeyPlacement::Query => self.query_param.as_deref().is_some_and(|q| !q.is_empty()),
            KeyPlacement::Basic => matches!(self.basic.as_deref(), Some("username" | "password")),
        };
        if ok {
            Ok(())
        } else {
            Err("header needs `header` and a `format` with {api_key}; query a `query_param`; basic `basic` = username or password")
        }
    }
}

/// An HTTP header name (RFC 9110 token characters).
fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

/// The `{name}` placeholders of a template, or why they are malformed.
fn placeholders(template: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        if rest[..start].contains('}') {
            return Err("unbalanced '}'".into());
        }
        let after = &rest[start.saturating_add(1)..];
        let end = after.find('}').ok_or("unclosed '{'")?;
        let name = &after[..end];
        if !is_param_name(name) {
            return Err(format!("placeholder {{{name}}} must be lowercase [a-z0-9_]"));
        }
        names.push(name.to_owned());
        rest = &after[end.saturating_add(1)..];
    }
    if rest.contains('}') {
        return Err("unbalanced '}'".into());
    }
    Ok(names)
}

/// Checks that a template is an absolute https URL once filled, with
/// placeholders only in the host (under a fixed domain) or the path.
fn check_template(template: &str) -> Result<(), String> {
    if !template.starts_with("https://") {
        return Err(format!("{template:?} is not an absolute https URL"));
    }
    let host = template_host(template);
    if let Some(end) = host.rfind('}') {
        // "{subdomain}.zendesk.com": the value must be followed by a fixed,
        // registrable domain, so it can only choose a subdomain of it.
        let fixed = &host[end.saturating_add(1)..];
        if !fixed.starts_with('.') || fixed.matches('.').count() < 2 {
            return Err(format!("{template:?} must keep a fixed domain after the host placeholder"));
        }
    }
    let query_start = template.find(['?', '#']).unwrap_or(template.len());
    if template[query_start..].contains('{') {
        return Err(format!("{template:?} has a placeholder in its query or fragment"));
    }
    let sample = template.replace(['{', '}'], "");
    let url = Url::parse(&sample).map_err(|e| format!("{template:?} is not a valid URL: {e}"))?;
    if url.host_str().is_none() || !url.username().is_empty() || url.password().is_some() || url.port().is_some() {
        return Err(format!("{template:?} must have a plain host (no credentials or port)"));
    }
    Ok(())
}

fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_param_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}
