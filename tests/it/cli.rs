//! The operator commands run as operators run them: the built `pipes` binary,
//! configured by `PIPES_*` for the test's database and prefixes. Each test
//! checks what the command printed, its exit status and what it left in
//! PostgreSQL, and that a bad argument fails clearly and changes nothing.

use std::process::Stdio;
use std::time::Duration;

use pipes::demo_provider::ClientAuthMethod;
use pipes::store::accounts::{self, TokenSet};
use pipes::webhooks::endpoints;
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use crate::support::app::{TestApp, TEST_KEY};
use crate::support::fixtures::{demo_integration, seed_account, store_tokens};

const HOUR: Duration = Duration::from_secs(3600);

/// What one `pipes …` run left behind.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "stdout: {}\nstderr: {}", self.stdout, self.stderr);
        self
    }

    /// A failure that explains itself on stderr and prints nothing as if it had worked.
    fn fails_with(&self, code: i32, message: &str) -> &Self {
        assert_eq!(self.code, Some(code), "stdout: {}\nstderr: {}", self.stdout, self.stderr);
        assert!(self.stderr.contains(message), "stderr should say {message:?}: {}", self.stderr);
        assert!(self.stdout.trim().is_empty(), "a failed command printed: {}", self.stdout);
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

/// Runs the built binary against `app`'s database, Redis and queue prefixes,
/// with nothing of the caller's `PIPES_*` environment; `env` adds variables.
async fn pipes(app: &TestApp, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pipes"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("PIPES_")) {
        cmd.env_remove(key);
    }
    cmd.args(args)
        .env("PIPES_DATABASE_URL", format!("postgres://postgres@127.0.0.1:5432/{}", app.db_name))
        .env("PIPES_ENCRYPTION_KEYS", TEST_KEY)
        .env("PIPES_PUBLIC_URL", &app.base_url)
        .env("PIPES_REDIS_PREFIX", format!("it_{}", app.unique))
        .env("PIPES_QUEUE_PREFIX", format!("it_{}", app.unique))
        .env("PIPES_ALLOW_PRIVATE_NETWORK", "true")
        .env("PIPES_PROVIDER_TIMEOUT", "2s")
        .env("PIPES_REFRESH_LEASE", "5s")
        .env("PIPES_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("`pipes {}` did not finish within 60 s", args.join(" ")))
        .expect("run the pipes binary");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn count(app: &TestApp, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}"))).fetch_one(&app.db).await.unwrap()
}

/// Stores a connected account for integration `integration_id` straight into the store.
async fn store_account(app: &TestApp, integration_id: &str, user: &str) -> accounts::Account {
    let tokens = TokenSet {
        access_token: pipes::secret::Secret::new("cli-access-token"),
        refresh_token: None,
        expires_at: None,
        scopes: vec!["repo".into()],
    };
    store_tokens(app, integration_id, user, None, &tokens, None).await
}

#[tokio::test]
async fn integrations_are_added_listed_shown_and_removed_from_the_cli() {
    let app = TestApp::spawn().await;
    let secret = "cli-client-secret-1f2e3d";
    let run = pipes(
        &app,
        &["integrations", "add", "--provider", "github", "--client-id", "gh-client"],
        &[("PIPES_CLIENT_SECRET", secret)],
    )
    .await;
    run.ok();
    let github =
        pipes::store::integrations::by_slug(&app.db, app.state.keyring(), "github", pipes::owner::Ownership::User)
            .await
            .unwrap()
            .unwrap();
    assert!(run.stdout.contains(&format!("created integration `github` ({})", github.id)), "{}", run.stdout);
    let redirect = format!("{}/data-integrations/github/callback", app.base_url);
    assert!(run.stdout.contains(&redirect), "prints the redirect URI to register: {}", run.stdout);
    assert_eq!((github.provider.as_str(), github.client_id.as_str(), github.enabled), ("github", "gh-client", true));
    assert_eq!(github.client_secret.as_ref().map(|s| s.expose_secret()), Some(secret), "stored, encrypted");
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT client_secret_enc FROM integrations WHERE slug = 'github'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&sealed).contains(secret), "never in clear at rest");

    // A custom provider, created disabled, with its own scopes.
    pipes(
        &app,
        &[
            "integrations",
            "add",
            "--provider",
            "acme",
            "--client-id",
            "acme-client",
            "--name",
            "Acme",
            "--authorization-url",
            "https://acme.test/oauth/authorize",
            "--token-url",
            "https://acme.test/oauth/token",
            "--scopes",
            "read,write",
            "--disabled",
        ],
        &[("PIPES_CLIENT_SECRET", secret)],
    )
    .await
    .ok();
    let (enabled, scopes, custom): (bool, Vec<String>, Value) =
        sqlx::query_as("SELECT enabled, scopes, custom_provider FROM integrations WHERE slug = 'acme'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(!enabled);
    assert_eq!(scopes, ["read", "write"]);
    assert_eq!(custom["token_url"], "https://acme.test/oauth/token");
    let (status, api) = app.admin(Method::GET, "/data-integrations/acme", None).await;
    assert_eq!((status, &api["enabled"]), (200, &json!(false)), "the API sees what the CLI wrote: {api}");

    let list = pipes(&app, &["integrations", "list"], &[]).await;
    let lines: Vec<Vec<&str>> = list.ok().stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0][..4], ["SLUG", "PROVIDER", "ENABLED", "STATE"]);
    let acme = lines.iter().find(|l| l[0] == "acme").expect("acme listed");
    assert_eq!(acme[2..], ["false", "valid", "read", "write"]);
    assert_eq!(lines.iter().find(|l| l[0] == "github").expect("github listed")[2], "true");
    let listed = pipes(&app, &["integrations", "list", "--json"], &[]).await;
    let listed = listed.ok().json();
    let mut slugs: Vec<&str> = listed.as_array().unwrap().iter().filter_map(|i| i["slug"].as_str()).collect();
    slugs.sort_unstable();
    assert_eq!(slugs, ["acme", "github"]);
    assert!(!listed.to_string().contains(secret), "the client secret is never printed");

    store_account(&app, &github.id, "user_1").await;
    let show = pipes(&app, &["integrations", "show", "github"], &[]).await;
    let shown = show.ok().json();
    assert_eq!(
        (shown["id"].as_str(), &shown["credentials"]["client_id"]),
        (Some(github.id.as_str()), &json!("gh-client"))
    );
    assert_eq!(shown["connected_accounts"], json!({"connected": 1}));
    assert!(!show.stdout.contains(secret));

    // Bad arguments: a clear message, a non-zero exit, nothing written.
    let before = count(&app, "integrations").await;
    pipes(&app, &["integrations", "add", "--provider", "github"], &[]).await.fails_with(2, "--client-id");
    pipes(
        &app,
        &["integrations", "add", "--provider", "github", "--client-id", "other"],
        &[("PIPES_CLIENT_SECRET", "x")],
    )
    .await
    .fails_with(1, "already exists");
    pipes(&app, &["integrations", "add", "--provider", "no-such-provider", "--client-id", "c"], &[])
        .await
        .fails_with(1, "invalid integration:");
    pipes(
        &app,
        &["integrations", "add", "--provider", "acme2", "--client-id", "c", "--token-url", "not a url"],
        &[("PIPES_CLIENT_SECRET", "x")],
    )
    .await
    .fails_with(1, "custom_provider.");
    pipes(&app, &["integrations", "show", "no-such"], &[]).await.fails_with(1, "no integration `no-such`");
    assert_eq!(count(&app, "integrations").await, before);
    assert_eq!(
        pipes::store::integrations::by_slug(&app.db, app.state.keyring(), "github", pipes::owner::Ownership::User)
            .await
            .unwrap()
            .unwrap()
            .client_id,
        "gh-client",
        "a refused add leaves the existing integration alone"
    );

    // Removing needs --yes, then takes the accounts with it and says how many.
    pipes(&app, &["integrations", "remove", "github"], &[]).await.fails_with(1, "--yes");
    assert_eq!(count(&app, "connected_accounts").await, 1, "nothing removed without --yes");
    let removed = pipes(&app, &["integrations", "remove", "github", "--yes"], &[]).await;
    assert!(
        removed.ok().stdout.contains("removed integration `github` and 1 connected account(s)"),
        "{}",
        removed.stdout
    );
    let left: Vec<String> = sqlx::query_scalar("SELECT slug FROM integrations").fetch_all(&app.db).await.unwrap();
    assert_eq!(left, ["acme"]);
    assert_eq!(count(&app, "connected_accounts").await, 0);
    let events: Vec<String> = sqlx::query_scalar("SELECT event FROM events").fetch_all(&app.db).await.unwrap();
    assert_eq!(events, ["pipes.connected_account.disconnected"]);
    pipes(&app, &["integrations", "remove", "github", "--yes"], &[]).await.fails_with(1, "no integration `github`");
}

#[tokio::test]
async fn connections_are_listed_shown_and_refreshed_from_the_cli() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "cli-demo", ClientAuthMethod::Basic).await;
    let (first, first_token) = seed_account(&app, &p, "u1", None, HOUR).await;
    let (second, second_token) = seed_account(&app, &p, "u2", Some("org_1"), HOUR).await;
    sqlx::query("UPDATE connected_accounts SET state = 'needs_reauthorization' WHERE id = $1")
        .bind(&second.id)
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query("DELETE FROM refresh_schedule WHERE account_id = $1").bind(&second.id).execute(&app.db).await.unwrap();

    let list = pipes(&app, &["connections", "list"], &[]).await;
    list.ok();
    for (account, state) in [(&first, "connected"), (&second, "needs_reauthorization")] {
        let line = list.stdout.lines().find(|l| l.starts_with(account.id.as_str())).expect("listed");
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(columns[1..4], ["cli-demo", account.owner.user_id().unwrap(), state], "{line}");
    }
    let filtered =
        pipes(&app, &["connections", "list", "--integration", "cli-demo", "--user", "u1", "--json"], &[]).await;
    let rows = filtered.ok().json();
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!((&rows[0]["id"], &rows[0]["state"]), (&json!(first.id), &json!("connected")));
    assert_eq!(rows[0]["renewable"], true);
    assert_eq!(rows[0]["auth_method"], "oauth");
    let by_state = pipes(&app, &["connections", "list", "--state", "needs_reauthorization", "--json"], &[]).await;
    assert_eq!(by_state.ok().json()[0]["id"], second.id.as_str());
    for output in [&list.stdout, &filtered.stdout] {
        assert!(!output.contains(&first_token) && !output.contains(&second_token), "tokens are never printed");
    }

    let show = pipes(&app, &["connections", "show", &second.id], &[]).await;
    let text = &show.ok().stdout;
    assert!(text.contains("state:              needs_reauthorization"), "{text}");
    assert!(text.contains("user / organization: u2 / org_1"), "{text}");
    assert!(text.contains("renewable:          yes"), "{text}");
    assert!(!text.contains(&second_token));
    let shown = pipes(&app, &["connections", "show", &first.id, "--json"], &[]).await.ok().json();
    assert_eq!((&shown["integration"], &shown["scopes"]), (&json!("cli-demo"), &json!(["read"])));
    assert_eq!(
        shown["expires_at"].as_str().map(|s| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap()),
        first.expires_at
    );

    // `refresh --inline` refreshes at the provider through the same single flight as the workers.
    let refreshed = pipes(&app, &["connections", "refresh", &first.id, "--inline"], &[]).await;
    assert!(refreshed.ok().stdout.starts_with("refreshed; expires at "), "{}", refreshed.stdout);
    let stored = accounts::find_by_id(&app.db, app.state.keyring(), &first.id).await.unwrap().unwrap();
    let new_token = stored.access_token.as_ref().unwrap().expose().to_owned();
    assert_ne!(new_token, first_token);
    assert!(p.demo.access_token_valid(&new_token));
    assert_eq!(p.demo.stats().refreshes, 1);
    assert!(!refreshed.stdout.contains(&new_token) && !refreshed.stderr.contains(&new_token));

    // Bad arguments: a clear message, a non-zero exit, nothing changed.
    let before: (i64, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
        "SELECT token_version, s.refresh_at FROM connected_accounts c
             LEFT JOIN refresh_schedule s ON s.account_id = c.id WHERE id = $1",
    )
    .bind(&second.id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    pipes(&app, &["connections", "refresh", &second.id, "--inline"], &[])
        .await
        .fails_with(1, "only connected accounts can be refreshed");
    pipes(&app, &["connections", "list", "--state", "asleep"], &[]).await.fails_with(2, "possible values");
    pipes(&app, &["connections", "list", "--limit", "0"], &[]).await.fails_with(2, "--limit");
    pipes(&app, &["connections", "show", "data_installation_nope"], &[])
        .await
        .fails_with(1, "no connected account with id `data_installation_nope`");
    let after: (i64, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
        "SELECT token_version, s.refresh_at FROM connected_accounts c
             LEFT JOIN refresh_schedule s ON s.account_id = c.id WHERE id = $1",
    )
    .bind(&second.id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(after, before);
    assert_eq!(p.demo.stats().refreshes, 1, "no refresh for a refused command");
}

#[tokio::test]
async fn webhook_endpoints_are_added_listed_and_removed_from_the_cli() {
    let app = TestApp::spawn().await;
    let url = "http://127.0.0.1:9/hooks";
    let events = "pipes.connected_account.connected,pipes.connected_account.disconnected";
    let added = pipes(&app, &["webhooks", "add", url, "--event", events], &[]).await;
    added.ok();
    let secret = added.stdout.lines().last().unwrap().trim().to_owned();
    let all = endpoints::all(&app.db, app.state.keyring()).await.unwrap();
    assert_eq!(all.len(), 1);
    let endpoint = &all[0];
    assert_eq!(endpoint.endpoint_url, url);
    assert_eq!(endpoint.events, ["pipes.connected_account.connected", "pipes.connected_account.disconnected"]);
    assert_eq!(endpoint.status.as_str(), "enabled");
    assert_eq!(endpoint.secret.expose(), secret, "the last line is the signing secret, shown once");
    assert!(added.stdout.contains(&format!("created webhook endpoint {}", endpoint.id)), "{}", added.stdout);
    let every = pipes(&app, &["webhooks", "add", "http://127.0.0.1:9/all"], &[]).await;
    every.ok();
    let (all_events,): (Vec<String>,) =
        sqlx::query_as("SELECT events FROM webhook_endpoints WHERE endpoint_url = 'http://127.0.0.1:9/all'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(all_events.len(), 4, "no --event: every event, under the first spelling of the names");

    let list = pipes(&app, &["webhooks", "list"], &[]).await;
    let line = list.ok().stdout.lines().find(|l| l.starts_with(&endpoint.id)).expect("listed").to_owned();
    assert_eq!(line.split_whitespace().collect::<Vec<_>>()[1..], ["enabled", url, events]);
    let listed = pipes(&app, &["webhooks", "list", "--json"], &[]).await;
    let items = listed.ok().json();
    assert_eq!(items.as_array().map(Vec::len), Some(2));
    assert!(!list.stdout.contains(&secret) && !listed.stdout.contains(&secret), "secrets are redacted in lists");

    // Bad arguments: a clear message, a non-zero exit, nothing written.
    pipes(&app, &["webhooks", "add", url, "--event", "pipes.connected_account.sleeping"], &[])
        .await
        .fails_with(1, "unknown event type `pipes.connected_account.sleeping`");
    pipes(&app, &["webhooks", "add", "ftp://127.0.0.1/hooks"], &[]).await.fails_with(1, "the URL");
    pipes(&app, &["webhooks", "add"], &[]).await.fails_with(2, "<URL>");
    pipes(&app, &["webhooks", "remove", "we_nope"], &[]).await.fails_with(1, "no webhook endpoint with id `we_nope`");
    assert_eq!(count(&app, "webhook_endpoints").await, 2);

    let removed = pipes(&app, &["webhooks", "remove", &endpoint.id], &[]).await;
    assert_eq!(removed.ok().stdout.trim(), format!("removed webhook endpoint {}", endpoint.id));
    let left: Vec<String> =
        sqlx::query_scalar("SELECT endpoint_url FROM webhook_endpoints").fetch_all(&app.db).await.unwrap();
    assert_eq!(left, ["http://127.0.0.1:9/all"]);
    pipes(&app, &["webhooks", "remove", &endpoint.id], &[]).await.fails_with(1, "no webhook endpoint with id");
}

#[tokio::test]
async fn a_proxy_named_in_the_environment_never_sees_a_provider_request() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "cli-proxy", ClientAuthMethod::Basic).await;
    let (account, _) = seed_account(&app, &p, "u1", None, Duration::from_secs(5)).await;
    // A "proxy" that counts the connections it is offered and answers none of them.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let offered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = offered.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = proxy.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(socket);
        }
    });
    let env: Vec<(&str, &str)> = ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
        .into_iter()
        .map(|name| (name, proxy_url.as_str()))
        .chain([("NO_PROXY", ""), ("no_proxy", "")])
        .collect();
    let refreshed = pipes(&app, &["connections", "refresh", &account.id, "--inline"], &env).await;
    assert!(refreshed.ok().stdout.starts_with("refreshed; expires at "), "{}", refreshed.stdout);
    assert_eq!(p.demo.stats().refreshes, 1, "the provider was called directly");
    assert_eq!(offered.load(std::sync::atomic::Ordering::SeqCst), 0, "the proxy was never offered a connection");
}

#[tokio::test]
async fn providers_searches_filters_and_shows_a_setup_guide_with_the_operators_entries() {
    let app = TestApp::spawn().await;
    let found = pipes(&app, &["providers", "--search", "git"], &[]).await;
    found.ok();
    assert!(found.stdout.contains("github") && found.stdout.contains("gitlab") && !found.stdout.contains("slack"));
    let crm = pipes(&app, &["providers", "--category", "crm", "--json"], &[]).await.ok().json();
    let crm = crm.as_array().expect("a list");
    assert!(!crm.is_empty() && crm.iter().all(|p| p["categories"].as_array().unwrap().contains(&json!("crm"))));
    pipes(&app, &["providers", "--category", "nope"], &[]).await.fails_with(1, "no category `nope`");
    let guide = pipes(&app, &["providers", "show", "zendesk"], &[]).await;
    guide.ok();
    for part in
        ["Register the OAuth app: https://", "1. ", "/data-integrations/zendesk/callback", "subdomain:", "Sources:"]
    {
        assert!(guide.stdout.contains(part), "{part:?} in {}", guide.stdout);
    }
    pipes(&app, &["providers", "show", "nope"], &[]).await.fails_with(1, "no provider `nope`");
    // A provider of API keys: where the key goes and how it is checked, no OAuth app.
    let keys = pipes(&app, &["providers", "show", "stripe"], &[]).await;
    keys.ok();
    for part in [
        "Create an API key: https://",
        "Sent as: header Authorization: Bearer {api_key}",
        "Checked with: GET https://api.stripe.com/v1/balance",
    ] {
        assert!(keys.stdout.contains(part), "{part:?} in {}", keys.stdout);
    }
    assert!(!keys.stdout.contains("Redirect URI"), "{}", keys.stdout);

    // The operator's own entries, checked at start-up with the same rules.
    let dir = std::env::temp_dir().join(format!("pipes-cli-catalog-{}", app.unique));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("catalog.toml");
    let entry = r##"
[acme]
name = "Acme CRM"
description = "Acme's own CRM."
logo_color = "#123456"
categories = ["crm"]
sources = ["https://acme.example/docs/oauth"]
docs_url = "https://acme.example/apps"
setup_steps = ["Register an app with the Pipes redirect URI."]

[acme.oauth]
authorization_url = "https://acme.example/oauth/authorize"
token_url = "https://acme.example/oauth/token"
scope_separator = " "
default_scopes = ["crm.read"]
scope_descriptions = { "crm.read" = "Read the CRM." }
client_auth = "request_body"
pkce = true
token_response = "standard"
token_body_content_type = "form"
invalid_grant_errors = ["invalid_grant"]
tokens_expire = true
"##;
    std::fs::write(&file, entry).unwrap();
    let path = file.to_str().unwrap();
    let listed = pipes(&app, &["providers", "--category", "crm"], &[("PIPES_CATALOG_FILE", path)]).await;
    assert!(listed.ok().stdout.contains("Acme CRM"), "{}", listed.stdout);
    std::fs::write(&file, entry.replace("https://acme.example/oauth/token", "https://acme.example/oauth/token?x={y}"))
        .unwrap();
    pipes(&app, &["providers"], &[("PIPES_CATALOG_FILE", path)]).await.fails_with(1, "acme: placeholder {y}");
    // Every role refuses to start with it.
    pipes(&app, &["status"], &[("PIPES_CATALOG_FILE", path)]).await.fails_with(1, "PIPES_CATALOG_FILE");
    std::fs::remove_dir_all(&dir).unwrap();
}
