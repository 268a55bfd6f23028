//! Findings of the soak (`benches/soak`), kept as regressions: the stored expiry of a token
//! never outlives the token at the provider, and the demo provider's lifetime range knob
//! that the soak relies on.

use std::time::Duration;

use chrono::Utc;
use pipes::demo_provider::{ClientAuthMethod, Fault};
use pipes::refresh::{Reason, RefreshOutcome};

use crate::support::app::TestApp;
use crate::support::fixtures::{demo_integration, seed_account};

#[tokio::test]
async fn a_refreshed_token_expiry_counts_from_the_request_not_the_slow_answer() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "soak-expiry", ClientAuthMethod::Basic).await;
    p.demo.set_access_ttl(Duration::from_secs(120));
    let (account, _) = seed_account(&app, &p, "u1", None, Duration::from_secs(5)).await;
    // The provider takes 1.5 s to answer `expires_in: 120`; the token it mints lives 120 s
    // from before that wait at most, so Pipes must not believe in more.
    p.demo.push_fault(Fault::Delay(Duration::from_millis(1500)));
    let before = Utc::now();
    let outcome = app.state.refresher.refresh(&p.integration, &account.id, Reason::OnDemand).await.unwrap();
    let RefreshOutcome::Refreshed(stored) = outcome else { panic!("expected a refresh, got {outcome:?}") };
    let expires_at = stored.expires_at.expect("an expiring token");
    let latest_true_expiry = before + chrono::Duration::milliseconds(1500) + chrono::Duration::seconds(120);
    assert!(
        expires_at <= before + chrono::Duration::seconds(120) + chrono::Duration::milliseconds(500),
        "stored expiry {expires_at} overstates the lifetime (request sent at {before}, true expiry ≤ {latest_true_expiry})"
    );
    // And what the provider says agrees: the token is not valid for longer than Pipes thinks.
    let (_, left) = p.demo.access_token_info(stored.access_token.as_ref().unwrap().expose()).expect("live token");
    let left = chrono::Duration::from_std(left.expect("expires")).unwrap();
    assert!(Utc::now() + left >= expires_at - chrono::Duration::seconds(1));
}

#[tokio::test]
async fn the_demo_provider_spreads_access_token_lifetimes_over_a_range() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "soak-ttl", ClientAuthMethod::Basic).await;
    p.demo.set_access_ttl_range(Duration::from_secs(120), Duration::from_secs(600));
    let lifetimes: Vec<u64> = (0..200)
        .map(|i| p.demo.issue_grant(&p.integration.client_id, &format!("u{i}"), &["read"]).unwrap().expires_in.unwrap())
        .collect();
    assert!(lifetimes.iter().all(|s| (120..=600).contains(s)), "{lifetimes:?}");
    let distinct: std::collections::BTreeSet<_> = lifetimes.iter().collect();
    assert!(distinct.len() > 50, "lifetimes should be spread, got {} distinct", distinct.len());
    // A fixed lifetime set afterwards wins over the range.
    p.demo.set_access_ttl(Duration::from_secs(90));
    assert_eq!(p.demo.issue_grant(&p.integration.client_id, "fixed", &["read"]).unwrap().expires_in, Some(90));
}
