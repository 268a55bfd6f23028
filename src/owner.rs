//! Who owns a connected account: a user (optionally within an organization), or an
//! organization (a shared account, usable by its members and connected by one of
//! them). An integration root has one [`Ownership`], and so do its accounts: a
//! user-owned and an organization-owned account never answer for each other.

use serde::Serialize;

use crate::invalid::FieldError;

/// The kind of owner an integration root, and each of its accounts, has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ownership {
    User,
    Organization,
}

impl Ownership {
    pub fn as_str(self) -> &'static str {
        match self {
            Ownership::User => "user",
            Ownership::Organization => "organization",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Ownership::User),
            "organization" => Some(Ownership::Organization),
            _ => None,
        }
    }
}

/// The owner of a connected account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    User { user_id: String, organization_id: Option<String> },
    Organization { organization_id: String },
}

/// The owner a request names with `connection_owner` (`user`, the default, or
/// `organization`) and its `user_id` and `organization_id`. For an organization the user
/// is the member acting for it, and `organization_id` is required. Problems go into
/// `errors` (with the user standing in as the owner).
pub fn requested(
    connection_owner: Option<&str>,
    user_id: String,
    organization_id: Option<String>,
    errors: &mut Vec<FieldError>,
) -> Owner {
    let ownership = match connection_owner {
        None => Ownership::User,
        Some(sent) => Ownership::parse(sent).unwrap_or_else(|| {
            errors.push(FieldError::new(
                "connection_owner",
                "invalid",
                "`connection_owner` must be `user` or `organization`.",
            ));
            Ownership::User
        }),
    };
    match (ownership, organization_id) {
        (Ownership::User, organization_id) => Owner::user(user_id, organization_id),
        (Ownership::Organization, Some(organization_id)) => Owner::organization(organization_id),
        (Ownership::Organization, None) => {
            errors.push(FieldError::new(
                "organization_id",
                "required",
                "`organization_id` is required when `connection_owner` is `organization`.",
            ));
            Owner::user(user_id, None)
        }
    }
}

impl Owner {
    pub fn user(user_id: impl Into<String>, organization_id: Option<String>) -> Self {
        Owner::User { user_id: user_id.into(), organization_id }
    }

    pub fn organization(organization_id: impl Into<String>) -> Self {
        Owner::Organization { organization_id: organization_id.into() }
    }

    /// The owner as stored: `user_id` (none for an organization) and `organization_id`.
    pub fn from_columns(user_id: Option<String>, organization_id: Option<String>) -> Option<Self> {
        match (user_id, organization_id) {
            (Some(user_id), organization_id) => Some(Owner::User { user_id, organization_id }),
            (None, Some(organization_id)) => Some(Owner::Organization { organization_id }),
            (None, None) => None,
        }
    }

    pub fn ownership(&self) -> Ownership {
        match self {
            Owner::User { .. } => Ownership::User,
            Owner::Organization { .. } => Ownership::Organization,
        }
    }

    /// The owning user; `None` for an organization-owned account.
    pub fn user_id(&self) -> Option<&str> {
        match self {
            Owner::User { user_id, .. } => Some(user_id),
            Owner::Organization { .. } => None,
        }
    }

    pub fn organization_id(&self) -> Option<&str> {
        match self {
            Owner::User { organization_id, .. } => organization_id.as_deref(),
            Owner::Organization { organization_id } => Some(organization_id),
        }
    }
}
