//! Redirect targets: absolute `http`/`https` URLs, bounded in length, with nothing that could
//! break out of a `Location` header.

use std::{fmt, sync::Arc};

/// The longest target URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 8 * 1024;

/// Why a string is not a redirect target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("url must not be empty")]
    Empty,
    #[error("url must be at most {MAX_URL_LEN} bytes")]
    TooLong,
    #[error("url must not contain control characters or spaces")]
    ControlCharacter,
    #[error("url is not an absolute URL: {0}")]
    Invalid(String),
    #[error("url scheme must be http or https, not '{0}'")]
    Scheme(String),
    #[error("url must name a host")]
    NoHost,
    #[error("url must not carry a user name or password")]
    Credentials,
}

/// A valid redirect target, kept in the normalised form the `url` crate prints (ASCII only:
/// the host in punycode, everything else percent-encoded), so it is always a valid header value.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TargetUrl(Arc<str>);

impl TargetUrl {
    pub fn parse(raw: &str) -> Result<Self, UrlError> {
        if raw.is_empty() {
            return Err(UrlError::Empty);
        }
        if raw.len() > MAX_URL_LEN {
            return Err(UrlError::TooLong);
        }
        // The url crate silently drops tabs and newlines; we refuse them instead, so what is
        // stored is what the user sent.
        if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(UrlError::ControlCharacter);
        }
        let url = url::Url::parse(raw).map_err(|e| UrlError::Invalid(e.to_string()))?;
        match url.scheme() {
            "http" | "https" => {}
            other => return Err(UrlError::Scheme(other.to_owned())),
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(UrlError::NoHost);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::Credentials);
        }
        let normalised = url.as_str();
        if normalised.len() > MAX_URL_LEN {
            return Err(UrlError::TooLong);
        }
        Ok(Self(Arc::from(normalised)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TargetUrl({})", &self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_http_and_https() {
        let url = TargetUrl::parse("https://example.com/a?b=c#d").map(|u| u.to_string());
        assert_eq!(url, Ok("https://example.com/a?b=c#d".to_owned()));
        let url = TargetUrl::parse("http://例え.jp/パス").map(|u| u.to_string());
        assert_eq!(
            url,
            Ok("http://xn--r8jz45g.jp/%E3%83%91%E3%82%B9".to_owned()),
            "non-ASCII is encoded so the Location header stays valid"
        );
    }

    #[test]
    fn rejects_other_schemes_and_relative_urls() {
        for (raw, want) in [
            ("javascript:alert(1)", UrlError::Scheme("javascript".into())),
            ("data:text/html,hi", UrlError::Scheme("data".into())),
            ("file:///etc/passwd", UrlError::Scheme("file".into())),
            ("ftp://example.com", UrlError::Scheme("ftp".into())),
        ] {
            assert_eq!(TargetUrl::parse(raw), Err(want));
        }
        assert!(matches!(
            TargetUrl::parse("/relative"),
            Err(UrlError::Invalid(_))
        ));
        assert!(matches!(
            TargetUrl::parse("example.com"),
            Err(UrlError::Invalid(_))
        ));
        assert_eq!(TargetUrl::parse(""), Err(UrlError::Empty));
        assert_eq!(
            TargetUrl::parse("https://user:pw@example.com/"),
            Err(UrlError::Credentials)
        );
    }

    #[test]
    fn rejects_header_injection_and_oversize() {
        for raw in [
            "https://example.com/\r\nSet-Cookie: a=b",
            "https://example.com/\n",
            "https://exa\tmple.com/",
            "https://example.com/ a",
            "https://example.com/\u{0}",
        ] {
            assert_eq!(
                TargetUrl::parse(raw),
                Err(UrlError::ControlCharacter),
                "{raw:?}"
            );
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(TargetUrl::parse(&long), Err(UrlError::TooLong));
        let fits = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN - 40));
        assert!(TargetUrl::parse(&fits).is_ok());
    }

    /// Any string, and strings shaped like URLs with awkward pieces: other schemes, unicode
    /// hosts and paths, escapes, credentials, control and line-separator characters, and
    /// lengths around the limit.
    fn candidates() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let scheme = proptest::sample::select(vec![
            "http://",
            "https://",
            "https://",
            "https://",
            "HTTPS://",
            "javascript:",
            "data:",
            "file://",
            "ftp://",
            "//",
            "",
        ]);
        let host = proptest::sample::select(vec![
            "example.com",
            "example.com",
            "example.com",
            "例え.jp",
            "127.0.0.1",
            "[::1]",
            "user:pw@example.com",
            "exa%0d%0ample.com",
            "",
            "xn--r8jz45g.jp:8080",
        ]);
        let clean = "[a-zA-Z0-9/?#&=%.:@\u{e9}\u{30d1}-]{0,30}";
        let trouble = proptest::sample::select(vec![
            "\r", "\n", "\r\n", "\t", " ", "\u{0}", "\u{7f}", "\u{85}", "\u{2028}", "\u{2029}",
            "\u{200b}", "%0d%0a", "%00", "\\", "..",
        ]);
        let trouble = prop_oneof![Just(""), trouble];
        let pad = prop_oneof![4 => Just(0usize), 1 => MAX_URL_LEN - 40..MAX_URL_LEN + 8];
        prop_oneof![
            1 => any::<String>(),
            4 => (scheme, host, clean, trouble, clean, pad).prop_map(|(s, h, a, t, b, pad)| {
                format!("{s}{h}/{a}{t}{b}{}", "p".repeat(pad))
            }),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]

        #[test]
        fn accepted_urls_are_safe_header_values_and_stable(raw in candidates()) {
            if let Ok(url) = TargetUrl::parse(&raw) {
                let s = url.as_str();
                proptest::prop_assert!(s.is_ascii(), "{:?}", s);
                proptest::prop_assert!(
                    !s.bytes().any(|b| b.is_ascii_control() || b == b' '),
                    "{:?}", s
                );
                proptest::prop_assert!(
                    s.starts_with("http://") || s.starts_with("https://"),
                    "{:?}", s
                );
                proptest::prop_assert!(s.len() <= MAX_URL_LEN);
                proptest::prop_assert!(salvo::http::HeaderValue::from_str(s).is_ok());
                proptest::prop_assert_eq!(TargetUrl::parse(s), Ok(url.clone()));
            }
        }
    }
}
