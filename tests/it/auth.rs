//! API keys on the admin routes: a missing or unknown key is a 401, a `tokens`
//! key on an admin route a 403, each with a JSON body saying why.

use reqwest::Method;

use crate::support::app::TestApp;

const ADMIN_ROUTES: [(&str, &str); 4] = [
    ("GET", "/data-integrations"),
    ("POST", "/data-integrations/github/authorize"),
    ("GET", "/user_management/users/u1/connected_accounts/github"),
    ("GET", "/user_management/users/u1/data_providers"),
];

fn method(name: &str) -> Method {
    Method::from_bytes(name.as_bytes()).unwrap()
}

#[tokio::test]
async fn a_request_without_a_key_is_401_with_a_json_body() {
    let app = TestApp::spawn().await;
    for (m, path) in ADMIN_ROUTES {
        let (status, body) = app.call(method(m), path, None, None).await;
        assert_eq!(status, 401, "{m} {path}");
        assert_eq!(body["code"], "unauthorized");
        assert!(body["message"].as_str().unwrap().contains("Authorization"), "{body}");
    }
    let resp =
        app.http.get(app.url("/data-integrations")).header("authorization", "Basic dXNlcjpwdw==").send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn an_unknown_key_is_401() {
    let app = TestApp::spawn().await;
    for (m, path) in ADMIN_ROUTES {
        let (status, body) = app.call(method(m), path, Some("pipes_sk_not_a_real_key"), None).await;
        assert_eq!(status, 401, "{m} {path}");
        assert_eq!(body["code"], "unauthorized");
        assert!(body["message"].as_str().unwrap().contains("Unknown"), "{body}");
    }
}

#[tokio::test]
async fn a_tokens_key_on_an_admin_route_is_403() {
    let app = TestApp::spawn().await;
    let key = app.tokens_key.clone();
    for (m, path) in ADMIN_ROUTES {
        let (status, body) = app.call(method(m), path, Some(&key), None).await;
        assert_eq!(status, 403, "{m} {path}");
        assert_eq!(body["code"], "forbidden");
        assert!(body["message"].as_str().unwrap().contains("admin key"), "{body}");
    }
    let (status, _) = app.call(Method::GET, "/data-integrations", Some(&app.admin_key.clone()), None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_oauth_callback_needs_no_key_because_browsers_call_it() {
    let app = TestApp::spawn().await;
    let resp = app.http.get(app.url("/data-integrations/github/callback?code=x&state=y")).send().await.unwrap();
    assert_ne!(resp.status(), 401);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
}
