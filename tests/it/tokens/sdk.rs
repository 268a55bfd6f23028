//! The official SDKs read all three answer shapes from a running `pipes serve`:
//! the Node SDK (`workos.pipes.getAccessToken`, `tests/sdk/node`) and the
//! Python SDK (`client.pipes.get_access_token`, `tests/sdk/python`), both
//! installed by `.ci/install-tools`.

use std::path::PathBuf;
use std::time::Duration;

use pipes::demo_provider::ClientAuthMethod;
use serde_json::{json, Value};

use super::{read, HOUR};
use crate::support::app::TestApp;
use crate::support::fixtures::{demo_integration, seed_account};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// An app with one integration and owners in every state; returns the
/// owners to read and the tokens they should get (`None`: the error).
async fn scenario(slug: &str) -> (TestApp, Value, Vec<Result<String, &'static str>>) {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, slug, ClientAuthMethod::Basic).await;
    let (_, personal) = seed_account(&app, &p, "u1", None, HOUR).await;
    let (_, in_org) = seed_account(&app, &p, "u1", Some("org_1"), HOUR).await;
    let (_, revoked) = seed_account(&app, &p, "u3", None, Duration::from_secs(5)).await;
    assert!(p.demo.revoke_grant_of(&revoked));
    let (_, answer) = read(&app, slug, json!({"user_id": "u3"})).await;
    assert_eq!(answer["error"], "needs_reauthorization");
    let owners = json!([
        {"user_id": "u1"},
        {"user_id": "u1", "organization_id": "org_1"},
        {"user_id": "ghost"},
        {"user_id": "u3"},
    ]);
    (app, owners, vec![Ok(personal), Ok(in_org), Err("not_installed"), Err("needs_reauthorization")])
}

async fn run_script(app: &TestApp, slug: &str, owners: &Value, program: PathBuf, script: PathBuf) -> Vec<Value> {
    assert!(
        program.exists() || program.components().count() == 1,
        "{} is missing: run .ci/install-tools",
        program.display()
    );
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&program)
            .arg(&script)
            .env("PIPES_URL", &app.base_url)
            .env("PIPES_API_KEY", &app.tokens_key)
            .env("PIPES_SLUG", slug)
            .env("PIPES_OWNERS", owners.to_string())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the SDK script finished in time")
    .unwrap_or_else(|e| panic!("{} could not start ({e}): run .ci/install-tools", program.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{} failed:\n{stdout}\n{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str::<Vec<Value>>(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn check(results: &[Value], expected: &[Result<String, &'static str>]) {
    assert_eq!(results.len(), expected.len());
    for (got, want) in results.iter().zip(expected) {
        match want {
            Ok(token) => {
                assert_eq!(got["active"], true, "{got}");
                assert_eq!(got["access_token"], token.as_str());
                assert_eq!(got["credential_value"], token.as_str());
                assert_eq!(got["scopes"], json!(["read"]));
                assert_eq!(got["missing_scopes"], json!(["write"]));
                assert!(got["expires_at"].is_string(), "{got}");
            }
            Err(error) => {
                assert_eq!(got["active"], false, "{got}");
                assert_eq!(got["error"], *error);
                assert_eq!(got["credential_active"], false);
                assert_eq!(got["credential_error"], *error);
            }
        }
    }
}

#[tokio::test]
async fn the_node_sdk_parses_every_answer_shape() {
    let (app, owners, expected) = scenario("sdk-node").await;
    let node = std::env::var_os("PIPES_SDK_NODE").map(PathBuf::from).unwrap_or_else(|| "node".into());
    let script = repo().join("tests/sdk/node/get_access_token.mjs");
    assert!(
        repo().join("tests/sdk/node/node_modules/@workos-inc/node").exists(),
        "run .ci/install-tools (npm ci in tests/sdk/node)"
    );
    let results = run_script(&app, "sdk-node", &owners, node, script).await;
    check(&results, &expected);
    assert_eq!(results[0]["expires_at_is_date"], true, "expires_at parsed into a Date");
}

#[tokio::test]
async fn the_python_sdk_parses_every_answer_shape() {
    let (app, owners, expected) = scenario("sdk-python").await;
    let python = std::env::var_os("PIPES_SDK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/sdk-venv/bin/python"));
    let script = repo().join("tests/sdk/python/get_access_token.py");
    let results = run_script(&app, "sdk-python", &owners, python, script).await;
    check(&results, &expected);
    assert_eq!(results[0]["expires_at_is_datetime"], true, "expires_at parsed into a datetime");
}
