//! The foundation: key ring, key rotation, configuration, API keys, the HTTP skeleton.

use pipes::config::{Config, Settings};
use pipes::crypto::{aad, CryptoError, KeyRing};
use reqwest::Method;
use serde_json::json;

use crate::support::app::{test_settings, TestApp, TEST_KEY};

const OTHER_KEY: &str = "test2:ISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+P0A=";

#[test]
fn sealed_secret_opens_only_for_its_row_and_column() {
    let ring = KeyRing::parse(TEST_KEY).unwrap();
    let sealed = ring.seal_str("gho_secret", aad("connected_accounts.access_token", "row1")).unwrap();
    assert_eq!(ring.open_string(&sealed, aad("connected_accounts.access_token", "row1")).unwrap(), "gho_secret");
    assert_eq!(ring.open(&sealed, aad("connected_accounts.access_token", "row2")), Err(CryptoError::Open));
    assert_eq!(ring.open(&sealed, aad("connected_accounts.refresh_token", "row1")), Err(CryptoError::Open));
    let mut tampered = sealed.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert_eq!(ring.open(&tampered, aad("connected_accounts.access_token", "row1")), Err(CryptoError::Open));
    assert!(!sealed.windows(10).any(|w| w == b"gho_secret"), "ciphertext holds no plaintext");
}

#[test]
fn old_ciphertexts_open_after_a_new_key_is_added_and_fail_once_it_is_removed() {
    let old = KeyRing::parse(TEST_KEY).unwrap();
    let sealed = old.seal_str("v", aad("c", "r")).unwrap();
    let both = KeyRing::parse(&format!("{OTHER_KEY},{TEST_KEY}")).unwrap();
    assert_eq!(both.open_string(&sealed, aad("c", "r")).unwrap(), "v");
    assert_eq!(KeyRing::key_id_of(&both.seal_str("v", aad("c", "r")).unwrap()).unwrap(), "test2");
    let only_new = KeyRing::parse(OTHER_KEY).unwrap();
    assert_eq!(only_new.open(&sealed, aad("c", "r")), Err(CryptoError::UnknownKey("test1".into())));
}

#[test]
fn key_ring_debug_and_errors_never_show_key_material() {
    let ring = KeyRing::parse(TEST_KEY).unwrap();
    let shown = format!("{ring:?}");
    assert!(shown.contains("test1") && !shown.contains("AAECAwQF"), "{shown}");
    assert!(KeyRing::parse("k1:c2hvcnQ=").unwrap_err().to_string().contains("32 bytes"));
    assert!(KeyRing::parse("nocolon").is_err());
    assert!(KeyRing::parse(&format!("{TEST_KEY},{TEST_KEY}")).is_err(), "duplicate ids refused");
}

#[test]
fn configuration_names_the_bad_setting() {
    let mut s = test_settings("db", "u", "http://localhost:8080");
    assert!(Config::from_settings(&s).is_ok());
    let shown = format!("{s:?}");
    assert!(shown.contains("encryption_keys") && !shown.contains("AAECAwQF"), "settings show names only: {shown}");
    let mut missing = Settings::default();
    missing.set("PIPES_LISTEN", "127.0.0.1:1");
    let err = Config::from_settings(&missing).unwrap_err().to_string();
    assert!(err.contains("PIPES_ENCRYPTION_KEYS"), "{err}");
    s.set("PIPES_SCHEDULER_CRON", "*/5 * * * *");
    let err = Config::from_settings(&s).unwrap_err().to_string();
    assert!(err.contains("PIPES_SCHEDULER_CRON"), "{err}");
    s.set("PIPES_SCHEDULER_CRON", "0 0 0 30 2 * *");
    assert!(Config::from_settings(&s).unwrap_err().to_string().contains("never fires"));
    s.set("PIPES_SCHEDULER_CRON", "*/5 * * * * *").set("PIPES_REFRESH_LEAD", "ten minutes");
    assert!(Config::from_settings(&s).unwrap_err().to_string().contains("PIPES_REFRESH_LEAD"));
    s.set("PIPES_REFRESH_LEAD", "10m").set("PIPES_LISTEN", "nowhere");
    assert!(Config::from_settings(&s).unwrap_err().to_string().contains("PIPES_LISTEN"));
}

#[test]
fn configuration_reads_a_toml_file_with_the_same_keys() {
    let dir = std::env::temp_dir().join(format!("pipes-cfg-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pipes.toml");
    std::fs::write(
        &path,
        format!("encryption_keys = \"{TEST_KEY}\"\nPIPES_MIN_VALIDITY = \"90s\"\nworker_concurrency = 3\n"),
    )
    .unwrap();
    let mut s = Settings::default();
    s.merge_file(&path).unwrap();
    let config = Config::from_settings(&s).unwrap();
    assert_eq!(config.min_validity.as_secs(), 90);
    assert_eq!(config.worker_concurrency, 3);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn a_revoked_key_stops_working_within_seconds() {
    let app = TestApp::spawn().await;
    let (key, info) = pipes::auth::create_key(&app.db, "short-lived", pipes::auth::Role::Tokens).await.unwrap();
    assert_eq!(app.state.keys.verify(&key).await.unwrap(), Some(pipes::auth::Role::Tokens));
    assert_eq!(pipes::auth::revoke_key(&app.db, &info.id).await.unwrap(), 1);
    tokio::time::sleep(pipes::auth::KEY_CACHE_TTL + std::time::Duration::from_millis(100)).await;
    assert_eq!(app.state.keys.verify(&key).await.unwrap(), None);
    let stored: Vec<String> = sqlx::query_scalar("SELECT key_hash FROM api_keys").fetch_all(&app.db).await.unwrap();
    assert!(stored.iter().all(|h| h.len() == 64 && !h.contains(&key)), "only hashes are stored");
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_echoes_a_given_one() {
    let app = TestApp::spawn().await;
    let resp = app.http.get(app.url("/health/live")).send().await.unwrap();
    assert!(resp.headers()["x-request-id"].to_str().unwrap().starts_with("req_"));
    let resp = app.http.get(app.url("/nope")).header("x-request-id", "abc-123").send().await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "not_found");
}

#[tokio::test]
async fn readiness_reports_each_dependency() {
    let app = TestApp::spawn().await;
    let (status, body) = app.call(Method::GET, "/health/ready", None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"], json!({"postgres": "up", "redis": "up", "rabbitmq": "up"}));
    let down = TestApp::spawn_with(|s| {
        s.set("PIPES_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f");
    })
    .await;
    let (status, body) = down.call(Method::GET, "/health/ready", None, None).await;
    assert_eq!(status, 503);
    assert_eq!(body["checks"]["rabbitmq"], "down");
    assert!(body["message"].as_str().unwrap().contains("rabbitmq"));
}

#[tokio::test]
async fn openapi_and_metrics_are_served() {
    let app = TestApp::spawn().await;
    let (status, body) = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert!(body["paths"]["/health/ready"].is_object());
    let text = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.is_empty() || text.contains("# TYPE") || text.contains("pipes_"), "{text}");
}

#[tokio::test]
async fn key_rotation_reencrypts_every_secret_so_the_old_key_can_go() {
    let app = TestApp::spawn().await;
    let old = KeyRing::parse(TEST_KEY).unwrap();
    // Secrets written under the old key, in two encrypted tables.
    for i in 0..7 {
        let id = format!("we_{i:02}");
        let secret = old.seal_str("whsec", aad(pipes::keys::columns::WEBHOOK_SECRET, &id)).unwrap();
        sqlx::query("INSERT INTO webhook_endpoints (id, endpoint_url, secret_enc) VALUES ($1, 'http://x.test', $2)")
            .bind(&id)
            .bind(secret)
            .execute(&app.db)
            .await
            .unwrap();
    }
    let both = KeyRing::parse(&format!("{OTHER_KEY},{TEST_KEY}")).unwrap();
    let mut seen = 0;
    let report = pipes::keys::rotate(&app.db, &both, 3, |n| seen += n).await.unwrap();
    assert_eq!((report.examined, report.rewritten), (7, 7));
    assert_eq!(seen, 7);
    // Resumable: a second run finds nothing to do.
    let again = pipes::keys::rotate(&app.db, &both, 3, |_| {}).await.unwrap();
    assert_eq!(again.rewritten, 0);
    let only_new = KeyRing::parse(OTHER_KEY).unwrap();
    let rows: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT id, secret_enc FROM webhook_endpoints").fetch_all(&app.db).await.unwrap();
    for (id, value) in rows {
        assert_eq!(only_new.open_string(&value, aad(pipes::keys::columns::WEBHOOK_SECRET, &id)).unwrap(), "whsec");
    }
}

#[test]
fn ids_made_back_to_back_sort_in_the_order_they_were_made() {
    use pipes::ids::IdKind;
    // Thousands per millisecond: plain ULIDs would be in random order within each one.
    let ids: Vec<String> = (0..5_000).map(|_| IdKind::Integration.new_id()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    assert!(ids.iter().all(|id| IdKind::Integration.matches(id)));
}
