//! Prefixed ULID identifiers, as the wire API spells them (DESIGN §3):
//! `data_integration_…`, `data_installation_…`, `event_…`, `we_…`.

use std::sync::{Mutex, PoisonError};

use ulid::{Generator, Ulid};

/// Ids made in the same millisecond still sort in the order they were made: lists are
/// ordered by id, and two objects created back to back must list in that order.
static GENERATOR: Mutex<Generator> = Mutex::new(Generator::new());

/// A new ULID, greater than every other this process made.
pub fn monotonic_ulid() -> Ulid {
    // Overflow needs 2^80 ids in one millisecond; a random one is as good then.
    GENERATOR.lock().unwrap_or_else(PoisonError::into_inner).generate().unwrap_or_else(|_| Ulid::new())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Integration,
    ConnectedAccount,
    Event,
    WebhookEndpoint,
    WebhookDelivery,
    ApiKey,
}

impl IdKind {
    pub const fn prefix(self) -> &'static str {
        match self {
            IdKind::Integration => "data_integration",
            IdKind::ConnectedAccount => "data_installation",
            IdKind::Event => "event",
            IdKind::WebhookEndpoint => "we",
            IdKind::WebhookDelivery => "wd",
            IdKind::ApiKey => "key",
        }
    }

    /// A new, time-ordered id of this kind.
    pub fn new_id(self) -> String {
        format!("{}_{}", self.prefix(), monotonic_ulid())
    }

    /// True when `id` is this kind's prefix followed by a ULID.
    pub fn matches(self, id: &str) -> bool {
        id.strip_prefix(self.prefix())
            .and_then(|rest| rest.strip_prefix('_'))
            .is_some_and(|ulid| Ulid::from_string(ulid).is_ok())
    }
}
