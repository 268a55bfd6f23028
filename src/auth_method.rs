//! How an integration's accounts authenticate with the provider, fixed when the
//! integration is created: every account of it has the same method.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// The authorization-code flow: a user consents at the provider.
    #[serde(rename = "oauth")]
    OAuth,
    /// A key the account's owner gives; vended as given.
    ApiKey,
    /// The owner's own OAuth client, exchanged for access tokens with the
    /// `client_credentials` grant and renewed before they expire.
    ClientCredentials,
}

impl AuthMethod {
    pub const ALL: [AuthMethod; 3] = [AuthMethod::OAuth, AuthMethod::ApiKey, AuthMethod::ClientCredentials];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::OAuth => "oauth",
            AuthMethod::ApiKey => "api_key",
            AuthMethod::ClientCredentials => "client_credentials",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Whether the integration has an OAuth app of its own (client id and secret, a
    /// redirect URI): only the authorization-code flow does.
    pub fn uses_integration_client(self) -> bool {
        self == AuthMethod::OAuth
    }
}

impl std::fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
