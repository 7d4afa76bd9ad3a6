//! Where a webhook may send: `http(s)` URLs whose host is not, and does not resolve to, a
//! loopback, private, link-local, shared or metadata address (IPv4 and IPv6), unless
//! `--webhook-allow-private`. Checked when the URL is set and again at every connection: the
//! client's resolver ([`Guard`]) refuses such addresses, so a name that later resolves
//! somewhere inside is refused too.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
};

use url::Url;

/// The longest URL taken.
pub const MAX_URL: usize = 2048;

/// Why an address is refused, if it is.
pub fn refused(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return refused_v4(v4);
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_unspecified() {
                Some("the unspecified address")
            } else if first & 0xfe00 == 0xfc00 {
                // fc00::/7, where the cloud metadata services' IPv6 addresses are too.
                Some("a private (unique local) address")
            } else if first & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else if first & 0xff00 == 0xff00 {
                Some("a multicast address")
            } else if first & 0xffc0 == 0xfec0 {
                Some("a site-local address")
            } else if v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
                || v6.segments()[..6] == [0, 0, 0, 0, 0, 0]
            {
                // NAT64, and the old IPv4-compatible form: the IPv4 address they embed decides.
                let [.., a, b] = v6.segments();
                refused_v4(Ipv4Addr::from((u32::from(a) << 16) | u32::from(b)))
            } else if first == 0x2002 {
                // 6to4: the IPv4 address in the next 32 bits decides.
                let [_, a, b, ..] = v6.segments();
                refused_v4(Ipv4Addr::from((u32::from(a) << 16) | u32::from(b)))
            } else if v6.segments()[..3] == [0x64, 0xff9b, 1] {
                Some("a local NAT64 address")
            } else {
                None
            }
        }
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_private() {
        Some("a private address")
    } else if ip.is_link_local() {
        // 169.254.0.0/16, with the cloud metadata address 169.254.169.254.
        Some("a link-local (or metadata) address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a shared (carrier-grade NAT) address")
    } else if (a == 198 && (b & 0xfe) == 18) || (a == 192 && b == 0 && ip.octets()[2] == 0) {
        Some("a reserved (benchmarking or protocol) address")
    } else if ip.is_unspecified() || a == 0 {
        Some("the unspecified address")
    } else if ip.is_broadcast() || ip.is_multicast() || a >= 240 {
        Some("a broadcast, multicast or reserved address")
    } else {
        None
    }
}

/// A webhook URL as set: `http(s)`, a host, at most [`MAX_URL`] characters; with an address
/// for its host, one that is not refused.
pub fn parse(raw: &str, allow_private: bool) -> Result<Url, String> {
    if raw.len() > MAX_URL {
        return Err(format!("url must be at most {MAX_URL} characters"));
    }
    let url = Url::parse(raw).map_err(|e| format!("url is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("url must be http or https, not {:?}", url.scheme()));
    }
    let Some(host) = url.host() else {
        return Err("url has no host".into());
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err("url must not carry a user name or password".into());
    }
    let ip = match host {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(_) => None,
    };
    if let (Some(ip), false) = (ip, allow_private)
        && let Some(why) = refused(ip)
    {
        return Err(format!("url points at {why} ({ip})"));
    }
    Ok(url)
}

/// Checks where `url`'s host resolves now: an error naming the refused address, if any.
pub async fn check_resolved(url: &Url, allow_private: bool) -> Result<(), String> {
    if allow_private {
        return Ok(());
    }
    let Some(url::Host::Domain(name)) = url.host() else {
        return parse(url.as_str(), false).map(|_| ());
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let found = tokio::net::lookup_host((name, port))
        .await
        .map_err(|e| format!("url's host {name} does not resolve: {e}"))?;
    for addr in found {
        if let Some(why) = refused(addr.ip()) {
            return Err(format!(
                "url's host {name} resolves to {why} ({})",
                addr.ip()
            ));
        }
    }
    Ok(())
}

/// The delivering client's resolver: a name that resolves to a refused address is not
/// connected to.
pub struct Guard {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for Guard {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !allow_private && let Some(why) = found.iter().find_map(|a| refused(a.ip())) {
                // The address itself is not named: a receiver's URL must not map the network.
                return Err(format!("{host} resolves to {why}").into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

/// The client webhooks are delivered with: no redirects followed, `timeout` per request,
/// every connection's addresses checked by [`Guard`].
pub fn client(
    allow_private: bool,
    timeout: std::time::Duration,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        // No proxy from the environment: a proxy would resolve names itself, past the check.
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(std::time::Duration::from_secs(5)))
        .dns_resolver(Arc::new(Guard { allow_private }))
        .user_agent(concat!("linkpulse-webhooks/", env!("CARGO_PKG_VERSION")))
        .pool_max_idle_per_host(4)
        .build()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn inside_addresses_are_refused_and_public_ones_taken() {
        for inside in [
            "http://127.0.0.1/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://[::1]/",
            "http://[fd00:ec2::254]/",
            "http://[fe80::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[64:ff9b::a00:1]/",
            "http://[2002:7f00:1::]/",
            "http://[::127.0.0.1]/",
            "http://[fec0::1]/",
            "http://198.18.0.1/",
        ] {
            let refused = parse(inside, false).unwrap_err();
            assert!(refused.contains("url points at"), "{inside}: {refused}");
            assert!(
                parse(inside, true).is_ok(),
                "{inside} allowed when private is"
            );
        }
        for outside in [
            "https://example.com/hook",
            "http://93.184.215.14/",
            "http://[2606:4700::1111]/",
        ] {
            assert!(parse(outside, false).is_ok(), "{outside}");
        }
        for (bad, says) in [
            ("ftp://example.com/", "http or https"),
            ("not a url", "not a URL"),
            ("https://user:pw@example.com/", "user name"),
        ] {
            let refused = parse(bad, false).unwrap_err();
            assert!(refused.contains(says), "{bad}: {refused}");
        }
    }

    #[tokio::test]
    async fn a_name_that_resolves_inside_is_refused() {
        let url = Url::parse("http://localhost:9/").unwrap();
        // A name, so taken when set; the system's resolver says where it is.
        assert!(parse(url.as_str(), false).is_ok());
        let refused = check_resolved(&url, false).await.unwrap_err();
        assert!(refused.contains("loopback"), "{refused}");
        assert!(check_resolved(&url, true).await.is_ok());
    }

    /// The check at connection time: the delivering client's resolver refuses the name.
    #[tokio::test]
    async fn the_client_does_not_connect_to_a_name_that_resolves_inside() {
        let refused = client(false, std::time::Duration::from_secs(5))
            .unwrap()
            .post("http://localhost:9/hook")
            .send()
            .await
            .unwrap_err();
        let chain = crate::webhooks::error_chain(&refused);
        assert!(
            chain.contains("localhost resolves to a loopback address"),
            "{chain}"
        );
        // Allowed, it gets as far as connecting (nothing listens on port 9).
        let tried = client(true, std::time::Duration::from_secs(5))
            .unwrap()
            .post("http://localhost:9/hook")
            .send()
            .await
            .unwrap_err();
        assert!(
            !crate::webhooks::error_chain(&tried).contains("resolves to"),
            "{tried}"
        );
    }
}
