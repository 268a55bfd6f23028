//! The built-in provider catalog: it parses, passes its own validation, holds the
//! providers the service promises, and keeps each provider's quirks.

use std::collections::BTreeMap;

use serde_json::json;

use pipes::oauth::catalog::{BodyContentType, Catalog, CatalogError, ClientAuth, TokenResponseShape};

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn provider(slug: &str) -> &'static pipes::oauth::catalog::ProviderSpec {
    Catalog::builtin().get(slug).unwrap_or_else(|| panic!("the catalog has no `{slug}`"))
}

fn oauth(slug: &str) -> &'static pipes::oauth::catalog::OAuthSpec {
    provider(slug).oauth().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn builtin_catalog_parses_and_has_no_problems() {
    let catalog = Catalog::builtin();
    let problems = catalog.validate();
    assert!(problems.is_empty(), "catalog problems:\n{}", problems.join("\n"));
    assert!(catalog.len() >= 30, "only {} providers", catalog.len());
}

#[test]
fn builtin_catalog_holds_the_promised_providers() {
    for slug in [
        "github",
        "gitlab",
        "bitbucket",
        "slack",
        "discord",
        "google",
        "microsoft",
        "microsoft-tenant",
        "salesforce",
        "hubspot",
        "pipedrive",
        "zendesk",
        "intercom",
        "linear",
        "atlassian",
        "jira",
        "confluence",
        "asana",
        "monday",
        "clickup",
        "notion",
        "airtable",
        "figma",
        "dropbox",
        "box",
        "zoom",
        "calendly",
        "xero",
        "quickbooks",
        "shopify",
        "linkedin",
        "twitter",
        "spotify",
    ] {
        let spec = provider(slug);
        assert_eq!(spec.slug, slug, "slug is filled from the table key");
    }
}

#[test]
fn iteration_is_sorted_by_slug() {
    let slugs: Vec<&str> = Catalog::builtin().iter().map(|p| p.slug.as_str()).collect();
    let mut sorted = slugs.clone();
    sorted.sort_unstable();
    assert_eq!(slugs, sorted);
}

#[test]
fn google_asks_for_offline_access_and_has_workspace_scope_sets() {
    let google = oauth("google");
    assert_eq!(google.authorization_params.get("access_type").map(String::as_str), Some("offline"));
    assert_eq!(google.authorization_params.get("prompt").map(String::as_str), Some("consent"));
    for set in ["gmail", "drive", "calendar"] {
        let scopes = google.scope_set(set).unwrap_or_else(|| panic!("no `{set}` scope set"));
        assert!(scopes.iter().all(|s| s.starts_with("https://www.googleapis.com/auth/")), "{set}: {scopes:?}");
    }
    assert!(google.pkce);
    assert_eq!(google.scope_string(&google.default_scopes).split(' ').count(), google.default_scopes.len());
}

#[test]
fn github_oauth_app_and_notion_tokens_never_expire() {
    assert!(!oauth("github").tokens_expire);
    assert!(!oauth("notion").tokens_expire);
    // GitHub Apps issue expiring user tokens, so they are a separate entry.
    assert!(oauth("github-app").tokens_expire);
    assert!(oauth("google").tokens_expire);
}

#[test]
fn notion_sends_json_with_basic_auth() {
    let notion = oauth("notion");
    assert_eq!(notion.token_body_content_type, BodyContentType::Json);
    assert_eq!(notion.client_auth, ClientAuth::BasicAuthHeader);
    assert_eq!(oauth("github").token_body_content_type, BodyContentType::Form);
}

#[test]
fn slack_user_tokens_use_the_slack_response_shape_and_error_codes() {
    let slack = oauth("slack");
    assert_eq!(slack.token_response, TokenResponseShape::Slack);
    assert_eq!(slack.scope_param, "user_scope", "user tokens need user_scope, not scope");
    assert_eq!(slack.scope_separator, ",");
    assert!(slack.is_invalid_grant("invalid_refresh_token"));
    assert!(slack.is_invalid_grant("invalid_grant"));
    assert!(!slack.is_invalid_grant("ratelimited"));
    assert!(slack.is_invalid_client("bad_client_secret"));
    assert!(slack.is_invalid_client("invalid_client"));
    assert_eq!(oauth("github").token_response, TokenResponseShape::Standard);
}

#[test]
fn every_provider_treats_invalid_grant_as_a_dead_grant() {
    for spec in Catalog::builtin().iter() {
        let Some(o) = &spec.oauth else { continue };
        assert!(o.is_invalid_grant("invalid_grant"), "{}", spec.slug);
        assert!(!o.is_invalid_grant("temporarily_unavailable"), "{}", spec.slug);
    }
    assert!(oauth("hubspot").is_invalid_grant("BAD_REFRESH_TOKEN"));
}

#[test]
fn atlassian_products_ask_for_the_api_audience_and_consent() {
    for slug in ["atlassian", "jira", "confluence"] {
        let spec = oauth(slug);
        assert_eq!(spec.authorization_params.get("audience").map(String::as_str), Some("api.atlassian.com"));
        assert_eq!(spec.authorization_params.get("prompt").map(String::as_str), Some("consent"));
        assert!(spec.default_scopes.iter().any(|s| s == "offline_access"), "{slug} needs a refresh token");
    }
}

#[test]
fn dropbox_asks_for_offline_tokens_and_figma_refreshes_elsewhere() {
    let dropbox = oauth("dropbox");
    assert_eq!(dropbox.authorization_params.get("token_access_type").map(String::as_str), Some("offline"));

    let figma = provider("figma").resolve_urls(&BTreeMap::new()).expect("figma resolves");
    assert_eq!(figma.refresh_token_url.as_str(), "https://api.figma.com/v1/oauth/refresh");
    assert_ne!(figma.refresh_token_url, figma.token_url);
}

#[test]
fn providers_without_placeholders_resolve_to_https_and_refresh_at_the_token_url() {
    for spec in Catalog::builtin().iter().filter(|p| p.config_params.is_empty() && p.oauth.is_some()) {
        let urls = spec.resolve_urls(&BTreeMap::new()).unwrap_or_else(|e| panic!("{}: {e}", spec.slug));
        assert_eq!(urls.authorization_url.scheme(), "https", "{}", spec.slug);
        assert_eq!(urls.token_url.scheme(), "https", "{}", spec.slug);
        if oauth(&spec.slug).refresh_token_url.is_none() {
            assert_eq!(urls.refresh_token_url, urls.token_url, "{}", spec.slug);
        }
    }
}

#[test]
fn zendesk_fills_the_subdomain_and_refuses_other_hosts() {
    let zendesk = provider("zendesk");
    assert_eq!(zendesk.config_params, ["subdomain"]);
    let urls = zendesk.resolve_urls(&params(&[("subdomain", "acme")])).expect("acme resolves");
    assert_eq!(urls.authorization_url.as_str(), "https://acme.zendesk.com/oauth/authorizations/new");
    assert_eq!(urls.token_url.as_str(), "https://acme.zendesk.com/oauth/tokens");

    for evil in ["evil.com/x", "evil.com", "evil.com#", "acme.zendesk.com@evil.com", "", "-acme", "a b"] {
        let err = zendesk.resolve_urls(&params(&[("subdomain", evil)])).expect_err(evil);
        assert!(matches!(&err, CatalogError::InvalidParam { param, .. } if param == "subdomain"), "{evil:?}: {err}");
    }
    let err = zendesk.resolve_urls(&BTreeMap::new()).expect_err("missing subdomain");
    assert!(matches!(&err, CatalogError::MissingParam { param, .. } if param == "subdomain"), "{err}");
    assert!(err.to_string().contains("subdomain"), "the error names the parameter: {err}");
}

#[test]
fn shopify_fills_the_shop_and_refuses_other_hosts() {
    let shopify = provider("shopify");
    let urls = shopify.resolve_urls(&params(&[("shop", "my-store")])).expect("my-store resolves");
    assert_eq!(urls.authorization_url.host_str(), Some("my-store.myshopify.com"));
    assert_eq!(urls.token_url.as_str(), "https://my-store.myshopify.com/admin/oauth/access_token");

    assert!(shopify.resolve_urls(&params(&[("shop", "evil.com/x")])).is_err());
    assert!(shopify.resolve_urls(&params(&[("shop", "evil.com?")])).is_err());
    let err = shopify.resolve_urls(&params(&[("subdomain", "acme")])).expect_err("wrong key");
    assert!(matches!(&err, CatalogError::MissingParam { param, .. } if param == "shop"), "{err}");
}

#[test]
fn microsoft_common_needs_nothing_and_tenant_specific_fills_the_tenant() {
    let common = provider("microsoft").resolve_urls(&BTreeMap::new()).expect("common resolves");
    assert_eq!(common.token_url.as_str(), "https://login.microsoftonline.com/common/oauth2/v2.0/token");

    let tenant = provider("microsoft-tenant");
    for id in ["72f988bf-86f1-41af-91ab-2d7cd011db47", "contoso.onmicrosoft.com", "organizations"] {
        let urls = tenant.resolve_urls(&params(&[("tenant", id)])).expect(id);
        assert_eq!(urls.authorization_url.host_str(), Some("login.microsoftonline.com"));
        assert_eq!(urls.token_url.as_str(), format!("https://login.microsoftonline.com/{id}/oauth2/v2.0/token"));
    }
    for evil in ["evil.com/x", "../common", "a..b", "x?y=1", "x/../../y"] {
        assert!(tenant.resolve_urls(&params(&[("tenant", evil)])).is_err(), "{evil:?} accepted");
    }
    assert!(matches!(tenant.resolve_urls(&BTreeMap::new()), Err(CatalogError::MissingParam { .. })));
}

const BROKEN: &str = r##"
[Bad_Slug]
name = "Bad"
description = "   "
logo_color = "red"
categories = ["nonsense"]
aliases = ["bad"]
sources = []
docs_url = "http://example.com/docs"
setup_steps = []

[Bad_Slug.params.subdomain]
description = "Unused"
kind = "dns_label"

[Bad_Slug.params.tenant]
description = "The tenant"
kind = "path_segment"
values = ["x"]

[Bad_Slug.oauth]
authorization_url = "http://example.com/authorize"
token_url = "https://{region}.example.com/token"
revocation_url = "https://example.com/revoke?x={tenant}"
scope_separator = ";"
default_scopes = []
authorization_params = { client_id = "x" }
client_auth = "request_body"
pkce = false
token_response = "standard"
token_body_content_type = "form"
invalid_grant_errors = ["invalid_refresh_token"]
tokens_expire = false
refresh_token_url = "https://example.com/refresh"

[evil-host]
name = "Evil"
description = "Placeholder owns the whole host."
logo_color = "#000000"
categories = ["security"]
aliases = ["bad"]
sources = ["https://evil.example/docs"]
docs_url = "https://evil.example/apps"
setup_steps = ["Register an app."]

[evil-host.params.host]
description = "The host"
kind = "hostname"

[evil-host.oauth]
authorization_url = "https://{host}/authorize"
token_url = "https://{host}.com/token"
scope_separator = " "
default_scopes = ["read", "read"]
scope_sets = { more = ["read", "write"] }
scope_descriptions = { read = "Read everything." }
client_auth = "basic_auth_header"
pkce = true
token_response = "slack"
token_body_content_type = "json"
invalid_grant_errors = ["invalid_grant"]
tokens_expire = true

[evil-host.api_key]
placement = "header"
header = "Authorization"
format = "Bearer"
"##;

#[test]
fn a_broken_catalog_reports_every_problem_by_entry_and_field() {
    let catalog = Catalog::from_toml_str(BROKEN).expect("schema-valid, content-broken catalog parses");
    let problems = catalog.validate();
    let report = problems.join("\n");
    for expected in [
        "Bad_Slug: slug must be lowercase",
        "Bad_Slug: description is empty",
        "Bad_Slug: logo_color",
        "Bad_Slug: categories: `nonsense` is not one of",
        "Bad_Slug: sources: name the provider's pages",
        "Bad_Slug: docs_url: \"http://example.com/docs\" is not an absolute https URL",
        "Bad_Slug: setup_steps: one or more steps",
        "Bad_Slug: params.tenant: values go with kind one_of only",
        "Bad_Slug: authorization_url: \"http://example.com/authorize\" is not an absolute https URL",
        "Bad_Slug: placeholder {region} is not declared under [params]",
        "Bad_Slug: params.subdomain is declared, but no URL uses it",
        "Bad_Slug: revocation_url: \"https://example.com/revoke?x={tenant}\" has a placeholder in its query",
        "Bad_Slug: scope_separator",
        "Bad_Slug: default_scopes is empty",
        "Bad_Slug: authorization_params may not set `client_id`",
        "Bad_Slug: invalid_grant_errors must include \"invalid_grant\"",
        "Bad_Slug: refresh_token_url is set but tokens_expire is false",
        "evil-host: authorization_url: \"https://{host}/authorize\" must keep a fixed domain",
        "evil-host: token_url: \"https://{host}.com/token\" must keep a fixed domain",
        "evil-host: default_scopes has duplicates",
        "evil-host: scope set `more`: scope `write` has no line in oauth.scope_descriptions",
        "evil-host: api_key: header needs `header` and a `format` with {api_key}",
        "evil-host: aliases: `bad` already names `Bad_Slug`",
    ] {
        assert!(report.contains(expected), "missing {expected:?} in:\n{report}");
    }
}

const GOOD: &str = r##"
[xo]
name = "X"
description = "X"
logo_color = "#000000"
categories = ["developer-tools"]
sources = ["https://x.example.com/docs/oauth"]
docs_url = "https://x.example.com/apps"
setup_steps = ["Register an app with the Pipes redirect URI.", "Copy its client id and secret."]

[xo.oauth]
authorization_url = "https://x.example.com/a"
token_url = "https://x.example.com/t"
scope_separator = " "
default_scopes = ["a"]
scope_descriptions = { a = "Everything." }
client_auth = "request_body"
pkce = false
token_response = "standard"
token_body_content_type = "form"
invalid_grant_errors = ["invalid_grant"]
tokens_expire = true
"##;

#[test]
fn unknown_fields_and_unknown_enum_values_are_parse_errors_naming_the_entry() {
    let typo = GOOD.replace("tokens_expire = true\n", "tokens_expire = true\ntokens_expires = true\n");
    let err = Catalog::from_toml_str(&typo).expect_err("a misspelt key must not be ignored");
    assert!(matches!(err, CatalogError::Entry { ref entry, .. } if entry == "xo"), "{err}");
    assert!(err.to_string().contains("tokens_expires"), "{err}");
    let bad_enum = GOOD.replace("\"request_body\"", "\"query_string\"");
    assert!(matches!(Catalog::from_toml_str(&bad_enum), Err(CatalogError::Entry { .. })));
    // Neither [oauth] nor [api_key]: it parses, and validation names what is missing.
    let neither = Catalog::from_toml_str(GOOD.split("[xo.oauth]").next().unwrap()).expect("parses");
    assert_eq!(neither.validate(), ["xo: an entry needs [oauth], [api_key] or both"]);
    let catalog = Catalog::from_toml_str(GOOD).expect("the entry parses");
    assert!(catalog.validate().is_empty(), "{:?}", catalog.validate());
}

#[test]
fn an_operator_file_adds_and_overrides_entries_checked_with_the_built_in_ones() {
    let dir = std::env::temp_dir().join(format!("pipes-catalog-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("catalog.toml");
    let github = GOOD
        .replace("[xo]", "[github]")
        .replace("[xo.oauth]", "[github.oauth]")
        .replace("name = \"X\"", "name = \"GitHub Enterprise\"");
    std::fs::write(&path, format!("{GOOD}\n{github}")).unwrap();
    let merged = Catalog::with_operator_file(&path).expect("a sound file");
    assert_eq!(merged.len(), Catalog::compiled().len() + 1);
    assert_eq!(merged.get("xo").unwrap().name, "X");
    assert_eq!(merged.get("github").unwrap().name, "GitHub Enterprise");
    // An entry that breaks a rule, or an alias that takes a built-in slug: named with its field.
    let broken =
        GOOD.replace("categories = [\"developer-tools\"]", "categories = [\"developer-tools\"]\naliases = [\"slack\"]");
    std::fs::write(&path, broken.replace("https://x.example.com/t", "http://x.example.com/t")).unwrap();
    let err = Catalog::with_operator_file(&path).expect_err("refused").to_string();
    assert!(err.contains("xo: token_url: \"http://x.example.com/t\" is not an absolute https URL"), "{err}");
    assert!(err.contains("xo: aliases: `slack` already names `slack`"), "{err}");
    assert!(Catalog::with_operator_file(&dir.join("missing.toml")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_entry_says_where_its_facts_come_from_and_how_to_set_it_up() {
    for p in Catalog::builtin().iter() {
        assert!(!p.sources.is_empty() && p.docs_url.starts_with("https://"), "{}", p.slug);
        assert!(!p.setup_steps.is_empty() && !p.categories.is_empty(), "{}", p.slug);
        let Some(o) = &p.oauth else { continue };
        for scope in o.default_scopes.iter().chain(o.scope_sets.values().flatten()) {
            assert!(o.scope_descriptions.contains_key(scope), "{}: {scope} has no description", p.slug);
        }
    }
}

#[test]
fn the_catalog_says_where_a_code_exchange_names_the_providers_account() {
    use pipes::oauth::response::{classify, RawResponse};
    let answer = |slug: &str, body: serde_json::Value| {
        let raw =
            RawResponse { status: 200, retry_after: None, content_type: None, body: body.to_string().into_bytes() };
        classify(oauth(slug), &raw).expect("a token").subject
    };
    let slack = json!({"ok": true, "authed_user": {"id": "U123", "access_token": "xoxp-1", "token_type": "user"}});
    assert_eq!(answer("slack", slack).as_deref(), Some("U123"));
    let salesforce = json!({"access_token": "00D", "id": "https://login.salesforce.com/id/00Dx/005x"});
    assert_eq!(answer("salesforce", salesforce).as_deref(), Some("https://login.salesforce.com/id/00Dx/005x"));
    let notion = json!({"access_token": "secret_1", "owner": {"type": "user", "user": {"id": "u-42"}}});
    assert_eq!(answer("notion", notion).as_deref(), Some("u-42"));
    assert_eq!(answer("dropbox", json!({"access_token": "sl.1", "account_id": "dbid:AA"})).as_deref(), Some("dbid:AA"));
    // An OpenID Connect ID token: its `sub` claim.
    use base64::Engine;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"1098","email":"a@example.com"}"#);
    let google = json!({"access_token": "ya29", "id_token": format!("eyJhbGciOiJSUzI1NiJ9.{claims}.c2ln")});
    assert_eq!(answer("google", google).as_deref(), Some("1098"));
    assert_eq!(answer("microsoft", json!({"access_token": "eyJ0", "id_token": "not-a-jwt"})), None);
    // Where the catalog names nothing, or the answer lacks it, there is no subject.
    assert_eq!(answer("github", json!({"access_token": "gho_1", "id": "7"})), None);
    assert_eq!(answer("notion", json!({"access_token": "secret_1", "owner": {"type": "workspace"}})), None);
}

#[test]
fn the_catalog_says_where_a_code_exchange_names_the_account_for_people() {
    use pipes::oauth::response::{classify, RawResponse};
    let answer = |slug: &str, body: serde_json::Value| {
        let raw =
            RawResponse { status: 200, retry_after: None, content_type: None, body: body.to_string().into_bytes() };
        classify(oauth(slug), &raw).expect("a token").display_name
    };
    let notion = json!({"access_token": "secret_1", "workspace_name": "Acme HQ", "owner": {"type": "workspace"}});
    assert_eq!(answer("notion", notion).as_deref(), Some("Acme HQ"));
    use base64::Engine;
    let claims =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"1098","email":"ada@example.com"}"#);
    let google = json!({"access_token": "ya29", "id_token": format!("eyJhbGciOiJSUzI1NiJ9.{claims}.c2ln")});
    assert_eq!(answer("google", google).as_deref(), Some("ada@example.com"));
    // From the profile (read at connect time), not from the token answer.
    assert_eq!(oauth("github").account_display_name.as_deref(), Some("userinfo.login"));
    assert_eq!(answer("github", json!({"access_token": "gho_1", "login": "octocat"})), None);
}

/// A token endpoint's answer, as the provider documents it, read with its catalog entry.
fn answer(slug: &str, status: u16, body: serde_json::Value) -> Result<pipes::oauth::response::TokenGrant, String> {
    let raw = pipes::oauth::response::RawResponse {
        status,
        retry_after: None,
        content_type: Some("application/json".into()),
        body: body.to_string().into_bytes(),
    };
    pipes::oauth::response::classify(oauth(slug), &raw).map_err(|e| e.label())
}

#[test]
fn token_answers_are_read_with_each_providers_documented_quirks() {
    use pipes::secret::Secret;
    let expose = |s: &Secret| s.expose().to_owned();

    // Slack (oauth.v2.access): the user token under `authed_user`, scopes comma-separated;
    // a failure is HTTP 200 with `ok: false`.
    let slack = answer(
        "slack",
        200,
        json!({"ok": true, "app_id": "A0KRD7HC3", "authed_user": {"id": "U1234", "scope": "chat:write,channels:history",
            "access_token": "xoxp-1234", "token_type": "user", "refresh_token": "xoxe-1-abc", "expires_in": 43200},
            "team": {"id": "T9TK3CUKW", "name": "Slack Softworks"}}),
    )
    .unwrap();
    assert_eq!(expose(&slack.access_token), "xoxp-1234");
    assert_eq!(slack.refresh_token.as_ref().map(expose).as_deref(), Some("xoxe-1-abc"));
    assert_eq!(slack.expires_in, Some(std::time::Duration::from_secs(43200)));
    assert_eq!(slack.scopes, Some(vec!["chat:write".to_owned(), "channels:history".to_owned()]));
    assert_eq!(slack.subject.as_deref(), Some("U1234"));
    assert_eq!(
        answer("slack", 200, json!({"ok": false, "error": "invalid_refresh_token"})).unwrap_err(),
        "invalid_grant:invalid_refresh_token"
    );
    assert_eq!(
        answer("slack", 200, json!({"ok": false, "error": "bad_client_secret"})).unwrap_err(),
        "invalid_client:bad_client_secret"
    );
    assert_eq!(
        answer("slack", 200, json!({"ok": false, "error": "ratelimited"})).unwrap_err(),
        "rejected:ratelimited:200"
    );

    // Naver: `expires_in` is a string of seconds.
    let naver = answer("naver", 200, json!({"access_token": "AAAAQosjWDJieBiQZc3to9YQp6HDLvrmyKC", "refresh_token": "c8ceMEJisO4Se7uGisHoX0f5JEii7JnipglQipkOn5Zp3tyP7dHQoP0zNKHUq2gY", "token_type": "bearer", "expires_in": "3600"})).unwrap();
    assert_eq!(naver.expires_in, Some(std::time::Duration::from_secs(3600)));

    // Salesforce: no `expires_in` at all (the session policy decides); the token is kept
    // without an expiry and renewed when a call is refused.
    let salesforce = answer(
        "salesforce",
        200,
        json!({"access_token": "00DB0000000TfcR!AQQAQFhoK8vTMg", "signature": "d/SxeYBxH0GSVko0HMgcUxuZy0PA2cDDz1u7g7JtDHw=",
            "scope": "refresh_token api", "instance_url": "https://yourInstance.salesforce.com",
            "id": "https://login.salesforce.com/id/00DB0000000TfcRMAS/005B0000005Bk90IAC", "token_type": "Bearer", "issued_at": "1558553873237"}),
    )
    .unwrap();
    assert_eq!(salesforce.expires_in, None);
    assert_eq!(salesforce.refresh_token.as_ref().map(expose), None);
    assert_eq!(salesforce.scopes, Some(vec!["refresh_token".to_owned(), "api".to_owned()]));

    // HubSpot: a dead refresh token is `{"status": "BAD_REFRESH_TOKEN"}` with HTTP 400.
    let hubspot = answer(
        "hubspot",
        400,
        json!({"status": "BAD_REFRESH_TOKEN", "message": "missing or unknown refresh token", "correlationId": "1"}),
    );
    assert_eq!(hubspot.unwrap_err(), "invalid_grant:BAD_REFRESH_TOKEN");

    // GitHub: errors arrive with HTTP 200; an expired refresh token is `bad_refresh_token`.
    let github = answer(
        "github",
        200,
        json!({"error": "bad_refresh_token", "error_description": "The refresh token passed is incorrect or expired."}),
    );
    assert_eq!(github.unwrap_err(), "invalid_grant:bad_refresh_token");
    assert_eq!(
        answer("github", 200, json!({"error": "bad_verification_code"})).unwrap_err(),
        "rejected:bad_verification_code:200"
    );
    // GitHub OAuth-app tokens carry no expiry and no refresh token.
    let plain = answer("github", 200, json!({"access_token": "gho_16C7e42F292c6912E7710c838347Ae178B4a", "scope": "repo,gist", "token_type": "bearer"})).unwrap();
    assert_eq!((plain.expires_in, plain.scopes.map(|s| s.len())), (None, Some(2)));

    // Zendesk (OAuth Tokens for Grant Types): `expires_in` in seconds, scopes space-separated.
    let zendesk = answer("zendesk", 200, json!({"access_token": "gErypPlm4dOVgGRvA1ZzMH5MQ3nLo8bo", "refresh_token": "31048ba4d7c601302f3173f243da835f", "token_type": "bearer", "scope": "read write", "expires_in": 172800, "refresh_token_expires_in": 800000})).unwrap();
    assert_eq!(zendesk.expires_in, Some(std::time::Duration::from_secs(172800)));
    assert_eq!(zendesk.scopes, Some(vec!["read".to_owned(), "write".to_owned()]));

    // Any provider: RFC 6749 §5.2 errors, 5xx and 429 are transient, unreadable 2xx too.
    assert_eq!(answer("notion", 400, json!({"error": "invalid_grant"})).unwrap_err(), "invalid_grant:invalid_grant");
    assert_eq!(answer("notion", 401, json!({"error": "invalid_client"})).unwrap_err(), "invalid_client:invalid_client");
    assert_eq!(answer("notion", 503, json!({})).unwrap_err(), "transient:server_error:503");
    assert_eq!(answer("notion", 429, json!({})).unwrap_err(), "transient:rate_limited:429");
    assert_eq!(answer("notion", 200, json!({"token_type": "bearer"})).unwrap_err(), "transient:no_access_token:200");
}

#[test]
fn api_key_entries_load_without_oauth_and_say_where_the_key_goes() {
    let catalog = Catalog::builtin();
    let keys_only: Vec<_> = catalog.iter().filter(|p| p.oauth.is_none()).collect();
    assert!(keys_only.len() >= 50, "only {} API-key providers", keys_only.len());
    for p in &keys_only {
        let key = p.api_key.as_ref().unwrap_or_else(|| panic!("{} has neither [oauth] nor [api_key]", p.slug));
        assert!(key.check_placement().is_ok(), "{}", p.slug);
        assert!(matches!(p.oauth(), Err(CatalogError::NoOAuth { .. })), "{}", p.slug);
    }
    // Stripe's secret key goes in a Bearer header and is checked against the balance.
    let stripe = provider("stripe").api_key.as_ref().unwrap();
    assert_eq!((stripe.header.as_deref(), stripe.format.as_deref()), (Some("Authorization"), Some("Bearer {api_key}")));
    let verify = stripe.verify.as_ref().unwrap();
    assert_eq!((verify.method.as_str(), verify.url.as_str()), ("GET", "https://api.stripe.com/v1/balance"));
}

#[test]
fn a_nested_token_answer_is_read_at_its_token_path() {
    // Withings-shaped: the tokens inside `body`, a status beside them.
    let mut nested = oauth("github").clone();
    nested.token_response = TokenResponseShape::Nested;
    nested.token_path = Some("body".into());
    nested.scope_separator = ",".into();
    let raw = pipes::oauth::response::RawResponse {
        status: 200,
        retry_after: None,
        content_type: Some("application/json".into()),
        body: json!({"status": 0, "body": {"userid": "363", "access_token": "a075f8c14fb8df40b08ebc8508533dc332a6910a",
            "refresh_token": "f631236f02b991810feb774765b6ae8e6c6839ca", "expires_in": 10800, "scope": "user.info,user.metrics",
            "token_type": "Bearer"}})
        .to_string()
        .into_bytes(),
    };
    let grant = pipes::oauth::response::classify(&nested, &raw).expect("a token");
    assert_eq!(grant.access_token.expose(), "a075f8c14fb8df40b08ebc8508533dc332a6910a");
    assert_eq!(grant.expires_in, Some(std::time::Duration::from_secs(10800)));
    assert_eq!(grant.scopes, Some(vec!["user.info".to_owned(), "user.metrics".to_owned()]));
}

#[test]
fn token_params_and_token_paths_are_checked() {
    let with = |extra: &str, oauth_extra: &str| {
        let entry = GOOD.replace("tokens_expire = true\n", &format!("tokens_expire = true\n{oauth_extra}\n"));
        let catalog = Catalog::from_toml_str(&format!("{entry}{extra}")).expect("parses");
        catalog.validate()
    };
    assert!(with("", "token_params = { action = \"requesttoken\" }").is_empty());
    let problems = with("", "token_params = { grant_type = \"password\", empty = \"\" }");
    assert!(problems.iter().any(|p| p.contains("token_params may not set `grant_type`")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("token_params.empty is empty")), "{problems:?}");
    let problems = with("", "token_path = \"body\"");
    assert!(problems.iter().any(|p| p.contains("token_path goes with token_response nested only")), "{problems:?}");
    let nested = GOOD.replace("token_response = \"standard\"", "token_response = \"nested\"");
    let problems = Catalog::from_toml_str(&nested).expect("parses").validate();
    assert!(problems.iter().any(|p| p.contains("token_response nested needs token_path")), "{problems:?}");
}
