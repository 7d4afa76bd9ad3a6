//! Values parsed once at the edge: a [`ShortCode`], a [`TargetUrl`], a [`Link`] and a
//! [`ClickEvent`]. Invalid values cannot be constructed, so the rest of the crate never checks
//! them again.

mod click;
mod code;
mod host;
mod link;
mod scope;
mod target;

pub use click::{ClickEvent, DeviceClass};
pub use code::{CodeError, ShortCode};
pub use host::{DomainName, NameError};
pub use link::{
    KeyId, Link, MAX_RULES, MAX_TAG, MAX_TAGS, MAX_TITLE, RedirectRule, RuleDevice, check_tags,
    check_title, rule_device,
};
pub use scope::Scope;
pub use target::{TargetUrl, UrlError};

/// Milliseconds since the Unix epoch, the one clock format stored on disk.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// Formats epoch milliseconds as RFC 3339 (what JavaScript's `Date.toJSON` gives), falling back
/// to the epoch for values out of range.
pub fn format_ms(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_milliseconds_as_rfc3339() {
        assert_eq!(super::format_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            super::format_ms(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
    }
}
