//! The official Python SDK (`workos` 10.8, unmodified, strict about every key it
//! reads) against a running Pipes: `tests/sdk/python/pipes_admin.py` creates, lists,
//! reads and updates an integration, imports, reads, replaces and deletes a connected
//! account, lists the owner's providers and reads the token; `pipes_sharing.py`
//! calls the rest of its 26 Pipes methods: both integration roots, an organization's
//! shared account, several accounts of one user, account selection, authorize with
//! every intent, the auth methods Pipes refuses. `.ci/install-tools` installs the SDK
//! into `target/sdk-venv`.

use std::path::PathBuf;
use std::time::Duration;

use pipes::demo_provider::{ClientAuthMethod, ClientRegistration, DemoConfig, DemoProvider};

use crate::support::app::TestApp;

/// Runs `script` (in tests/sdk/python) with the SDK's venv against `app`, a demo
/// provider's URL and `env`; returns its stdout once it succeeded.
async fn run_script(app: &TestApp, script: &str, slug: &str, env: &[(&str, &str)]) -> String {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os("PIPES_SDK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target/sdk-venv/bin/python"));
    assert!(python.exists(), "{} is missing: run .ci/install-tools", python.display());
    let (demo, _) = DemoProvider::spawn(DemoConfig::default()).await.unwrap();
    // For the API-key and client-credentials integrations.
    demo.add_api_key("apikey_py_alpha_0123456789", "alpha");
    demo.add_api_key("apikey_py_bravo_0123456789", "bravo");
    demo.register_client(ClientRegistration {
        client_id: "py-machine".into(),
        client_secret: "ccsecret_py_0123456789".into(),
        redirect_uris: vec![],
        auth_method: ClientAuthMethod::Basic,
    });
    let run = tokio::process::Command::new(&python)
        .arg(repo.join("tests/sdk/python").join(script))
        .env("PIPES_URL", &app.base_url)
        .env("PIPES_API_KEY", &app.admin_key)
        .env("PIPES_SLUG", slug)
        .env("PIPES_DEMO_URL", demo.base_url())
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run).await.expect("the SDK script finishes").unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{script} failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    stdout
}

#[tokio::test]
async fn the_official_python_sdk_parses_integrations_connected_accounts_and_providers() {
    let app = TestApp::spawn().await;
    let secret = format!("py-secret-{}", ulid::Ulid::new());
    let env = [("PIPES_CLIENT_ID", "py-client"), ("PIPES_CLIENT_SECRET", secret.as_str())];
    let stdout = run_script(&app, "pipes_admin.py", "sdk-python-admin", &env).await;
    assert_eq!(stdout.lines().last(), Some(r#"{"ok": true}"#), "{stdout}");
    // What the SDK did is what the store says: the account and the integration are gone.
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM connected_accounts").fetch_one(&app.db).await.unwrap();
    let integrations: i64 = sqlx::query_scalar("SELECT count(*) FROM integrations WHERE slug = 'sdk-python-admin'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!((accounts, integrations), (0, 0));
}

#[tokio::test]
async fn the_official_python_sdk_drives_shared_and_multiple_connections() {
    let app = TestApp::spawn().await;
    let stdout = run_script(&app, "pipes_sharing.py", "sdk-python-shared", &[]).await;
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("{stdout}");
    assert_eq!(summary["ok"], true);
    assert_eq!(summary["methods"].as_array().unwrap().len(), 26, "every Pipes method of the SDK: {summary}");
    assert_eq!(
        summary["provider_methods"],
        serde_json::json!([
            "list_organization_data_integration_configurations",
            "update_organization_data_integration_configuration"
        ]),
        "both Pipes Provider methods: {summary}"
    );
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM connected_accounts").fetch_one(&app.db).await.unwrap();
    assert_eq!(accounts, 0, "deleting both roots took every account");
}
