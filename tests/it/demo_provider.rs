//! The demo provider behaves as a real, strict OAuth 2.0 server: code flow with PKCE, client
//! authentication, rotation with reuse detection, revocation, injected faults, response shapes
//! and the interactive login → consent → redirect pages.

use std::sync::Once;
use std::time::Duration;

use anyhow::{Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use pipes::demo_provider::{
    ClientAuthMethod, ClientRegistration, DemoConfig, DemoProvider, Fault, IssuedTokens, Shape,
};
use reqwest::header::{HeaderMap, CACHE_CONTROL, COOKIE, LOCATION, RETRY_AFTER, SET_COOKIE, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use url::Url;

const CLIENT_ID: &str = "app";
const SECRET: &str = "app-secret";
const REDIRECT: &str = "http://app.test/callback";
const VERIFIER: &str = "verifier-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFG";

fn http() -> Result<reqwest::Client> {
    static TLS: Once = Once::new();
    TLS.call_once(|| {
        // Another test may have installed it first; either way one provider is in place.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    Ok(reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?)
}

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

struct Response {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
    text: String,
}

impl Response {
    async fn read(response: reqwest::Response) -> Result<Self> {
        let (status, headers) = (response.status(), response.headers().clone());
        let text = response.text().await?;
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Self { status, headers, json, text })
    }

    fn header(&self, name: reqwest::header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn location(&self) -> Result<Url> {
        Ok(Url::parse(self.header(LOCATION).context("no Location header")?)?)
    }
}

fn query(url: &Url, key: &str) -> Option<String> {
    url.query_pairs().find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

/// The value of the hidden (or other) input named `name` in a page.
fn input_value(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    Some(html[start..].split('"').next()?.to_owned())
}

struct Demo {
    provider: DemoProvider,
    base: String,
    http: reqwest::Client,
}

/// A spawned provider with client `app` registered for `auth`, auto-consent on.
async fn demo(auth: ClientAuthMethod) -> Result<Demo> {
    let config = DemoConfig { auto_consent: true, ..DemoConfig::default() };
    let (provider, _) = DemoProvider::spawn(config).await?;
    provider.register_client(ClientRegistration {
        client_id: CLIENT_ID.to_owned(),
        client_secret: SECRET.to_owned(),
        redirect_uris: vec![REDIRECT.to_owned()],
        auth_method: auth,
    });
    Ok(Demo { base: provider.base_url(), provider, http: http()? })
}

impl Demo {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> Result<Response> {
        let mut request = self.http.get(self.url(path));
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        Response::read(request.send().await?).await
    }

    async fn post_form(&self, path: &str, form: &[(&str, &str)], cookie: Option<&str>) -> Result<Response> {
        let mut request = self.http.post(self.url(path)).form(form);
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        Response::read(request.send().await?).await
    }

    /// `GET /authorize` for `app` with `extra` parameters.
    async fn authorize(&self, extra: &[(&str, &str)]) -> Result<Response> {
        let mut url = Url::parse(&self.url("/authorize"))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", CLIENT_ID)
            .append_pair("redirect_uri", REDIRECT)
            .append_pair("state", "st-123")
            .extend_pairs(extra);
        Response::read(self.http.get(url).send().await?).await
    }

    async fn code(&self, extra: &[(&str, &str)]) -> Result<String> {
        let response = self.authorize(extra).await?;
        anyhow::ensure!(response.status == StatusCode::FOUND, "authorize answered {}", response.status);
        query(&response.location()?, "code").context("no code in the redirect")
    }

    /// `POST /token` authenticated as `app` by Basic (`basic`) or in the body.
    async fn token_as(&self, basic: bool, secret: &str, form: &[(&str, &str)]) -> Result<Response> {
        let mut form = form.to_vec();
        let mut request = self.http.post(self.url("/token"));
        if basic {
            request = request.basic_auth(CLIENT_ID, Some(secret));
        } else {
            form.extend([("client_id", CLIENT_ID), ("client_secret", secret)]);
        }
        Response::read(request.form(&form).send().await?).await
    }

    async fn token(&self, form: &[(&str, &str)]) -> Result<Response> {
        self.token_as(true, SECRET, form).await
    }

    async fn exchange(&self, code: &str, verifier: Option<&str>) -> Result<Response> {
        let mut form = vec![("grant_type", "authorization_code"), ("code", code), ("redirect_uri", REDIRECT)];
        form.extend(verifier.map(|v| ("code_verifier", v)));
        self.token(&form).await
    }

    async fn refresh(&self, refresh_token: &str) -> Result<Response> {
        self.token(&[("grant_type", "refresh_token"), ("refresh_token", refresh_token)]).await
    }

    async fn userinfo(&self, access_token: &str) -> Result<Response> {
        Response::read(self.http.get(self.url("/userinfo")).bearer_auth(access_token).send().await?).await
    }

    fn grant(&self, user: &str) -> Result<(String, String)> {
        let issued = self.provider.issue_grant(CLIENT_ID, user, &["profile"])?;
        Ok((issued.access_token, issued.refresh_token.context("no refresh token")?))
    }
}

fn str_field<'a>(json: &'a Value, key: &str) -> &'a str {
    json[key].as_str().unwrap_or_default()
}

#[tokio::test]
async fn code_flow_with_pkce_issues_working_tokens_and_rejects_a_wrong_verifier() -> Result<()> {
    let demo = demo(ClientAuthMethod::Basic).await?;
    let pkce = [
        ("code_challenge", challenge(VERIFIER)),
        ("code_challenge_method", "S256".to_owned()),
        ("scope", "profile email".to_owned()),
        ("login_hint", "alice".to_owned()),
    ];
    let pkce: Vec<(&str, &str)> = pkce.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let code = demo.code(&pkce).await?;
    let wrong = demo.exchange(&code, Some(&format!("{VERIFIER}x"))).await?;
    assert_eq!((wrong.status, str_field(&wrong.json, "error")), (StatusCode::BAD_REQUEST, "invalid_grant"));
    let code = demo.code(&pkce).await?;
    let missing = demo.exchange(&code, None).await?;
    assert_eq!(str_field(&missing.json, "error"), "invalid_grant");

    let redirect = demo.authorize(&pkce).await?.location()?;
    assert_eq!(query(&redirect, "state").as_deref(), Some("st-123"));
    let code = query(&redirect, "code").context("no code")?;
    let ok = demo.exchange(&code, Some(VERIFIER)).await?;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    assert_eq!(ok.header(CACHE_CONTROL), Some("no-store"));
    assert_eq!(str_field(&ok.json, "token_type"), "Bearer");
    assert_eq!(ok.json["expires_in"], 120);
    assert_eq!(str_field(&ok.json, "scope"), "profile email");
    assert!(str_field(&ok.json, "refresh_token").starts_with("demo_rt_"));
    let access = str_field(&ok.json, "access_token");
    assert!(access.starts_with("demo_at_"));

    let me = demo.userinfo(access).await?;
    assert_eq!((me.status, str_field(&me.json, "sub")), (StatusCode::OK, "alice"));
    let stats = demo.provider.stats();
    assert_eq!((stats.code_exchanges, stats.grants_alive, stats.token_requests), (1, 1, 3));
    Ok(())
}

#[tokio::test]
async fn a_verifier_without_a_challenge_is_refused_as_a_downgrade() -> Result<()> {
    let demo = demo(ClientAuthMethod::Basic).await?;
    let code = demo.code(&[]).await?;
    let response = demo.exchange(&code, Some(VERIFIER)).await?;
    assert_eq!(str_field(&response.json, "error"), "invalid_grant");
    Ok(())
}

#[tokio::test]
async fn client_must_authenticate_with_its_registered_method() -> Result<()> {
    let demo = demo(ClientAuthMethod::Basic).await?;
    let (_, refresh) = demo.grant("alice")?;
    let form = [("grant_type", "refresh_token"), ("refresh_token", refresh.as_str())];

    let in_body = demo.token_as(false, SECRET, &form).await?;
    assert_eq!((in_body.status, str_field(&in_body.json, "error")), (StatusCode::UNAUTHORIZED, "invalid_client"));
    assert!(in_body.header(WWW_AUTHENTICATE).is_some_and(|v| v.starts_with("Basic")));
    let bad_secret = demo.token_as(true, "nope", &form).await?;
    assert_eq!(bad_secret.status, StatusCode::UNAUTHORIZED);
    assert!(demo.provider.is_grant_alive_for_refresh(&refresh), "refused requests change nothing");
    assert_eq!(demo.token_as(true, SECRET, &form).await?.status, StatusCode::OK);

    demo.provider.register_client(ClientRegistration {
        client_id: CLIENT_ID.to_owned(),
        client_secret: SECRET.to_owned(),
        redirect_uris: vec![REDIRECT.to_owned()],
        auth_method: ClientAuthMethod::Body,
    });
    let (_, refresh) = demo.grant("bob")?;
    let form = [("grant_type", "refresh_token"), ("refresh_token", refresh.as_str())];
    let basic = demo.token_as(true, SECRET, &form).await?;
    assert_eq!((basic.status, str_field(&basic.json, "error")), (StatusCode::UNAUTHORIZED, "invalid_client"));
    assert_eq!(demo.token_as(false, SECRET, &form).await?.status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn a_replayed_code_is_invalid_grant_and_revokes_what_it_issued() -> Result<()> {
    let demo = demo(ClientAuthMethod::Basic).await?;
    let code = demo.code(&[]).await?;
    let first = demo.exchange(&code, None).await?;
    assert_eq!(first.status, StatusCode::OK);
    let access = str_field(&first.json, "access_token");
    assert!(demo.provider.access_token_valid(access));

    let replay = demo.exchange(&code, None).await?;
    assert_eq!((replay.status, str_field(&replay.json, "error")), (StatusCode::BAD_REQUEST, "invalid_grant"));
    assert!(!demo.provider.access_token_valid(access));
    assert_eq!(demo.provider.stats().grants_revoked, 1);
    Ok(())
}

#[tokio::test]
async fn an_expired_code_or_another_redirect_uri_is_refused() -> Result<()> {
    let demo = demo(ClientAuthMethod::Basic).await?;
    let code = demo.code(&[]).await?;
    demo.provider.advance_clock(Duration::from_secs(61));
    assert_eq!(str_field(&demo.exchange(&code, None).await?.json, "error"), "invalid_grant");

    let code = demo.code(&[]).await?;
    let other = demo
        .token(&[("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", "http://app.test/other")])
        .await?;
    assert_eq!(str_field(&other.json, "error"), "invalid_grant");
    assert_eq!(demo.provider.stats().code_exchanges, 0);
    Ok(())
}

#[tokio::test]
async fn refresh_rotates_and_reusing_an_old_token_revokes_the_whole_grant() -> Result<()> {
    let demo = demo(ClientAuthMethod::Basic).await?;
    let (access1, rt1) = demo.grant("alice")?;

    let second = demo.refresh(&rt1).await?;
    assert_eq!(second.status, StatusCode::OK);
    let rt2 = str_field(&second.json, "refresh_token").to_owned();
    assert!(rt2.starts_with("demo_rt_") && rt2 != rt1);
    assert!(!demo.provider.is_grant_alive_for_refresh(&rt1));
    let third = demo.refresh(&rt2).await?;
    let rt3 = str_field(&third.json, "refresh_token").to_owned();
    let access3 = str_field(&third.json, "access_token").to_owned();
    assert!(demo.provider.access_token_valid(&access3));

    let reuse = demo.refresh(&rt1).await?;
    assert_eq!((reuse.status, str_field(&reuse.json, "error")), (StatusCode::BAD_REQUEST, "invalid_grant"));
    assert!(!demo.provider.is_grant_alive_for_refresh(&rt3));
    assert_eq!(str_field(&demo.refresh(&rt3).await?.json, "error"), "invalid_grant");
    assert!(!demo.provider.access_token_valid(&access1) && !demo.provider.access_token_valid(&access3));
    let stats = demo.provider.stats();
    assert_eq!((stats.reuse_detected, stats.refreshes, stats.grants_revoked, stats.grants_alive), (1, 2, 1, 0));
    Ok(())
}

#[tokio::test]
async fn revocation_endpoint_revokes_the_grant_of_a_token() -> Result<()> {
    let demo = demo(ClientAuthMethod::Basic).await?;
    let (access, refresh) = demo.grant("alice")?;
    let revoke = |token: String, secret: &'static str| {
        let request = demo.http.post(demo.url("/revoke")).basic_auth(CLIENT_ID, Some(secret));
        async move { Response::read(request.form(&[("token", token)]).send().await?).await }
    };

    assert_eq!(revoke(access.clone(), "nope").await?.status, StatusCode::UNAUTHORIZED);
    assert!(demo.provider.access_token_valid(&access));
    assert_eq!(revoke("demo_at_unknown".to_owned(), SECRET).await?.status, StatusCode::OK);
    assert_eq!(revoke(access.clone(), SECRET).await?.status, StatusCode::OK);
    assert!(!demo.provider.access_token_valid(&access));
    assert_eq!(demo.userinfo(&access).await?.status, StatusCode::UNAUTHORIZED);
    assert_eq!(str_field(&demo.refresh(&refresh).await?.json, "error"), "invalid_grant");
    assert_eq!(demo.provider.stats().revocations, 1);

    let (_, refresh) = demo.grant("bob")?;
    assert!(demo.provider.revoke_grant_of(&refresh));
    assert!(!demo.provider.is_grant_alive_for_refresh(&refresh));
    assert_eq!(demo.provider.stats().revocations, 2);
    Ok(())
}

#[tokio::test]
async fn access_tokens_expire_after_the_configured_lifetime() -> Result<()> {
    let demo = demo(ClientAuthMethod::Basic).await?;
    demo.provider.set_access_ttl(Duration::from_secs(30));
    let issued = demo.provider.issue_grant(CLIENT_ID, "alice", &["profile"])?;
    assert_eq!(issued.expires_in, Some(30));
    assert_eq!(demo.userinfo(&issued.access_token).await?.status, StatusCode::OK);

    demo.provider.advance_clock(Duration::from_secs(31));
    assert_eq!(demo.userinfo(&issued.access_token).await?.status, StatusCode::UNAUTHORIZED);
    let refreshed = demo.refresh(issued.refresh_token.as_deref().context("refresh token")?).await?;
    assert_eq!(refreshed.json["expires_in"], 30);
    assert!(demo.provider.access_token_valid(str_field(&refreshed.json, "access_token")));
    Ok(())
}

#[tokio::test]
async fn injected_faults_answer_in_order_and_change_nothing() -> Result<()> {
    let demo = demo(ClientAuthMethod::Basic).await?;
    let (_, refresh) = demo.grant("alice")?;
    for fault in [
        Fault::Status(503),
        Fault::Status(500),
        Fault::TooManyRequests { retry_after_secs: 7 },
        Fault::InvalidGrant,
        Fault::InvalidClient,
        Fault::SlackError("token_revoked".to_owned()),
    ] {
        demo.provider.push_fault(fault);
    }

    let unavailable = demo.refresh(&refresh).await?;
    assert_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(str_field(&unavailable.json, "error"), "temporarily_unavailable");
    assert_eq!(demo.refresh(&refresh).await?.status, StatusCode::INTERNAL_SERVER_ERROR);
    let limited = demo.refresh(&refresh).await?;
    assert_eq!((limited.status, limited.header(RETRY_AFTER)), (StatusCode::TOO_MANY_REQUESTS, Some("7")));
    let grant = demo.refresh(&refresh).await?;
    assert_eq!((grant.status, str_field(&grant.json, "error")), (StatusCode::BAD_REQUEST, "invalid_grant"));
    let client = demo.refresh(&refresh).await?;
    assert_eq!((client.status, str_field(&client.json, "error")), (StatusCode::UNAUTHORIZED, "invalid_client"));
    let slack = demo.refresh(&refresh).await?;
    assert_eq!(slack.status, StatusCode::OK);
    assert_eq!((&slack.json["ok"], str_field(&slack.json, "error")), (&Value::Bool(false), "token_revoked"));

    assert!(demo.provider.is_grant_alive_for_refresh(&refresh));
    assert_eq!(demo.refresh(&refresh).await?.status, StatusCode::OK);
    let stats = demo.provider.stats();
    assert_eq!((stats.token_requests, stats.refreshes, stats.grants_revoked), (7, 1, 0));
    Ok(())
}

#[tokio::test]
async fn a_delay_fault_times_the_client_out_without_rotating_the_token() -> Result<()> {
    let demo = demo(ClientAuthMethod::Basic).await?;
    let (_, refresh) = demo.grant("alice")?;
    demo.provider.push_fault(Fault::Delay(Duration::from_millis(800)));

    let attempt = demo
        .http
        .post(demo.url("/token"))
        .basic_auth(CLIENT_ID, Some(SECRET))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", refresh.as_str())])
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(attempt.is_err_and(|e| e.is_timeout()));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(demo.provider.is_grant_alive_for_refresh(&refresh), "the abandoned request rotated nothing");
    assert_eq!(demo.provider.stats().refreshes, 0);
    assert_eq!(demo.refresh(&refresh).await?.status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn slack_shape_nests_user_tokens_and_reports_errors_as_ok_false() -> Result<()> {
    let demo = demo(ClientAuthMethod::Basic).await?;
    demo.provider.set_shape(Shape::Slack);
    let code = demo.code(&[("scope", "chat:write users:read")]).await?;
    let ok = demo.exchange(&code, None).await?;
    assert_eq!((ok.status, &ok.json["ok"]), (StatusCode::OK, &Value::Bool(true)));
    let user = &ok.json["authed_user"];
    assert!(str_field(user, "access_token").starts_with("demo_at_"));
    assert!(str_field(user, "refresh_token").starts_with("demo_rt_"));
    assert_eq!((&user["expires_in"], str_field(user, "scope")), (&Value::from(120), "chat:write,users:read"));
    assert!(ok.json.get("access_token").is_none());

    let bad = demo.refresh("demo_rt_unknown").await?;
    assert_eq!(bad.status, StatusCode::OK);
    assert_eq!((&bad.json["ok"], str_field(&bad.json, "error")), (&Value::Bool(false), "invalid_refresh_token"));
    demo.provider.push_fault(Fault::InvalidGrant);
    let injected = demo.refresh(str_field(user, "refresh_token")).await?;
    assert_eq!((injected.status, str_field(&injected.json, "error")), (StatusCode::OK, "invalid_refresh_token"));
    Ok(())
}

#[tokio::test]
async fn expires_in_string_shape_sends_the_lifetime_as_a_string() -> Result<()> {
    let demo = demo(ClientAuthMethod::Basic).await?;
    demo.provider.set_shape(Shape::ExpiresInString);
    let (_, refresh) = demo.grant("alice")?;
    let response = demo.refresh(&refresh).await?;
    assert_eq!(response.json["expires_in"], Value::String("120".to_owned()));
    Ok(())
}

#[tokio::test]
async fn non_expiring_shape_issues_tokens_without_expiry_or_refresh_token() -> Result<()> {
    let demo = demo(ClientAuthMethod::Basic).await?;
    demo.provider.set_shape(Shape::NonExpiring);
    let code = demo.code(&[]).await?;
    let response = demo.exchange(&code, None).await?;
    assert_eq!(response.status, StatusCode::OK);
    assert!(response.json.get("expires_in").is_none() && response.json.get("refresh_token").is_none());
    demo.provider.advance_clock(Duration::from_secs(86_400 * 365));
    assert!(demo.provider.access_token_valid(str_field(&response.json, "access_token")));
    Ok(())
}

#[tokio::test]
async fn no_rotation_shape_keeps_the_refresh_token_valid() -> Result<()> {
    let demo = demo(ClientAuthMethod::Basic).await?;
    demo.provider.set_shape(Shape::NoRotation);
    let (_, refresh) = demo.grant("alice")?;
    for _ in 0..2 {
        let response = demo.refresh(&refresh).await?;
        assert_eq!(response.status, StatusCode::OK);
        assert!(response.json.get("refresh_token").is_none());
    }
    assert!(demo.provider.is_grant_alive_for_refresh(&refresh));
    assert_eq!(demo.provider.stats().reuse_detected, 0);
    Ok(())
}

#[tokio::test]
async fn deny_next_consent_redirects_with_access_denied_once() -> Result<()> {
    let demo = demo(ClientAuthMethod::Basic).await?;
    demo.provider.deny_next_consent();
    let denied = demo.authorize(&[]).await?.location()?;
    assert_eq!(query(&denied, "error").as_deref(), Some("access_denied"));
    assert_eq!(query(&denied, "state").as_deref(), Some("st-123"));
    assert!(query(&denied, "code").is_none());
    assert!(demo.code(&[]).await.is_ok(), "only the next consent is denied");
    Ok(())
}

#[tokio::test]
async fn authorize_never_redirects_to_an_unregistered_uri() -> Result<()> {
    let demo = demo(ClientAuthMethod::Basic).await?;
    let url = |client: &str, redirect: &str| {
        format!("{}/authorize?response_type=code&client_id={client}&redirect_uri={redirect}", demo.base)
    };
    for bad in [url("nobody", REDIRECT), url(CLIENT_ID, "http://evil.test/cb")] {
        let response = Response::read(demo.http.get(bad).send().await?).await?;
        assert_eq!(response.status, StatusCode::BAD_REQUEST);
        assert!(response.header(LOCATION).is_none());
    }
    let token = demo.authorize(&[("response_type", "token")]).await?.location()?;
    assert_eq!(query(&token, "error").as_deref(), Some("unsupported_response_type"));
    let plain = demo.authorize(&[("code_challenge", &challenge(VERIFIER)), ("code_challenge_method", "plain")]).await?;
    assert_eq!(query(&plain.location()?, "error").as_deref(), Some("invalid_request"));
    Ok(())
}

#[tokio::test]
async fn html_flow_signs_in_asks_consent_and_redirects_with_a_code() -> Result<()> {
    let demo = demo(ClientAuthMethod::Basic).await?;
    demo.provider.set_auto_consent(false);

    let login = demo.authorize(&[("scope", "profile files.read")]).await?;
    assert_eq!(login.status, StatusCode::OK);
    assert!(login.text.contains("<label for=\"username\">") && login.text.contains("action=\"login\""));
    let cookie = login.header(SET_COOKIE).and_then(|c| c.split(';').next()).context("session cookie")?.to_owned();
    let request = input_value(&login.text, "request").context("request field")?;
    let csrf = input_value(&login.text, "csrf").context("csrf field")?;

    let forged = demo
        .post_form("/login", &[("request", &request), ("csrf", "forged"), ("username", "eve")], Some(&cookie))
        .await?;
    assert_eq!(forged.status, StatusCode::BAD_REQUEST);
    let no_cookie =
        demo.post_form("/login", &[("request", &request), ("csrf", &csrf), ("username", "eve")], None).await?;
    assert_eq!(no_cookie.status, StatusCode::BAD_REQUEST);

    let fields = [("request", request.as_str()), ("csrf", csrf.as_str()), ("username", "carol")];
    let consent = demo.post_form("/login", &fields, Some(&cookie)).await?;
    assert_eq!(consent.status, StatusCode::OK);
    assert!(consent.text.contains("files.read") && consent.text.contains("carol"));
    assert!(consent.text.contains("value=\"approve\"") && consent.text.contains("value=\"deny\""));

    let decision = [("request", request.as_str()), ("csrf", csrf.as_str()), ("decision", "approve")];
    let redirect = demo.post_form("/consent", &decision, Some(&cookie)).await?;
    assert_eq!(redirect.status, StatusCode::SEE_OTHER);
    let location = redirect.location()?;
    assert!(location.as_str().starts_with(REDIRECT));
    assert_eq!(query(&location, "state").as_deref(), Some("st-123"));
    let tokens = demo.exchange(&query(&location, "code").context("code")?, None).await?;
    assert_eq!(str_field(&tokens.json, "scope"), "profile files.read");
    let me = demo.userinfo(str_field(&tokens.json, "access_token")).await?;
    assert_eq!(str_field(&me.json, "sub"), "carol");

    let again = demo.post_form("/consent", &decision, Some(&cookie)).await?;
    assert_eq!((again.status, again.header(LOCATION)), (StatusCode::BAD_REQUEST, None), "a request is used once");
    Ok(())
}

#[tokio::test]
async fn html_flow_deny_redirects_with_access_denied() -> Result<()> {
    let demo = demo(ClientAuthMethod::Basic).await?;
    demo.provider.set_auto_consent(false);
    let login = demo.authorize(&[]).await?;
    let cookie = login.header(SET_COOKIE).and_then(|c| c.split(';').next()).context("cookie")?.to_owned();
    let request = input_value(&login.text, "request").context("request")?;
    let csrf = input_value(&login.text, "csrf").context("csrf")?;
    let fields = [("request", request.as_str()), ("csrf", csrf.as_str()), ("username", "dave")];
    demo.post_form("/login", &fields, Some(&cookie)).await?;
    let decision = [("request", request.as_str()), ("csrf", csrf.as_str()), ("decision", "deny")];
    let redirect = demo.post_form("/consent", &decision, Some(&cookie)).await?.location()?;
    assert_eq!(query(&redirect, "error").as_deref(), Some("access_denied"));
    assert_eq!(demo.provider.stats().grants_alive, 0);
    Ok(())
}

#[tokio::test]
async fn grants_page_lists_live_grants_and_revokes_one() -> Result<()> {
    let demo = demo(ClientAuthMethod::Basic).await?;
    let (access, _) = demo.grant("<bob>")?;
    let page = demo.get("/grants", None).await?;
    assert!(page.text.contains("&lt;bob&gt;"), "user names are escaped");
    assert!(page.text.contains("action=\"grants/1/revoke\""));
    let cookie = page.header(SET_COOKIE).and_then(|c| c.split(';').next()).context("cookie")?.to_owned();
    let csrf = input_value(&page.text, "csrf").context("csrf")?;

    let forged = demo.post_form("/grants/1/revoke", &[("csrf", "x")], Some(&cookie)).await?;
    assert_eq!(forged.status, StatusCode::BAD_REQUEST);
    assert!(demo.provider.access_token_valid(&access));
    let revoked = demo.post_form("/grants/1/revoke", &[("csrf", &csrf)], Some(&cookie)).await?;
    assert_eq!((revoked.status, revoked.header(LOCATION)), (StatusCode::SEE_OTHER, Some("../../grants")));
    assert!(!demo.provider.access_token_valid(&access));
    assert!(!demo.get("/grants", Some(&cookie)).await?.text.contains("&lt;bob&gt;"));
    assert_eq!(demo.provider.stats().revocations, 1);
    Ok(())
}

#[tokio::test]
async fn debug_output_never_shows_tokens_or_secrets() -> Result<()> {
    let demo = demo(ClientAuthMethod::Basic).await?;
    let issued: IssuedTokens = demo.provider.issue_grant(CLIENT_ID, "alice", &["profile"])?;
    let printed = format!("{issued:?} {:?}", ClientRegistration::for_pipes_dev("http://localhost:8080/"));
    assert!(!printed.contains(&issued.access_token) && !printed.contains("demo_rt_") && !printed.contains("demo_cs_"));
    assert!(printed.contains("http://localhost:8080/data-integrations/demo/callback"));
    Ok(())
}
