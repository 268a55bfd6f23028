//! The refusals of `/token` and `/revoke` (RFC 6749 §5.2) and their Slack spellings.

/// A `/token` refusal (RFC 6749 §5.2). The text is a fixed description: never a token.
#[derive(Debug, thiserror::Error)]
pub(super) enum TokenError {
    #[error("invalid_request: {0}")]
    InvalidRequest(&'static str),
    #[error("invalid_client: {0}")]
    InvalidClient(&'static str),
    #[error("invalid_grant: {0}")]
    InvalidCode(&'static str),
    #[error("invalid_grant: {0}")]
    InvalidRefreshToken(&'static str),
    #[error("invalid_scope: {0}")]
    InvalidScope(&'static str),
    #[error("unsupported_grant_type")]
    UnsupportedGrantType,
}

impl TokenError {
    pub(super) fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidClient(_) => "invalid_client",
            Self::InvalidCode(_) | Self::InvalidRefreshToken(_) => "invalid_grant",
            Self::InvalidScope(_) => "invalid_scope",
            Self::UnsupportedGrantType => "unsupported_grant_type",
        }
    }

    pub(super) fn description(&self) -> &'static str {
        match self {
            Self::InvalidRequest(d)
            | Self::InvalidClient(d)
            | Self::InvalidCode(d)
            | Self::InvalidRefreshToken(d)
            | Self::InvalidScope(d) => d,
            Self::UnsupportedGrantType => "grant_type must be authorization_code or refresh_token",
        }
    }

    /// The error string Slack's `oauth.v2.access` uses for the same refusal.
    pub(super) fn slack_code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_arguments",
            Self::InvalidClient(_) => "invalid_client_id",
            Self::InvalidCode(_) => "invalid_code",
            Self::InvalidRefreshToken(_) => "invalid_refresh_token",
            Self::InvalidScope(_) => "invalid_scope",
            Self::UnsupportedGrantType => "invalid_grant_type",
        }
    }
}
