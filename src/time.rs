//! Timestamps as the wire API writes them: RFC 3339 UTC with exactly three
//! fractional digits and `Z`.

use chrono::{DateTime, SecondsFormat, Utc};

/// The current time: the one place the library reads the clock (`clippy.toml`
/// keeps `Utc::now` out of everything else). Decisions that depend on time take
/// `now` as a parameter (`crate::policy`), so they are tested without a clock.
#[allow(clippy::disallowed_methods)]
pub fn now() -> DateTime<Utc> {
    Utc::now()
}

/// The instant `d` from now, saturating instead of panicking on an absurd `d`.
pub fn after(d: std::time::Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_add(d).unwrap_or(now)
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn rfc3339_opt(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(rfc3339)
}

/// Serde helpers for `#[serde(with = "crate::time::wire")]`.
pub mod wire {
    use chrono::{DateTime, Utc};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339(*t))
    }
}

/// Serde helpers for optional timestamps.
pub mod wire_opt {
    use chrono::{DateTime, Utc};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::rfc3339(*t)),
            None => s.serialize_none(),
        }
    }
}
