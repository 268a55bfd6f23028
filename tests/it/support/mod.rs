//! Shared test helpers: a running app per test, fixtures, a TCP proxy for fault tests.

pub mod app;
pub mod cluster;
pub mod fixtures;
pub mod proxy;

/// The owner of a user's account (within `org`, if given).
pub fn owner(user: &str, org: Option<&str>) -> pipes::owner::Owner {
    pipes::owner::Owner::user(user, org.map(str::to_owned))
}
