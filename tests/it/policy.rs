//! The token policy (`pipes::policy`) as pure functions of `now`: when a token
//! is servable, how long the cache keeps it, when it is refreshed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use pipes::policy::*;

const MIN: Duration = Duration::from_secs(60);

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(1_800_000_000 + secs, 0).unwrap_or_default()
}

#[test]
fn a_token_is_servable_until_min_validity_and_the_margin_before_it_expires() {
    let exp = Some(at(3600));
    assert!(servable(exp, at(3600 - 66), MIN));
    assert!(!servable(exp, at(3600 - 65), MIN), "65 s left is min_validity plus the margin: no longer");
    assert!(servable(None, at(0), MIN), "a token that never expires is always servable");
    assert_eq!(servable_until(exp, MIN), Some(at(3600 - 65)));
}

#[test]
fn the_tripwire_counts_only_what_breaks_the_promise_itself() {
    let exp = Some(at(100));
    assert!(!breaks_promise(exp, at(40), MIN), "exactly min_validity left keeps the promise");
    assert!(breaks_promise(exp, at(41), MIN));
    assert!(!breaks_promise(None, at(0), MIN));
}

#[test]
fn the_cache_keeps_a_token_until_it_stops_being_servable_and_never_longer_than_an_hour() {
    assert_eq!(cache_ttl(Some(at(600)), at(0), MIN), Some(Duration::from_secs(535)));
    assert_eq!(cache_ttl(Some(at(86_400)), at(0), MIN), Some(MAX_CACHE_TTL));
    assert_eq!(cache_ttl(None, at(0), MIN), Some(NON_EXPIRING_TTL));
    assert_eq!(cache_ttl(Some(at(65)), at(0), MIN), None, "not servable: not cached");
    assert_eq!(cache_ttl(Some(at(30)), at(0), MIN), None);
}

#[test]
fn refresh_comes_a_lead_before_expiry_at_most_half_the_lifetime_with_bounded_jitter() {
    let lead = Duration::from_secs(600);
    assert_eq!(refresh_at(at(0), Some(at(3600)), true, true, lead, 0.0), Some(at(3000)));
    assert_eq!(refresh_at(at(0), Some(at(600)), true, true, lead, 0.0), Some(at(300)), "half a short lifetime");
    let jittered = refresh_at(at(0), Some(at(3600)), true, true, lead, 0.999).unwrap_or_default();
    assert!(jittered < at(3000) && jittered >= at(3000 - 60), "{jittered}");
    assert_eq!(refresh_at(at(0), Some(at(3600)), false, true, lead, 0.0), None, "nothing to refresh with");
    assert_eq!(refresh_at(at(0), Some(at(3600)), true, false, lead, 0.0), None, "tokens that never expire");
    assert_eq!(refresh_at(at(0), None, true, true, lead, 0.0), None);
    // Expiries at the calendar's edges: due at once, or a lead before the end, never a panic.
    let first = DateTime::<Utc>::MIN_UTC;
    assert_eq!(refresh_at(at(0), Some(first), true, true, lead, 0.5), Some(first));
    let last = DateTime::<Utc>::MAX_UTC;
    assert_eq!(
        refresh_at(at(0), Some(last), true, true, lead, 0.0),
        last.checked_sub_signed(chrono::Duration::minutes(10))
    );
}

#[test]
fn absurd_durations_saturate_instead_of_panicking() {
    let forever = Duration::from_secs(u64::MAX);
    assert!(serve_floor(forever) > chrono::Duration::days(36_000));
    assert!(!servable(Some(at(0)), at(0), forever));
    assert!(servable_until(Some(DateTime::<Utc>::MIN_UTC), MIN).is_some());
}
