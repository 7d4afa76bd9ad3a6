//! Domain names a link may live on: IDNA to punycode, lower case, no port, no IP literal, at
//! most 253 bytes, each label 1-63 letters, digits or hyphens not at either end.

use std::{fmt, net::IpAddr, sync::Arc};

/// The longest name DNS carries.
pub const MAX_NAME: usize = 253;

/// Why a string is not a domain name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name must not be empty")]
    Empty,
    #[error("name must not carry a port or a path, only the host")]
    NotHost,
    #[error("name must be a domain name, not an IP address")]
    Address,
    #[error("name must be at most {MAX_NAME} bytes in its ASCII (punycode) form")]
    TooLong,
    #[error("name is not a valid domain name: {0}")]
    Invalid(String),
}

/// A checked domain name in its ASCII form (`bücher.example` is `xn--bcher-kva.example`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainName(Arc<str>);

impl DomainName {
    /// Parses a name as a user writes it: Unicode or punycode, any case, one trailing dot.
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(NameError::Empty);
        }
        if raw.starts_with('[') || raw.parse::<IpAddr>().is_ok() {
            return Err(NameError::Address);
        }
        if raw.contains([':', '/', '?', '#', '@']) {
            return Err(NameError::NotHost);
        }
        let raw = raw.strip_suffix('.').unwrap_or(raw);
        // UTS 46 mapping (case folding, punycode); the rules of the module doc are checked
        // below on the result.
        let ascii =
            idna::domain_to_ascii(raw).map_err(|_| NameError::Invalid(format!("{raw:?}")))?;
        if ascii.is_empty() {
            return Err(NameError::Empty);
        }
        if ascii.len() > MAX_NAME {
            return Err(NameError::TooLong);
        }
        if ascii.parse::<IpAddr>().is_ok() {
            return Err(NameError::Address);
        }
        for label in ascii.split('.') {
            let valid = (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !valid {
                return Err(NameError::Invalid(format!("label {label:?}")));
            }
        }
        // A last label of digits alone is read as an address by browsers (`1.2.3`).
        if ascii
            .rsplit('.')
            .next()
            .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(NameError::Address);
        }
        Ok(Self(Arc::from(ascii)))
    }

    /// The host a request names (`Host` or the URI's authority): its port dropped, case
    /// folded. `None` when it is no domain name (an address, say).
    pub fn of_host(host: &str) -> Option<Self> {
        let host = host.trim();
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        Self::parse(name).ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DomainName({})", &self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_folded_to_lower_case_punycode() {
        let name = |raw: &str| DomainName::parse(raw).map(|n| n.to_string());
        assert_eq!(name("Go.Example.TEST"), Ok("go.example.test".into()));
        assert_eq!(name("bücher.example"), Ok("xn--bcher-kva.example".into()));
        assert_eq!(
            name("xn--bcher-kva.example"),
            Ok("xn--bcher-kva.example".into())
        );
        assert_eq!(name("acme.link."), Ok("acme.link".into()));
        assert_eq!(name("localhost"), Ok("localhost".into()));
    }

    #[test]
    fn what_is_not_a_name_is_refused_with_its_reason() {
        assert_eq!(DomainName::parse(""), Err(NameError::Empty));
        assert_eq!(
            DomainName::parse("go.example:8443"),
            Err(NameError::NotHost)
        );
        assert_eq!(
            DomainName::parse("https://go.example"),
            Err(NameError::NotHost)
        );
        for address in ["127.0.0.1", "::1", "[::1]", "1.2.3"] {
            assert_eq!(
                DomainName::parse(address),
                Err(NameError::Address),
                "{address}"
            );
        }
        let long = format!("{}.example", vec!["a".repeat(60); 5].join("."));
        assert_eq!(DomainName::parse(&long), Err(NameError::TooLong));
        for bad in [
            "-go.example",
            "go-.example",
            "go..example",
            "go_x.example",
            "a b.example",
        ] {
            assert!(
                matches!(DomainName::parse(bad), Err(NameError::Invalid(_))),
                "{bad}: {:?}",
                DomainName::parse(bad)
            );
        }
    }

    #[test]
    fn a_host_header_names_its_domain_without_the_port() {
        let of = |raw: &str| DomainName::of_host(raw).map(|n| n.to_string());
        assert_eq!(of("GO.example.test:8080"), Some("go.example.test".into()));
        assert_eq!(of("go.example.test"), Some("go.example.test".into()));
        assert_eq!(of("127.0.0.1:8080"), None);
        assert_eq!(of("[::1]:8080"), None);
    }
}
