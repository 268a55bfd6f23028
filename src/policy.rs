//! Token policy (DESIGN §2.1, §2.2): when a token may be served or cached, how
//! long a cache keeps it, and when it is refreshed. Pure functions of `now` and
//! the configured durations; the store, the Redis cache, the local answer cache
//! and the read path all decide by these, and the one SQL statement that
//! selects servable tokens (`store::accounts::fresh_page`) takes its threshold
//! from [`serve_floor`] and its `now` as a parameter.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Kept on top of `min_validity` wherever Pipes decides that a token is fresh
/// enough to serve or to cache: the answer still has to travel to the caller,
/// and on a loaded machine a token judged fresh with `min_validity + 0.1 s`
/// left would arrive with less than the promised `min_validity`.
pub const SERVE_MARGIN: Duration = Duration::from_secs(5);

/// Redis entries of tokens that never expire live this long, which also bounds
/// how long an entry whose invalidation never arrived could live.
pub const NON_EXPIRING_TTL: Duration = Duration::from_secs(300);
/// The longest any Redis entry lives, however long its token stays valid.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(3600);
/// An entry that would live less than this is not written.
const MIN_CACHE_TTL: Duration = Duration::from_millis(10);

/// The least time a token must have left to be served or cached:
/// `min_validity + SERVE_MARGIN`.
pub fn serve_floor(min_validity: Duration) -> chrono::Duration {
    chrono::Duration::from_std(min_validity.saturating_add(SERVE_MARGIN))
        .unwrap_or_else(|_| chrono::Duration::days(36_500))
}

/// The instant a token expiring at `expires_at` stops being servable; `None`
/// for a token that never expires.
pub fn servable_until(expires_at: Option<DateTime<Utc>>, min_validity: Duration) -> Option<DateTime<Utc>> {
    // A token whose expiry sits at the calendar's start was never servable.
    expires_at.map(|exp| exp.checked_sub_signed(serve_floor(min_validity)).unwrap_or(DateTime::<Utc>::MIN_UTC))
}

/// Whether a token servable until `until` ([`servable_until`]) may be served at `now`.
pub fn still_servable(until: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    until.is_none_or(|until| now < until)
}

/// Whether a token expiring at `expires_at` may be served (or cached) at `now`:
/// it stays valid for at least `min_validity` plus [`SERVE_MARGIN`].
pub fn servable(expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>, min_validity: Duration) -> bool {
    still_servable(servable_until(expires_at, min_validity), now)
}

/// The tripwire behind `pipes_stale_tokens_served_total`: a token with less than
/// `min_validity` itself (no margin) left at `now` breaks the read API's promise.
pub fn breaks_promise(expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>, min_validity: Duration) -> bool {
    let promise = chrono::Duration::from_std(min_validity).unwrap_or_else(|_| chrono::Duration::days(36_500));
    expires_at.is_some_and(|exp| exp.signed_duration_since(now) < promise)
}

/// How long the Redis cache keeps a servable token; `None` when it must not be cached.
pub fn cache_ttl(expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>, min_validity: Duration) -> Option<Duration> {
    let ttl = match servable_until(expires_at, min_validity) {
        None => NON_EXPIRING_TTL,
        Some(until) => until.signed_duration_since(now).to_std().ok()?.min(MAX_CACHE_TTL),
    };
    (ttl >= MIN_CACHE_TTL).then_some(ttl)
}

/// When to refresh (DESIGN §2.2): `expires_at - min(lead, lifetime / 2)`, minus
/// a jitter of up to a tenth of that lead (at most 30 s) so a batch of tokens
/// issued together does not come due together. `jitter` is in [0, 1).
/// `None` when the account cannot or need not be refreshed.
pub fn refresh_at(
    now: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    has_refresh_token: bool,
    tokens_expire: bool,
    lead: Duration,
    jitter: f64,
) -> Option<DateTime<Utc>> {
    let expires_at = expires_at?;
    if !has_refresh_token || !tokens_expire {
        return None;
    }
    let lifetime = expires_at.signed_duration_since(now).max(chrono::Duration::zero());
    let lead = chrono::Duration::from_std(lead).unwrap_or_default().min(lifetime / 2);
    let max_jitter = (lead / 10).min(chrono::Duration::seconds(30));
    let jitter_ms = (max_jitter.num_milliseconds() as f64 * jitter.clamp(0.0, 1.0)) as i64;
    // Checked: an imported `expires_at` may sit at the very edge of the calendar.
    expires_at.checked_sub_signed(lead)?.checked_sub_signed(chrono::Duration::milliseconds(jitter_ms))
}
