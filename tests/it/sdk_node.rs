//! The official WorkOS Node SDK (`@workos-inc/node` 11, unmodified) against a
//! running Pipes: `tests/sdk/node/pipes-sdk.mjs` creates an integration, connects
//! an account through the demo provider, reads, lists, imports and deletes.
//! `.ci/install-tools` installs the SDK.

use std::path::PathBuf;
use std::time::Duration;

use pipes::demo_provider::{ClientAuthMethod, ClientRegistration, DemoConfig, DemoProvider};

use crate::connect::events;
use crate::support::app::TestApp;

#[tokio::test]
async fn the_official_node_sdk_drives_integrations_connect_and_connected_accounts() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/node");
    assert!(
        dir.join("node_modules/@workos-inc/node/package.json").exists(),
        "{}/node_modules is missing: run .ci/install-tools (npm ci there)",
        dir.display()
    );
    let app = TestApp::spawn().await;
    let slug = "sdk-demo";
    let (demo, _) = DemoProvider::spawn(DemoConfig { auto_consent: true, ..DemoConfig::default() }).await.unwrap();
    let client_secret = format!("sdk-secret-{}", ulid::Ulid::new());
    demo.register_client(ClientRegistration {
        client_id: "sdk-client".into(),
        client_secret: client_secret.clone(),
        redirect_uris: vec![app.config().redirect_uri(slug)],
        auth_method: ClientAuthMethod::Basic,
    });
    let run = tokio::process::Command::new("node")
        .arg("pipes-sdk.mjs")
        .current_dir(&dir)
        .env("PIPES_SDK_HOST", app.addr.ip().to_string())
        .env("PIPES_SDK_PORT", app.addr.port().to_string())
        .env("PIPES_SDK_API_KEY", &app.admin_key)
        .env("PIPES_SDK_SLUG", slug)
        .env("PIPES_SDK_DEMO_URL", demo.base_url())
        .env("PIPES_SDK_CLIENT_ID", "sdk-client")
        .env("PIPES_SDK_CLIENT_SECRET", &client_secret)
        .env("PIPES_SDK_RETURN_TO", "http://app.test/connected")
        .kill_on_drop(true)
        .output();
    let output =
        tokio::time::timeout(Duration::from_secs(60), run).await.expect("the SDK script finishes").expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "SDK script failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("\"ok\":true"), "{stdout}");
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
