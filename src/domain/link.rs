//! A short link: the code, where it points, who owns it, and how it redirects.

use serde::{Deserialize, Serialize};

use super::{DeviceClass, ShortCode, TargetUrl};

/// The public id of an API key (a prefix of its hash); links record their owner by it.
pub type KeyId = String;

/// The longest title, in characters.
pub const MAX_TITLE: usize = 200;
/// At most this many tags per link, each at most [`MAX_TAG`] characters.
pub const MAX_TAGS: usize = 20;
pub const MAX_TAG: usize = 40;
/// At most this many redirect rules per link.
pub const MAX_RULES: usize = 20;

/// A stored short link. A change replaces the whole record (with `rev` one higher) and every
/// in-memory copy together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub code: ShortCode,
    pub target: TargetUrl,
    pub owner: KeyId,
    /// The workspace it belongs to.
    pub workspace: String,
    /// Creation time in epoch milliseconds.
    pub created_at: i64,
    /// 0 at creation, one more with each change: the newer of two copies wins.
    pub rev: u64,
    /// The last change, in epoch milliseconds (the creation time until changed).
    pub updated_at: i64,
    pub title: Option<String>,
    pub tags: Vec<String>,
    /// After this (epoch milliseconds) the link answers `410`, or redirects to `expired_url`.
    pub expires_at: Option<i64>,
    pub expired_url: Option<TargetUrl>,
    /// After this many counted clicks the link answers `410` (or `expired_url`).
    pub max_visits: Option<u64>,
    /// 301, 302, 307 or 308; `None`: the server's default (302).
    pub redirect_status: Option<u16>,
    /// Appends the short URL's query string to the target.
    pub forward_query: bool,
    /// Whether the stream and the stats page show more than the count.
    pub public_stats: bool,
    /// The argon2 hash (PHC string) of the link's password, if it has one.
    pub password: Option<String>,
    /// Other targets by device or country; the first rule that matches wins.
    pub rules: Vec<RedirectRule>,
    /// The visits another shortener counted before the link was imported from it: shown
    /// beside the click count, never added to it (the count is the number of stored clicks).
    pub imported_click_count: Option<u64>,
}

/// Text as a link keeps it: trimmed, at most `max` characters, no control characters.
fn text(name: &str, value: &str, max: usize) -> Result<String, String> {
    let value = value.trim();
    if value.chars().count() > max {
        return Err(format!("{name} must be at most {max} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{name} must not contain control characters"));
    }
    Ok(value.to_owned())
}

/// A title as a link keeps it (the API and an import alike): `None` when empty.
pub fn check_title(raw: &str) -> Result<Option<String>, String> {
    Ok(Some(text("title", raw, MAX_TITLE)?).filter(|t| !t.is_empty()))
}

/// Tags as a link keeps them: trimmed, empty ones left out, duplicates (ignoring case) once,
/// at most [`MAX_TAGS`].
pub fn check_tags<'a>(raw: impl Iterator<Item = &'a str>) -> Result<Vec<String>, String> {
    let mut checked: Vec<String> = Vec::new();
    for tag in raw {
        let tag = text("a tag", tag, MAX_TAG)?;
        if !tag.is_empty() && !checked.iter().any(|t| t.eq_ignore_ascii_case(&tag)) {
            checked.push(tag);
        }
    }
    if checked.len() > MAX_TAGS {
        return Err(format!("a link may have at most {MAX_TAGS} tags"));
    }
    Ok(checked)
}

/// A device class a rule can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "RuleDevice"))]
#[serde(rename_all = "lowercase")]
pub enum RuleDevice {
    Ios,
    Android,
    Desktop,
}

/// A rule: when the visitor's device (and/or country) matches, redirect to `url` instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectRule {
    pub device: Option<RuleDevice>,
    /// ISO 3166-1 alpha-2, upper case.
    pub country: Option<String>,
    pub url: TargetUrl,
}

impl RedirectRule {
    pub fn matches(&self, device: Option<RuleDevice>, country: Option<&str>) -> bool {
        self.device.is_none_or(|d| Some(d) == device)
            && self
                .country
                .as_deref()
                .is_none_or(|c| country.is_some_and(|v| v.eq_ignore_ascii_case(c)))
    }
}

/// The device a rule sees from a parsed user agent: iOS and Android by system, desktop by
/// device class.
pub fn rule_device(os: &str, device: DeviceClass) -> Option<RuleDevice> {
    match os {
        "iPhone" | "iPad" | "iPod" | "iOS" => Some(RuleDevice::Ios),
        "Android" => Some(RuleDevice::Android),
        _ if device == DeviceClass::Desktop => Some(RuleDevice::Desktop),
        _ => None,
    }
}

impl Link {
    /// A new link with the default behaviour: a plain redirect with public stats.
    pub fn new(code: ShortCode, target: TargetUrl, owner: KeyId, created_at: i64) -> Self {
        Self {
            code,
            target,
            owner,
            workspace: crate::accounts::FIRST_WORKSPACE.to_owned(),
            created_at,
            rev: 0,
            updated_at: created_at,
            title: None,
            tags: Vec::new(),
            expires_at: None,
            expired_url: None,
            max_visits: None,
            redirect_status: None,
            forward_query: false,
            public_stats: true,
            password: None,
            rules: Vec::new(),
            imported_click_count: None,
        }
    }

    /// Whether the link has expired at `now` (epoch milliseconds).
    pub fn expired_at(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// Whether a redirect needs nothing but the target: the hot path.
    pub fn is_plain(&self) -> bool {
        self.expires_at.is_none()
            && self.max_visits.is_none()
            && !self.forward_query
            && self.password.is_none()
            && self.rules.is_empty()
    }
}
