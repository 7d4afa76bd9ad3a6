//! Short codes: `[A-Za-z0-9_-]{1,64}`, never one of the service's own path words.
//!
//! A [`ShortCode`] is also a link's key everywhere inside (the store, the actors, the cluster):
//! a link on the default domain is keyed by its code alone, one on another domain by
//! `domain/code` (codes hold no `/`, names no `/`), so the same code on two domains is two
//! links, and every link made before domains keeps its key.

use std::{borrow::Borrow, fmt, sync::Arc};

use rand::Rng;

/// The longest code a user may choose.
pub const MAX_CODE_LEN: usize = 64;
/// The length of a generated code: 62^7 is about 3.5e12 codes.
pub const GENERATED_CODE_LEN: usize = 7;

/// Path words the service uses itself; a code equal to one of them (in any case) would shadow a
/// route or confuse a reader, so none can be taken.
const RESERVED: &[&str] = &[
    "admin",
    "api",
    "assets",
    "docs",
    "favicon",
    "health",
    "healthz",
    "links",
    "login",
    "logout",
    "metrics",
    "qr",
    "readyz",
    "realtime",
    "robots",
    "static",
    "stats",
    "well-known",
];

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a string is not a short code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("code must not be empty")]
    Empty,
    #[error("code must be at most {MAX_CODE_LEN} characters")]
    TooLong,
    #[error("code may only contain letters, digits, '_' and '-'")]
    BadCharacter,
    #[error("code '{0}' is reserved")]
    Reserved(String),
}

/// A valid short code. Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShortCode(Arc<str>);

impl ShortCode {
    /// Parses a code chosen by a user or taken from a request path.
    pub fn parse(raw: &str) -> Result<Self, CodeError> {
        if raw.is_empty() {
            return Err(CodeError::Empty);
        }
        if raw.len() > MAX_CODE_LEN {
            return Err(CodeError::TooLong);
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(CodeError::BadCharacter);
        }
        if RESERVED.iter().any(|word| word.eq_ignore_ascii_case(raw)) {
            return Err(CodeError::Reserved(raw.to_owned()));
        }
        Ok(Self(Arc::from(raw)))
    }

    /// A random base62 code of [`GENERATED_CODE_LEN`] characters.
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        loop {
            let raw: String = (0..GENERATED_CODE_LEN)
                .map(|_| char::from(BASE62[rng.random_range(0..BASE62.len())]))
                .collect();
            // Two reserved words have seven letters; the chance of drawing one is negligible,
            // but a loop costs nothing.
            if let Ok(code) = Self::parse(&raw) {
                return code;
            }
        }
    }

    /// The key of `code` on `domain` (`None`: the default domain).
    pub fn on(domain: Option<&super::DomainName>, code: &ShortCode) -> Self {
        match domain {
            None => code.bare(),
            Some(domain) => Self::on_checked(domain.as_str(), code),
        }
    }

    /// The key of `code` on `domain`, a name already checked (a stored domain's): no parse on
    /// the request path.
    pub fn on_checked(domain: &str, code: &ShortCode) -> Self {
        Self(Arc::from(format!("{domain}/{}", code.code())))
    }

    /// A key as stored: a code, or `domain/code`.
    pub fn from_key(raw: &str) -> Result<Self, CodeError> {
        match raw.split_once('/') {
            None => Self::parse(raw),
            Some((domain, code)) => {
                let code = Self::parse(code)?;
                match super::DomainName::parse(domain) {
                    Ok(name) if name.as_str() == domain => Ok(Self::on(Some(&name), &code)),
                    _ => Err(CodeError::BadCharacter),
                }
            }
        }
    }

    /// The key: the code, or `domain/code` on a domain other than the default.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The code alone, as it appears in a short URL's path.
    pub fn code(&self) -> &str {
        self.0.rsplit_once('/').map_or(&self.0, |(_, code)| code)
    }

    /// The domain, when not the default one.
    pub fn domain(&self) -> Option<&str> {
        self.0.rsplit_once('/').map(|(domain, _)| domain)
    }

    /// The code alone, as a key on the default domain.
    fn bare(&self) -> Self {
        match self.domain() {
            None => self.clone(),
            Some(_) => Self(Arc::from(self.code())),
        }
    }
}

impl Borrow<str> for ShortCode {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ShortCode {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ShortCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ShortCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShortCode({})", &self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_allowed_alphabet() {
        for ok in ["a", "abc-DEF_123", &"x".repeat(64), "API2", "_", "-"] {
            assert_eq!(
                ShortCode::parse(ok).map(|c| c.to_string()),
                Ok(ok.to_owned())
            );
        }
    }

    #[test]
    fn rejects_what_is_not_a_code() {
        assert_eq!(ShortCode::parse(""), Err(CodeError::Empty));
        assert_eq!(ShortCode::parse(&"x".repeat(65)), Err(CodeError::TooLong));
        for bad in ["a.b", "a/b", "..", "%41", "é", "a b", "a\nb", "a?b", "a#b"] {
            assert_eq!(
                ShortCode::parse(bad),
                Err(CodeError::BadCharacter),
                "{bad:?}"
            );
        }
        for word in [
            "api", "API", "realtime", "links", "static", "healthz", "metrics",
        ] {
            assert!(matches!(
                ShortCode::parse(word),
                Err(CodeError::Reserved(_))
            ));
        }
    }

    #[test]
    fn a_code_on_a_domain_is_keyed_by_both_and_reads_back() {
        let code = ShortCode::parse("hello").unwrap();
        let domain = super::super::DomainName::parse("Go.Example.test").unwrap();
        let on = ShortCode::on(Some(&domain), &code);
        assert_eq!(on.as_str(), "go.example.test/hello");
        assert_eq!((on.code(), on.domain()), ("hello", Some("go.example.test")));
        assert_ne!(on, code, "the same code on two domains is two links");
        assert_eq!(ShortCode::from_key(on.as_str()), Ok(on.clone()));
        assert_eq!(ShortCode::from_key("hello"), Ok(code.clone()));
        assert_eq!(ShortCode::on(None, &on), code);
        assert_eq!((code.code(), code.domain()), ("hello", None));
        for bad in [
            "GO.example.test/hello",
            "go.example.test/api",
            "/hello",
            "a/b/c",
            "x y/hello",
        ] {
            assert!(ShortCode::from_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn generated_codes_are_valid_base62_of_seven() {
        for _ in 0..1000 {
            let code = ShortCode::generate();
            assert_eq!(code.as_str().len(), GENERATED_CODE_LEN);
            assert!(code.as_str().bytes().all(|b| b.is_ascii_alphanumeric()));
            assert_eq!(ShortCode::parse(code.as_str()), Ok(code));
        }
    }

    /// The rule of the module doc, written independently of `parse`.
    fn is_code(raw: &str) -> bool {
        (1..=MAX_CODE_LEN).contains(&raw.len())
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            && !RESERVED.contains(&raw.to_ascii_lowercase().as_str())
    }

    /// Any string, strings near the rule (its alphabet plus a few troublemakers, around the
    /// length limit), and reserved words in mixed case.
    fn candidates() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            any::<String>(),
            "[A-Za-z0-9_-]{0,70}",
            "[A-Za-z0-9_./%é\u{2028}\r\n -]{0,70}",
            proptest::sample::select(RESERVED).prop_flat_map(|w| {
                proptest::collection::vec(any::<bool>(), w.len()).prop_map(move |upper| {
                    w.chars()
                        .zip(upper)
                        .map(|(c, u)| if u { c.to_ascii_uppercase() } else { c })
                        .collect()
                })
            }),
        ]
    }

    proptest::proptest! {
        #[test]
        fn parse_accepts_exactly_the_rule_and_round_trips(raw in candidates()) {
            let parsed = ShortCode::parse(&raw);
            proptest::prop_assert_eq!(parsed.is_ok(), is_code(&raw), "{:?}: {:?}", raw, parsed);
            if let Ok(code) = parsed {
                proptest::prop_assert_eq!(code.as_str(), raw.as_str());
                proptest::prop_assert_eq!(ShortCode::parse(code.as_str()), Ok(code));
            }
        }
    }
}
