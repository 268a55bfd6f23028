//! Where a webhook may go: http(s) URLs whose host is not on this machine or
//! its private network, unless `PIPES_WEBHOOK_ALLOW_PRIVATE` (development and
//! tests). Checked when an endpoint is saved and again at every delivery
//! against the addresses the name resolves to then; the delivery client's
//! resolver applies the same rule, so a name that changes its answer between
//! the check and the connection (DNS rebinding) still cannot reach inside.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use url::{Host, Url};

/// How long a save-time look-up may take before the name is accepted unchecked
/// (it is checked again at delivery).
const SAVE_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("must be an absolute URL")]
    NotAUrl,
    #[error("must use http or https")]
    Scheme,
    #[error("must have a host")]
    NoHost,
    #[error("must not contain a user name or password")]
    Credentials,
    #[error("points at a loopback, private or link-local address, which is not allowed")]
    Private,
    #[error("the host name does not resolve")]
    Unresolvable,
}

impl TargetError {
    /// The stable code used in 422 field errors and recorded attempts.
    pub fn code(&self) -> &'static str {
        match self {
            TargetError::NotAUrl | TargetError::NoHost => "invalid_url",
            TargetError::Scheme => "invalid_scheme",
            TargetError::Credentials => "credentials_not_allowed",
            TargetError::Private => "private_address",
            TargetError::Unresolvable => "unresolvable_host",
        }
    }
}

/// True for addresses a webhook must not reach: loopback, private, link-local,
/// shared (CGNAT), unique-local, unspecified, broadcast and multicast.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_internal_v4(v4),
            None => is_internal_v6(v6),
        },
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
}

/// Parses and checks the form of an endpoint URL (no network).
pub fn parse(text: &str, allow_private: bool) -> Result<Url, TargetError> {
    let url = Url::parse(text.trim()).map_err(|_| TargetError::NotAUrl)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(TargetError::Scheme);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(TargetError::Credentials);
    }
    let host = url.host().ok_or(TargetError::NoHost)?;
    if !allow_private {
        let internal = match host {
            Host::Ipv4(ip) => is_internal(IpAddr::V4(ip)),
            Host::Ipv6(ip) => is_internal(IpAddr::V6(ip)),
            Host::Domain(name) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                name == "localhost" || name.ends_with(".localhost")
            }
        };
        if internal {
            return Err(TargetError::Private);
        }
    }
    Ok(url)
}

/// Save-time check: the form, then (unless private targets are allowed) the
/// addresses the name resolves to now. A name that does not resolve yet is
/// accepted: it is checked again at every delivery.
pub async fn check_for_save(text: &str, allow_private: bool) -> Result<Url, TargetError> {
    let url = parse(text, allow_private)?;
    if !allow_private {
        if let Some(Host::Domain(_)) = url.host() {
            let answer = tokio::time::timeout(SAVE_LOOKUP_TIMEOUT, resolve(&url, false)).await;
            if let Ok(Err(TargetError::Private)) = answer {
                return Err(TargetError::Private);
            }
        }
    }
    Ok(url)
}

/// Delivery-time check: every address the URL's host resolves to now.
pub async fn resolve(url: &Url, allow_private: bool) -> Result<Vec<SocketAddr>, TargetError> {
    let url = parse(url.as_str(), allow_private)?;
    let port = url.port_or_known_default().ok_or(TargetError::NoHost)?;
    let addrs: Vec<SocketAddr> = match url.host().ok_or(TargetError::NoHost)? {
        Host::Ipv4(ip) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
        Host::Ipv6(ip) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
        Host::Domain(name) => {
            tokio::net::lookup_host((name, port)).await.map_err(|_| TargetError::Unresolvable)?.collect()
        }
    };
    if addrs.is_empty() {
        return Err(TargetError::Unresolvable);
    }
    if !allow_private && addrs.iter().any(|a| is_internal(a.ip())) {
        return Err(TargetError::Private);
    }
    Ok(addrs)
}

/// The delivery client's resolver: refuses names that resolve to internal
/// addresses unless they are allowed.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !allow_private && addrs.iter().any(|a| is_internal(a.ip())) {
                return Err(Box::new(TargetError::Private) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP client for deliveries: no redirects (a 3xx is a failed attempt),
/// `timeout` per attempt, the guarded resolver.
pub fn delivery_client(timeout: Duration, allow_private: bool) -> reqwest::Result<reqwest::Client> {
    crate::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(5))
        .dns_resolver(Arc::new(GuardedResolver { allow_private }))
        .user_agent(concat!("pipes-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}
