//! Every request Pipes sends to a third party (a provider's token, refresh and
//! revocation endpoints, a webhook receiver) goes where this module allows:
//! never to this machine or its private network, unless
//! `PIPES_ALLOW_PRIVATE_NETWORK` (development and tests; `pipes dev` sets it).
//! A URL is checked when it is saved (a 422 naming the field) and again before
//! every request; the clients' resolver applies the same rule to every address
//! a name resolves to at connection time, so a name that changes its answer
//! between the check and the connection (DNS rebinding) still cannot reach
//! inside. No client follows redirects or takes a proxy from the environment.

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
    #[error("must use https (plain http only with PIPES_ALLOW_PRIVATE_NETWORK, for development)")]
    Insecure,
    #[error("must have a host")]
    NoHost,
    #[error("must not contain a user name or password")]
    Credentials,
    #[error("points at a loopback, private, link-local or reserved address, which is not allowed")]
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
            TargetError::Insecure => "insecure_url",
            TargetError::Credentials => "credentials_not_allowed",
            TargetError::Private => "private_address",
            TargetError::Unresolvable => "unresolvable_host",
        }
    }
}

/// True for addresses no outbound request may reach: loopback, private,
/// link-local, shared (CGNAT), benchmarking (198.18/15), reserved (240/4),
/// unspecified, broadcast and multicast, and IPv6 forms that embed or route to
/// one of them (IPv4-mapped and -compatible, NAT64 `64:ff9b::/96`, 6to4
/// `2002::/16`), unique-local and link-local IPv6.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => embedded_v4(v6).map_or_else(|| is_internal_v6(v6), is_internal_v4),
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
        || (a == 100 && (64..128).contains(&b)) // shared address space 100.64/10
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18/15
        || a >= 240 // reserved 240/4
}

/// The IPv4 address an IPv6 address stands for, where it stands for one.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    match s {
        // IPv4-compatible ::a.b.c.d (deprecated, but still routed by some stacks);
        // `::` and `::1` are left to the IPv6 rules.
        [0, 0, 0, 0, 0, 0, _, _] if !ip.is_unspecified() && !ip.is_loopback() => Some(low),
        // NAT64 well-known prefix 64:ff9b::/96.
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        // 6to4 2002:a.b.c.d::/48.
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)),
        _ => None,
    }
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (first & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
}

/// Which schemes a URL may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schemes {
    /// http or https (webhook receivers).
    HttpOrHttps,
    /// https only, unless private networks are allowed (provider endpoints carry
    /// client secrets and tokens).
    Https,
}

/// Parses and checks the form of a webhook URL (no network).
pub fn parse(text: &str, allow_private: bool) -> Result<Url, TargetError> {
    parse_with(text, Schemes::HttpOrHttps, allow_private)
}

/// Parses and checks the form of an outbound URL (no network): scheme, no
/// credentials, and a host that is not internal by its name or literal address.
pub fn parse_with(text: &str, schemes: Schemes, allow_private: bool) -> Result<Url, TargetError> {
    let url = Url::parse(text.trim()).map_err(|_| TargetError::NotAUrl)?;
    check_url(&url, schemes, allow_private)?;
    Ok(url)
}

/// [`parse_with`] for a URL already parsed.
pub fn check_url(url: &Url, schemes: Schemes, allow_private: bool) -> Result<(), TargetError> {
    match url.scheme() {
        "https" => {}
        "http" if schemes == Schemes::HttpOrHttps || allow_private => {}
        "http" => return Err(TargetError::Insecure),
        _ => return Err(TargetError::Scheme),
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
    Ok(())
}

/// Save-time check of a webhook URL: [`check_url_for_save`] with http allowed.
pub async fn check_for_save(text: &str, allow_private: bool) -> Result<Url, TargetError> {
    check_url_for_save(text, Schemes::HttpOrHttps, allow_private).await
}

/// Save-time check: the form, then (unless private targets are allowed) the
/// addresses the name resolves to now. A name that does not resolve yet is
/// accepted: it is checked again at every request.
pub async fn check_url_for_save(text: &str, schemes: Schemes, allow_private: bool) -> Result<Url, TargetError> {
    let url = parse_with(text, schemes, allow_private)?;
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

/// The outbound clients' resolver: refuses names that resolve to internal
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

/// An HTTP client for third parties: no redirects (a 3xx is an answer, never
/// followed), no proxy from the environment, `timeout` per request (body
/// included), the guarded resolver.
pub fn client(timeout: Duration, allow_private: bool, user_agent: &'static str) -> reqwest::Result<reqwest::Client> {
    crate::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(5))
        .dns_resolver(Arc::new(GuardedResolver { allow_private }))
        .user_agent(user_agent)
        .build()
}

/// The client for requests to providers, with the rule it enforces. Names are
/// checked by the resolver when a connection is made; [`Self::check`] checks a
/// URL's scheme and literal address (which no resolver sees) before each request.
#[derive(Clone)]
pub struct ProviderClient {
    http: reqwest::Client,
    allow_private: bool,
}

impl ProviderClient {
    pub fn new(timeout: Duration, allow_private: bool) -> reqwest::Result<Self> {
        let http = client(timeout, allow_private, concat!("pipes/", env!("CARGO_PKG_VERSION")))?;
        Ok(ProviderClient { http, allow_private })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn allow_private(&self) -> bool {
        self.allow_private
    }

    /// Refuses a provider URL Pipes must not send a request to.
    pub fn check(&self, url: &Url) -> Result<(), TargetError> {
        check_url(url, Schemes::Https, self.allow_private)
    }
}
