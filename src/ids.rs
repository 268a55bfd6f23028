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
    OrganizationConfiguration,
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
            IdKind::OrganizationConfiguration => "data_integration_configuration",
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

/// An id newtype: a `String` on the wire and in PostgreSQL, its own type in the code, so
/// an account id cannot be passed where an integration id is wanted.
macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $kind:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize, sqlx::Type)]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(String);

        impl $name {
            /// A new, time-ordered id.
            pub fn generate() -> Self {
                $name($kind.new_id())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                $name(id)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                $name(id.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }
    };
}

id_type!(
    /// A connected account's id, `data_installation_…`.
    AccountId,
    IdKind::ConnectedAccount
);
id_type!(
    /// An integration's id, `data_integration_…`.
    IntegrationId,
    IdKind::Integration
);
