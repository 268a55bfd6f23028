//! The widget in a real browser: `tests/browser/widget.mjs` drives Debian's
//! headless Chromium (playwright-core, no browser download) through connect,
//! consent, revocation, reauthorization, disconnection, a denied consent and
//! an expired token, saving a screenshot of each state in
//! `artifacts/screenshots/`. When the script reports `revoked`, this side
//! forces the refresh that finds the grant dead, then lets it go on.
//!
//! Without chromium, node or playwright-core the test fails under `CI=true`
//! and is skipped (with a message) elsewhere; `.ci/install-tools` installs them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::Utc;
use pipes::demo_provider::ClientAuthMethod;
use pipes::refresh::{Reason, RefreshOutcome};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::app::TestApp;
use crate::support::fixtures::demo_integration;

const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole scenario, browser start included.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(240);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What is missing to run a browser here, if anything.
fn missing_tools() -> Option<String> {
    if !Path::new(CHROMIUM).exists() {
        return Some(format!("{CHROMIUM} (Debian package chromium)"));
    }
    if std::process::Command::new("node").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        return Some("node".into());
    }
    if !root().join("tests/browser/node_modules/playwright-core").is_dir() {
        return Some("playwright-core (npm ci in tests/browser)".into());
    }
    None
}

/// True when a browser can run here; under `CI=true` a missing tool fails the test.
fn tools_present() -> bool {
    let Some(missing) = missing_tools() else { return true };
    let message = format!("the browser test needs {missing}; run .ci/install-tools");
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
    eprintln!("SKIPPED: {message}");
    false
}

#[tokio::test]
async fn a_user_connects_reauthorizes_and_disconnects_in_a_real_browser() {
    if !tools_present() {
        return;
    }
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "demo", ClientAuthMethod::Basic).await;
    p.demo.set_auto_consent(false);
    // What `pipes dev` shows: the demo provider's name and description, scopes `profile files.read`.
    sqlx::query(
        "UPDATE integrations SET scopes = ARRAY['profile','files.read'],
           description = 'A built-in demo provider: tokens live 2 minutes and refresh tokens rotate.',
           custom_provider = jsonb_set(custom_provider, '{name}', '\"Demo Provider\"') WHERE id = $1",
    )
    .bind(&p.integration.id)
    .execute(&app.db)
    .await
    .unwrap();
    // A catalog provider next to it, as an application would have (never connected here).
    let github = json!({ "provider": "github", "enabled": true, "credentials": { "type": "custom", "client_id": "gh-client", "client_secret": "gh-secret" } });
    assert_eq!(app.admin(Method::POST, "/data-integrations", Some(github)).await.0, 201);

    let (status, body) = app.admin(Method::POST, "/widgets/token", Some(json!({ "user_id": "user_alice" }))).await;
    assert_eq!(status, 200, "{body}");
    let widget_url = app.url(&format!("/widget#token={}", body["token"].as_str().unwrap()));
    let (expired, _) = pipes::widget::issue(
        app.state.keyring(),
        "user_alice",
        None,
        Utc::now() - chrono::Duration::hours(1),
        Duration::from_secs(60),
    );
    let expired_url = app.url(&format!("/widget#token={expired}"));
    let shots = root().join("artifacts/screenshots");

    let mut child = tokio::process::Command::new("node")
        .arg(root().join("tests/browser/widget.mjs"))
        .args([widget_url.as_str(), shots.to_str().unwrap(), p.demo.base_url().as_str(), expired_url.as_str()])
        .current_dir(root().join("tests/browser"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start node");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = child.stderr.take().unwrap();

    let scenario = async {
        let mut done = false;
        while let Some(line) = lines.next_line().await.expect("read the script's output") {
            let msg: Value = serde_json::from_str(&line).unwrap_or_else(|_| json!({ "log": line }));
            if let Some(text) = msg["log"].as_str() {
                eprintln!("browser: {text}");
            } else if msg["step"] == "revoked" {
                force_refresh(&app, &p.integration).await;
                stdin.write_all(b"ok\n").await.unwrap();
                stdin.flush().await.unwrap();
            } else if msg["done"] == true {
                done = true;
            }
        }
        done
    };
    let done = tokio::time::timeout(SCENARIO_TIMEOUT, scenario).await.unwrap_or(false);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    let mut err = String::new();
    let _ =
        tokio::time::timeout(Duration::from_secs(2), tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut err))
            .await;
    assert!(done, "the browser scenario did not finish (screenshots in {}); stderr:\n{err}", shots.display());
    assert!(matches!(status, Ok(Ok(s)) if s.success()), "node exited with {status:?}; stderr:\n{err}");

    // The account ended disconnected; the denied consent stored nothing.
    let (status, _) = app.admin(Method::GET, "/user_management/users/user_alice/connected_accounts/demo", None).await;
    assert_eq!(status, 404);
    for name in [
        "01-connect",
        "03-connected",
        "04-needs-reauthorization",
        "05-reconnected",
        "07-disconnected",
        "08-denied",
        "09-expired",
    ] {
        assert!(shots.join(format!("{name}.png")).is_file(), "screenshot {name}");
    }
}

#[tokio::test]
async fn a_user_adds_and_removes_accounts_and_sees_the_organizations_read_only() {
    if !tools_present() {
        return;
    }
    let app = TestApp::spawn().await;
    let multi = demo_integration(&app, "multi", ClientAuthMethod::Basic).await;
    let shared = demo_integration(&app, "shared", ClientAuthMethod::Basic).await;
    sqlx::query("UPDATE integrations SET multiple_connections = true WHERE id = $1")
        .bind(&multi.integration.id)
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query("UPDATE integrations SET ownership = 'organization' WHERE id = $1")
        .bind(&shared.integration.id)
        .execute(&app.db)
        .await
        .unwrap();
    let own = json!({ "access_token": "bob-work", "account_display_name": "Work" });
    let path = "/user_management/users/user_bob/connected_accounts/multi?organization_id=org_1";
    assert_eq!(app.admin(Method::POST, path, Some(own)).await.0, 201);
    let org = json!({ "user_id": "admin", "access_token": "org-token" });
    assert_eq!(app.admin(Method::POST, "/organizations/org_1/connected_accounts/shared", Some(org)).await.0, 201);

    let shots = bobs_widget_scenario(&app, "widget-accounts.mjs").await;

    // Bob kept his first account; the organization's was not touched.
    let (_, listed) = app
        .admin(
            Method::GET,
            "/user_management/users/user_bob/data_providers?organization_id=org_1&supports_multiple_connections=true",
            None,
        )
        .await;
    let accounts = listed["data"][0]["connected_accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 1, "{listed}");
    assert_eq!(accounts[0]["account_display_name"], "Work");
    let (status, _) = app.admin(Method::GET, "/organizations/org_1/connected_accounts/shared", None).await;
    assert_eq!(status, 200);
    for name in ["10-accounts-one", "11-accounts-two", "12-accounts-back-to-one"] {
        assert!(shots.join(format!("{name}.png")).is_file(), "screenshot {name}");
    }
}

/// The refresh a scheduler would run next: it finds the grant revoked.
async fn force_refresh(app: &TestApp, integration: &pipes::store::integrations::Integration) {
    let id: pipes::ids::AccountId = sqlx::query_scalar(
        "UPDATE refresh_schedule s SET refresh_at = now() FROM connected_accounts c
         WHERE c.id = s.account_id AND c.user_id = 'user_alice' RETURNING c.id",
    )
    .fetch_one(&app.db)
    .await
    .expect("alice's account exists");
    let outcome = app.state.refresher.refresh(integration, &id, Reason::Scheduled).await.expect("refresh");
    assert!(matches!(outcome, RefreshOutcome::NeedsReauthorization), "{outcome:?}");
    let (status, read) = app
        .call(
            Method::POST,
            "/data-integrations/demo/token",
            Some(&app.tokens_key),
            Some(json!({ "user_id": "user_alice" })),
        )
        .await;
    assert_eq!((status, &read), (200, &json!({ "active": false, "error": "needs_reauthorization" })));
}

#[tokio::test]
async fn a_user_types_an_api_key_into_the_widget_and_sees_only_what_the_organization_allows() {
    if !tools_present() {
        return;
    }
    let app = TestApp::spawn().await;
    let (demo, _) = pipes::demo_provider::DemoProvider::spawn(pipes::demo_provider::DemoConfig::default())
        .await
        .expect("demo provider");
    demo.add_api_key("apikey_widget_0123456789", "bob@keyed");
    let (status, body) = app
        .admin(
            Method::POST,
            "/data-integrations",
            Some(json!({
                "provider": "keyed",
                "auth_methods": ["api_key"],
                "enabled": true,
                "custom_provider": {"name": "Keyed", "api_key": {
                    "placement": "header", "header": "Authorization", "format": "Bearer {api_key}",
                    "verify": {"method": "GET", "url": format!("{}/api/me", demo.base_url())}}},
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // Another provider, which org_1 switched off for its members: the widget leaves it out.
    demo_integration(&app, "hidden", ClientAuthMethod::Basic).await;
    let (status, body) = app
        .admin(
            Method::PUT,
            "/organizations/org_1/data_integration_configurations/hidden",
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let shots = bobs_widget_scenario(&app, "widget-keys.mjs").await;

    // Bob's account holds the key the provider accepted, and the wrong one left nothing.
    let (status, read) = app
        .call(
            Method::POST,
            "/data-integrations/keyed/credentials",
            Some(&app.tokens_key),
            Some(json!({ "user_id": "user_bob", "organization_id": "org_1" })),
        )
        .await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["credential"]["auth_method"], "api_key", "{read}");
    assert_eq!(read["credential"]["value"], "apikey_widget_0123456789", "{read}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM connected_accounts WHERE user_id = 'user_bob'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, 1);
    for name in ["13-key-form", "14-key-refused", "15-key-connected"] {
        assert!(shots.join(format!("{name}.png")).is_file(), "screenshot {name}");
    }
}

/// Runs `tests/browser/{script}` on the hosted widget of `user_bob` in `org_1`, which
/// must print `{"done": true}`; returns the screenshot directory.
async fn bobs_widget_scenario(app: &TestApp, script: &str) -> PathBuf {
    let (status, body) = app
        .admin(Method::POST, "/widgets/token", Some(json!({ "user_id": "user_bob", "organization_id": "org_1" })))
        .await;
    assert_eq!(status, 200, "{body}");
    let widget_url = app.url(&format!("/widget#token={}", body["token"].as_str().unwrap()));
    let shots = root().join("artifacts/screenshots");
    let run = tokio::process::Command::new("node")
        .arg(root().join("tests/browser").join(script))
        .args([widget_url.as_str(), shots.to_str().unwrap()])
        .current_dir(root().join("tests/browser"))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(SCENARIO_TIMEOUT, run).await.expect("the scenario finishes").expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("\"done\":true"),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    shots
}
