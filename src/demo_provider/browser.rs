//! Browser-side state: the session cookie with its CSRF token, and authorization requests
//! waiting on the login and consent pages. A form is accepted only from the browser session
//! that loaded it and with that session's token.

use std::time::{Duration, Instant};

use super::state::{ct_eq, random_token, State};

const SESSION_TTL: Duration = Duration::from_secs(3600);

/// An authorization request waiting for the user on the login and consent pages.
pub(super) struct Pending {
    pub client_id: String,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub scopes: Vec<String>,
    pub challenge: Option<String>,
    /// The browser session that started it; the forms only work from that browser.
    pub session: String,
    pub user: Option<String>,
    pub expires_at: Instant,
}

pub(super) struct Session {
    csrf: String,
    expires_at: Instant,
}

impl State {
    /// Returns `(session id, csrf token, newly created)` for the browser's session cookie.
    pub(super) fn ensure_session(&mut self, existing: Option<&str>) -> (String, String, bool) {
        let now = self.now();
        if let Some(id) = existing {
            if let Some(s) = self.sessions.get(id).filter(|s| s.expires_at > now) {
                return (id.to_owned(), s.csrf.clone(), false);
            }
        }
        self.sessions.retain(|_, s| s.expires_at > now);
        let id = random_token("");
        let csrf = random_token("");
        self.sessions.insert(id.clone(), Session { csrf: csrf.clone(), expires_at: now + SESSION_TTL });
        (id, csrf, true)
    }

    /// The anti-CSRF check of every form: the session cookie is known and the form's token is
    /// that session's.
    pub(super) fn csrf_ok(&self, session: Option<&str>, csrf: Option<&str>) -> bool {
        match (session.and_then(|id| self.sessions.get(id)), csrf) {
            (Some(s), Some(csrf)) => s.expires_at > self.now() && ct_eq(&s.csrf, csrf),
            _ => false,
        }
    }

    pub(super) fn add_pending(&mut self, pending: Pending) -> String {
        let now = self.now();
        self.pending.retain(|_, p| p.expires_at > now);
        let id = random_token("");
        self.pending.insert(id.clone(), pending);
        id
    }

    /// The pending request `id`, if it is live and belongs to this browser session.
    pub(super) fn pending_mut(&mut self, id: &str, session: Option<&str>) -> Option<&mut Pending> {
        let now = self.now();
        self.pending.get_mut(id).filter(|p| p.expires_at > now && session.is_some_and(|s| ct_eq(s, &p.session)))
    }

    pub(super) fn take_pending(&mut self, id: &str) -> Option<Pending> {
        self.pending.remove(id)
    }
}
