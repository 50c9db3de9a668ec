//! HTTP calls to addresses users choose (webhook endpoints, responder providers), guarded
//! against server-side request forgery.
//!
//! Loopback, private, link-local, shared (CGNAT), multicast and unspecified addresses are
//! refused unless `WEBHOOK_ALLOW_PRIVATE` allows them. The check runs on the addresses a
//! name **resolves to** (our resolver drops refused ones, so a name pointing at 10.x is
//! refused at connect time whatever it resolved to at registration), on IP-literal hosts,
//! and on every redirect hop.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::config::PrivateTargets;

/// Redirects followed at most (each hop checked).
const MAX_REDIRECTS: usize = 3;

/// Whether `ip` is on the public internet (not loopback, private, link-local and so on).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, shared (CGNAT)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24, protocol assignments
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15, benchmarking
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64: embeds an IPv4 address
                || (s[0] == 0x2001 && s[1] == 0xdb8)) // documentation
        }
    }
}

/// The address rule, shared by the resolver, the redirect policy and URL checks.
#[derive(Clone, Debug)]
pub struct Guard {
    private: PrivateTargets,
}

impl Guard {
    pub fn new(private: PrivateTargets) -> Self {
        Self { private }
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        is_public(ip)
            || match &self.private {
                PrivateTargets::All => true,
                PrivateTargets::None => false,
                PrivateTargets::Ranges(ranges) => ranges.iter().any(|r| r.contains(&ip)),
            }
    }

    /// Checks a URL's form and, for an IP-literal host, its address; `Err` says why in
    /// words fit for an API answer.
    pub fn check_url(&self, url: &str) -> Result<reqwest::Url, String> {
        let parsed = reqwest::Url::parse(url).map_err(|_| "is not a valid URL".to_owned())?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err("must be an http:// or https:// URL".into());
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err("must not carry credentials".into());
        }
        match parsed.host() {
            None => Err("must name a host".into()),
            Some(url::Host::Ipv4(ip)) if !self.permits(IpAddr::V4(ip)) => Err(refused()),
            Some(url::Host::Ipv6(ip)) if !self.permits(IpAddr::V6(ip)) => Err(refused()),
            Some(_) => Ok(parsed),
        }
    }

    /// Resolves the URL's host now and refuses it when no address is permitted (the
    /// registration check; connections check again through [`Guard::client`]).
    pub async fn check_resolved(&self, url: &reqwest::Url) -> Result<(), String> {
        let Some(url::Host::Domain(host)) = url.host() else {
            return Ok(());
        };
        let port = url.port_or_known_default().unwrap_or(443);
        let addrs: Vec<SocketAddr> = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::lookup_host((host, port)),
        )
        .await
        .map_err(|_| format!("host {host} did not resolve in time"))?
        .map_err(|_| format!("host {host} does not resolve"))?
        .collect();
        if addrs.iter().any(|a| self.permits(a.ip())) {
            Ok(())
        } else {
            Err(format!(
                "host {host} resolves only to loopback, private or link-local addresses, which \
                 are refused (WEBHOOK_ALLOW_PRIVATE)"
            ))
        }
    }

    /// An HTTP client that connects only to permitted addresses, follows at most
    /// [`MAX_REDIRECTS`] checked redirects, and gives up after `timeout`.
    pub fn client(&self, timeout: Option<Duration>) -> anyhow::Result<reqwest::Client> {
        let guard = self.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error("too many redirects");
            }
            match guard.check_url(attempt.url().as_str()) {
                Ok(_) => attempt.follow(),
                Err(why) => attempt.error(format!("redirect refused: the target {why}")),
            }
        });
        let mut builder = reqwest::Client::builder()
            .dns_resolver(Arc::new(Resolver(self.clone())))
            // A proxy would resolve and connect for us, past the guard.
            .no_proxy()
            .redirect(redirects)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("Colloquy/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(64);
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        Ok(builder.build()?)
    }
}

fn refused() -> String {
    "is a loopback, private or link-local address, which is refused (WEBHOOK_ALLOW_PRIVATE)".into()
}

/// The system resolver, keeping only permitted addresses.
struct Resolver(Guard);

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let permitted: Vec<SocketAddr> =
                all.into_iter().filter(|a| guard.permits(a.ip())).collect();
            if permitted.is_empty() {
                return Err(format!(
                    "{host} resolves only to addresses that are refused (WEBHOOK_ALLOW_PRIVATE)"
                )
                .into());
            }
            let addrs: Addrs = Box::new(permitted.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_public_addresses_are_refused_unless_allowed() {
        let none = Guard::new(PrivateTargets::None);
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(!none.permits(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1111", "1.1.1.1"] {
            assert!(none.permits(ip.parse().unwrap()), "{ip}");
        }
        let ranges = Guard::new(PrivateTargets::Ranges(vec![
            "127.0.0.2/32".parse().unwrap(),
        ]));
        assert!(ranges.permits("127.0.0.2".parse().unwrap()));
        assert!(!ranges.permits("127.0.0.1".parse().unwrap()));
        assert!(Guard::new(PrivateTargets::All).permits("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn urls_are_checked_for_form_and_literal_addresses() {
        let g = Guard::new(PrivateTargets::None);
        assert!(g.check_url("https://hooks.example.com/x").is_ok());
        for bad in [
            "ftp://example.com/",
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data",
            "http://2130706433/",
            "http://user:pw@example.com/",
            "not a url",
        ] {
            assert!(g.check_url(bad).is_err(), "{bad}");
        }
    }
}
