//! The official WorkOS Node SDK, unmodified, against a running Pipes:
//! `tests/sdk/node/pipes-sdk-12.mjs` calls every one of the 26 Pipes methods of
//! `@workos-inc/node` 12.3.0 (both integration roots, connect with every intent, the
//! user's and the organization's accounts, token and credential reads, imports, the
//! auth methods Pipes refuses); `pipes-sdk.mjs` is a smoke test of 11.0.0.
//! `.ci/install-tools` installs both (`npm ci` in tests/sdk/node).

use std::path::PathBuf;
use std::time::Duration;

use pipes::demo_provider::{ClientAuthMethod, ClientRegistration, DemoConfig, DemoProvider};

use crate::connect::events;
use crate::support::app::TestApp;

/// Runs `script` against `app` with a demo provider registered for `slug`; returns stdout.
async fn run_script(app: &TestApp, script: &str, slug: &str) -> (DemoProvider, String) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/node");
    for package in ["@workos-inc/node", "workos-node-11"] {
        assert!(
            dir.join("node_modules").join(package).join("package.json").exists(),
            "{}/node_modules/{package} is missing: run .ci/install-tools (npm ci there)",
            dir.display()
        );
    }
    let (demo, _) = DemoProvider::spawn(DemoConfig { auto_consent: true, ..DemoConfig::default() }).await.unwrap();
    let client_secret = format!("sdk-secret-{}", ulid::Ulid::new());
    demo.register_client(ClientRegistration {
        client_id: "sdk-client".into(),
        client_secret: client_secret.clone(),
        redirect_uris: vec![app.config().redirect_uri(slug)],
        auth_method: ClientAuthMethod::Basic,
    });
    // For the API-key and client-credentials integrations.
    demo.add_api_key("apikey_sdk_alpha_0123456789", "alpha");
    demo.add_api_key("apikey_sdk_bravo_0123456789", "bravo");
    demo.register_client(ClientRegistration {
        client_id: "sdk-machine".into(),
        client_secret: "ccsecret_sdk_0123456789".into(),
        redirect_uris: vec![],
        auth_method: ClientAuthMethod::Basic,
    });
    let run = tokio::process::Command::new("node")
        .arg(script)
        .current_dir(&dir)
        .env("PIPES_SDK_HOST", app.addr.ip().to_string())
        .env("PIPES_SDK_PORT", app.addr.port().to_string())
        .env("PIPES_SDK_API_KEY", &app.admin_key)
        .env("PIPES_SDK_SLUG", slug)
        .env("PIPES_SDK_DEMO_URL", demo.base_url())
        .env("PIPES_SDK_CLIENT_ID", "sdk-client")
        .env("PIPES_SDK_CLIENT_SECRET", &client_secret)
        .env("PIPES_SDK_RETURN_TO", "http://app.test/connected")
        .env("PIPES_SDK_BOUND_RETURN_TO", "http://app.test/pipes/return")
        .kill_on_drop(true)
        .output();
    let output =
        tokio::time::timeout(Duration::from_secs(90), run).await.expect("the SDK script finishes").expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{script} failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("\"ok\":true"), "{stdout}");
    (demo, stdout)
}

#[tokio::test]
async fn every_pipes_method_of_the_node_sdk_12_works_against_pipes() {
    let app = TestApp::spawn().await;
    let (demo, stdout) = run_script(&app, "pipes-sdk-12.mjs", "sdk12-demo").await;
    let line = stdout.lines().find(|l| l.contains("\"ok\":true")).unwrap();
    let summary: serde_json::Value = serde_json::from_str(line).unwrap();
    let methods: Vec<&str> = summary["methods"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    assert_eq!(methods.len(), 26, "every Pipes method of the SDK: {methods:?}");
    // Four connect flows went through the provider: the user's two accounts, the
    // organization's, and a session-bound one (exchanged by finishConnection).
    assert_eq!(demo.stats().code_exchanges, 4);
    // Deleting both roots took every account with them, each with its event.
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM connected_accounts").fetch_one(&app.db).await.unwrap();
    assert_eq!(accounts, 0);
    let kinds: Vec<String> = events(&app).await.into_iter().map(|(e, _)| e).collect();
    let count = |kind: &str| kinds.iter().filter(|k| k.as_str() == kind).count();
    // Connected: 4 flows, the organization import, 2 user imports, 2 API keys and a
    // client; replacements of connected accounts (and rotated credentials) announce nothing.
    assert_eq!(count("pipes.connected_account.connected"), 10, "{kinds:?}");
    assert_eq!(count("pipes.connected_account.disconnected"), 10, "{kinds:?}");
    // A connect and a rotation; the refused client never got past authentication.
    assert_eq!(demo.client_credentials_clients(), ["sdk-machine"; 2]);
}

#[tokio::test]
async fn the_node_sdk_11_still_drives_integrations_connect_and_connected_accounts() {
    let app = TestApp::spawn().await;
    let (demo, _) = run_script(&app, "pipes-sdk.mjs", "sdk-demo").await;
    // What the SDK did is what the store and the outbox say.
    assert_eq!(demo.stats().code_exchanges, 1);
    let users: Vec<String> =
        sqlx::query_scalar("SELECT user_id FROM connected_accounts").fetch_all(&app.db).await.unwrap();
    assert_eq!(users, ["user_imported"]);
    let kinds: Vec<String> = events(&app).await.into_iter().map(|(e, _)| e).collect();
    assert_eq!(
        kinds,
        [
            "pipes.connected_account.connected",
            "pipes.connected_account.connected",
            "pipes.connected_account.disconnected"
        ]
    );
}
