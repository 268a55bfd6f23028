//! Rate limits of `pipes serve` (`PIPES_RATE_LIMITS`): per API key and per
//! client address, for each group of routes, checked in front of everything
//! else (the token fast lane included), so every route is held to them.
//!
//! A request is counted against its address's limit first, then, when it
//! presents an API key this process verified recently, against that key's limit.
//! A key that is not verified yet is limited where it is looked up: an address
//! that presented more unknown keys than its limit allows is refused before any
//! further PostgreSQL look-up until its budget is back ([`Limits::refuse_lookup`]). Over a limit the answer is 429 with
//! `Retry-After` and a JSON error, counted in `pipes_rate_limited_total`.
//!
//! Limiters are keyed by 64-bit fingerprints (an IPv6 client by its /64, since
//! one host holds a whole prefix) and forget idle keys every few seconds, so
//! their memory follows the number of active clients.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

/// Groups of routes with limits of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    /// `POST /data-integrations/{slug}/token` and `/credentials`.
    Token,
    /// `POST /data-integrations/{slug}/authorize`.
    Authorize,
    /// `GET /data-integrations/{slug}/callback` (no API key: by address only).
    Callback,
    /// The widget's page, script and API.
    Widget,
    /// Provider calls through the relay (`/relay/…`).
    Relay,
    /// Every other route.
    Admin,
    /// API keys PostgreSQL did not know (by address only).
    UnknownKeys,
}

impl Group {
    const ALL: [Group; 7] = [
        Group::Token,
        Group::Authorize,
        Group::Callback,
        Group::Widget,
        Group::Relay,
        Group::Admin,
        Group::UnknownKeys,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Group::Token => "token",
            Group::Authorize => "authorize",
            Group::Callback => "callback",
            Group::Widget => "widget",
            Group::Relay => "relay",
            Group::Admin => "admin",
            Group::UnknownKeys => "unknown_keys",
        }
    }

    /// The group of a request path; `None` for operations routes (health, metrics).
    pub fn of(path: &str) -> Option<Group> {
        if path.starts_with("/health/") || path == "/metrics" {
            return None;
        }
        if path == "/widget"
            || path.starts_with("/widget.")
            || path.starts_with("/widget/")
            || path.starts_with("/widgets/")
        {
            return Some(Group::Widget);
        }
        if path == "/relay" || path.starts_with("/relay/") {
            return Some(Group::Relay);
        }
        let tail = path.strip_prefix("/data-integrations/").and_then(|rest| rest.split_once('/')).map(|(_, t)| t);
        Some(match tail {
            Some("token" | "credentials") => Group::Token,
            Some("authorize") => Group::Authorize,
            Some("callback") => Group::Callback,
            _ => Group::Admin,
        })
    }
}

/// Who a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Key,
    Address,
    /// The account owner a relayed call acts for (relay only).
    Owner,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::Address => "address",
            Scope::Owner => "owner",
        }
    }
}

/// One limit: `count` requests per `per`, all of them at once if they come in a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub count: NonZeroU32,
    pub per: Duration,
}

impl Limit {
    fn quota(self) -> Quota {
        let cell = self.per / self.count.get();
        Quota::with_period(cell.max(Duration::from_nanos(1)))
            .unwrap_or(Quota::per_second(self.count))
            .allow_burst(self.count)
    }
}

/// Every limit, as configured. `None` for a (group, scope): unlimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits(BTreeMap<(Group, Scope), Limit>);

fn limit(per_second: u32) -> Option<Limit> {
    Some(Limit { count: NonZeroU32::new(per_second)?, per: Duration::from_secs(1) })
}

impl Default for RateLimits {
    /// Far above what one `serve` answers on the token routes (docs/benchmarks.md; the
    /// read benchmark sends everything from one key and one address), tight where no
    /// backend is the caller.
    fn default() -> Self {
        let mut limits = BTreeMap::new();
        let mut set = |group, scope, per_second| {
            if let Some(l) = limit(per_second) {
                limits.insert((group, scope), l);
            }
        };
        set(Group::Token, Scope::Key, 500_000);
        set(Group::Token, Scope::Address, 500_000);
        set(Group::Authorize, Scope::Key, 1_000);
        set(Group::Authorize, Scope::Address, 1_000);
        set(Group::Callback, Scope::Address, 100);
        set(Group::Widget, Scope::Address, 100);
        set(Group::Relay, Scope::Key, 5_000);
        set(Group::Relay, Scope::Address, 10_000);
        // One owner's account at one provider: a runaway agent slows itself, not the others.
        set(Group::Relay, Scope::Owner, 200);
        set(Group::Admin, Scope::Key, 1_000);
        set(Group::Admin, Scope::Address, 2_000);
        set(Group::UnknownKeys, Scope::Address, 20);
        RateLimits(limits)
    }
}

impl RateLimits {
    /// `off`, or comma-separated `group.scope=N/s` (also `N/m`; `off` for one limit)
    /// over the defaults, e.g. `token.key=5000/s,callback.address=30/m`.
    pub fn parse(text: &str) -> Result<RateLimits, String> {
        let text = text.trim();
        if text == "off" {
            return Ok(RateLimits(BTreeMap::new()));
        }
        let mut limits = RateLimits::default();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, value) = entry.split_once('=').ok_or_else(|| format!("`{entry}`: write group.scope=N/s"))?;
            let (group, scope) = name.trim().split_once('.').ok_or_else(|| format!("`{name}`: write group.scope"))?;
            let group = Group::ALL.into_iter().find(|g| g.as_str() == group).ok_or_else(|| {
                format!("`{group}`: groups are token, authorize, callback, widget, relay, admin, unknown_keys")
            })?;
            let scope = [Scope::Key, Scope::Address, Scope::Owner]
                .into_iter()
                .find(|s| s.as_str() == scope)
                .ok_or_else(|| format!("`{scope}`: scopes are key, address and owner"))?;
            if scope == Scope::Owner && group != Group::Relay {
                return Err(format!("`{name}`: only relay is limited by owner"));
            }
            if scope == Scope::Key && matches!(group, Group::Callback | Group::Widget | Group::UnknownKeys) {
                return Err(format!("`{name}`: {} is limited by address only", group.as_str()));
            }
            let value = value.trim();
            if value == "off" {
                limits.0.remove(&(group, scope));
                continue;
            }
            let (count, per) = value.split_once('/').ok_or_else(|| format!("`{value}`: write N/s or N/m"))?;
            let count: u32 = count.trim().parse().map_err(|_| format!("`{count}` is not a whole number"))?;
            let per = match per.trim() {
                "s" => Duration::from_secs(1),
                "m" => Duration::from_secs(60),
                other => return Err(format!("`{other}`: use /s or /m")),
            };
            let count = NonZeroU32::new(count).ok_or_else(|| format!("`{entry}`: use off rather than 0"))?;
            limits.0.insert((group, scope), Limit { count, per });
        }
        Ok(limits)
    }

    pub fn get(&self, group: Group, scope: Scope) -> Option<Limit> {
        self.0.get(&(group, scope)).copied()
    }
}

type Keyed = RateLimiter<u64, DefaultKeyedStateStore<u64>, DefaultClock>;

/// The limiters of one process. Cheap to clone.
#[derive(Clone)]
pub struct Limits(Arc<Inner>);

struct Inner {
    limiters: BTreeMap<(Group, Scope), Keyed>,
    /// Addresses refused key look-ups, until when (bounded: the most recent win).
    blocked: quick_cache::sync::Cache<u64, std::time::Instant>,
    hasher: std::collections::hash_map::RandomState,
}

impl Limits {
    pub fn new(config: &RateLimits) -> Limits {
        let limiters = config.0.iter().map(|(&at, l)| (at, RateLimiter::keyed(l.quota()))).collect();
        Limits(Arc::new(Inner { limiters, blocked: quick_cache::sync::Cache::new(10_000), hasher: Default::default() }))
    }

    fn fingerprint(&self, value: impl Hash) -> u64 {
        self.0.hasher.hash_one(value)
    }

    /// Counts one request of `group` from `address`.
    pub fn check_address(&self, group: Group, address: IpAddr) -> Result<(), Refused> {
        let address = match address {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6((u128::from(v6) & (u128::MAX << 64)).into()),
            },
            v4 => v4,
        };
        self.check(group, Scope::Address, self.fingerprint(address))
    }

    /// Counts one request of `group` made with a verified API key (by its digest).
    pub fn check_key(&self, group: Group, key_digest: &[u8; 32]) -> Result<(), Refused> {
        self.check(group, Scope::Key, self.fingerprint(key_digest))
    }

    /// Counts one relayed call for `owner`'s account of `slug`.
    pub fn check_owner(&self, slug: &str, owner: &crate::owner::Owner) -> Result<(), Refused> {
        self.check(Group::Relay, Scope::Owner, self.fingerprint((slug, owner)))
    }

    /// Refuses a key look-up from an address over its unknown-key budget.
    pub fn refuse_lookup(&self, address: IpAddr) -> Result<(), Refused> {
        let Some(until) = self.0.blocked.get(&self.fingerprint(address)) else { return Ok(()) };
        let now = std::time::Instant::now();
        if now >= until {
            return Ok(());
        }
        metrics::counter!(crate::metrics::RATE_LIMITED, "group" => Group::UnknownKeys.as_str(), "scope" => "address")
            .increment(1);
        Err(too_many(Group::UnknownKeys, Scope::Address, until - now))
    }

    /// Counts an unknown key presented from `address`; past the limit the address is
    /// refused look-ups until its budget is back.
    pub fn count_unknown_key(&self, address: IpAddr) {
        if let Err(refused) = self.check_address(Group::UnknownKeys, address) {
            let until = std::time::Instant::now() + Duration::from_secs(refused.retry_after_secs());
            self.0.blocked.insert(self.fingerprint(address), until);
        }
    }

    fn check(&self, group: Group, scope: Scope, key: u64) -> Result<(), Refused> {
        let Some(limiter) = self.0.limiters.get(&(group, scope)) else { return Ok(()) };
        match limiter.check_key(&key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                metrics::counter!(crate::metrics::RATE_LIMITED, "group" => group.as_str(), "scope" => scope.as_str())
                    .increment(1);
                Err(too_many(group, scope, wait))
            }
        }
    }

    /// Forgets idle clients every few seconds until `cancel` fires.
    pub async fn run_upkeep(self, cancel: tokio_util::sync::CancellationToken) {
        let mut every = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = every.tick() => {
                    for limiter in self.0.limiters.values() {
                        limiter.retain_recent();
                        limiter.shrink_to_fit();
                    }
                }
            }
        }
    }
}

fn too_many(group: Group, scope: Scope, wait: Duration) -> Refused {
    Refused { group, scope, wait }
}

/// A request over its limit: which limit, and how long until it would pass.
#[derive(Debug, Clone, Copy)]
pub struct Refused {
    pub group: Group,
    pub scope: Scope,
    pub wait: Duration,
}

impl Refused {
    /// Whole seconds to wait, at least one: what `Retry-After` says.
    pub fn retry_after_secs(&self) -> u64 {
        self.wait.as_secs_f64().ceil().max(1.0) as u64
    }

    /// What the caller is told.
    pub fn message(&self) -> String {
        let who = match self.scope {
            Scope::Key => "this API key",
            Scope::Address => "this client address",
            Scope::Owner => "this account's owner",
        };
        let what = match self.group {
            Group::UnknownKeys => "unknown API keys".to_owned(),
            other => format!("requests to the {} routes", other.as_str()),
        };
        format!("Too many {what} from {who}; retry in {} s.", self.retry_after_secs())
    }
}
