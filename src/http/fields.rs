//! The settable fields of a link, as `POST /api/links` and `PATCH /api/links/{code}` take them:
//! read from JSON, checked once, then applied to a [`Link`]. In a `PATCH` a field left out
//! stays as it is and `null` clears it.

use serde::{Deserialize, Deserializer};

use crate::domain::{
    Link, MAX_RULES, RedirectRule, RuleDevice, TargetUrl, check_tags, check_title,
};

/// The longest password, in characters.
pub const MAX_PASSWORD: usize = 128;

/// A field as sent: absent (`None`), `null` (`Some(None)`) or a value.
pub(super) type Field<T> = Option<Option<T>>;

pub(super) fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Field<T>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A redirect rule as sent.
#[derive(Deserialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "RuleIn"))]
#[serde(deny_unknown_fields)]
pub struct RuleBody {
    #[serde(default)]
    device: Option<RuleDevice>,
    #[serde(default)]
    country: Option<String>,
    url: String,
}

/// The fields both `POST` and `PATCH` take, as sent. In a `PATCH` a field left out stays as it
/// is and `null` clears it (the schema shows such fields as nullable).
#[derive(Deserialize, Default, salvo_oapi::ToSchema)]
#[salvo(schema(name = "LinkFields"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinkFields {
    #[serde(default, deserialize_with = "present")]
    pub url: Field<String>,
    /// Only in `POST`; a `PATCH` naming it is refused.
    #[serde(default)]
    pub code: Option<String>,
    /// The domain the link lives on (one added with `/api/domains`; left out: the default
    /// domain). Only in `POST`; a `PATCH` naming it is refused.
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[salvo(schema(value_type = Option<String>))]
    title: Field<String>,
    #[serde(default, deserialize_with = "present")]
    #[salvo(schema(value_type = Option<Vec<String>>))]
    tags: Field<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    #[salvo(schema(value_type = Option<String>))]
    expires_at: Field<String>,
    #[serde(default, deserialize_with = "present")]
    #[salvo(schema(value_type = Option<String>))]
    expired_url: Field<String>,
    #[serde(default, deserialize_with = "present")]
    #[salvo(schema(value_type = Option<u64>))]
    max_visits: Field<u64>,
    #[serde(default, deserialize_with = "present")]
    #[salvo(schema(value_type = Option<u16>))]
    redirect_status: Field<u16>,
    #[serde(default)]
    forward_query: Option<bool>,
    #[serde(default)]
    public_stats: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    #[salvo(schema(value_type = Option<String>))]
    pub password: Field<String>,
    #[serde(default, deserialize_with = "present")]
    #[salvo(schema(value_type = Option<Vec<RuleBody>>))]
    rules: Field<Vec<RuleBody>>,
}

/// A checked change: each `Some` replaces the link's value.
#[derive(Debug, Clone, Default)]
pub struct LinkPatch {
    pub target: Option<TargetUrl>,
    title: Option<Option<String>>,
    tags: Option<Vec<String>>,
    expires_at: Option<Option<i64>>,
    expired_url: Option<Option<TargetUrl>>,
    max_visits: Option<Option<u64>>,
    redirect_status: Option<Option<u16>>,
    forward_query: Option<bool>,
    public_stats: Option<bool>,
    /// The argon2 hash of a new password, or `Some(None)` to remove it (hashed by the caller:
    /// it takes tens of milliseconds).
    pub password: Option<Option<String>>,
    rules: Option<Vec<RedirectRule>>,
}

fn url(name: &str, raw: &str) -> Result<TargetUrl, String> {
    TargetUrl::parse(raw).map_err(|e| {
        // The target's own errors already begin with "url".
        if name == "url" {
            e.to_string()
        } else {
            format!("{name}: {e}")
        }
    })
}

impl LinkFields {
    /// Checks every field sent (all but `url`, `code` and `password`, which the handlers
    /// take themselves).
    pub fn check(&self) -> Result<LinkPatch, String> {
        let target = match &self.url {
            None => None,
            Some(None) => return Err("url: invalid type: null, expected a URL string".into()),
            Some(Some(raw)) => Some(url("url", raw)?),
        };
        let mut patch = LinkPatch {
            target,
            ..LinkPatch::default()
        };
        if let Some(title) = &self.title {
            patch.title = Some(title.as_deref().map(check_title).transpose()?.flatten());
        }
        if let Some(tags) = &self.tags {
            patch.tags = Some(check_tags(tags.iter().flatten().map(String::as_str))?);
        }
        if let Some(expires_at) = &self.expires_at {
            patch.expires_at = Some(expires_at.as_deref().map(expiry).transpose()?);
        }
        if let Some(expired_url) = &self.expired_url {
            patch.expired_url = Some(
                expired_url
                    .as_deref()
                    .map(|u| url("expiredUrl", u))
                    .transpose()?,
            );
        }
        if let Some(max_visits) = self.max_visits {
            patch.max_visits = Some(check_max_visits(max_visits)?);
        }
        if let Some(status) = self.redirect_status {
            patch.redirect_status = Some(check_redirect_status(status)?);
        }
        patch.forward_query = self.forward_query;
        patch.public_stats = self.public_stats;
        if let Some(rules) = &self.rules {
            patch.rules = Some(check_rules(rules.as_deref().unwrap_or_default())?);
        }
        if let Some(Some(password)) = &self.password {
            check_password(password)?;
        }
        Ok(patch)
    }
}

/// `expiresAt` as epoch milliseconds.
fn expiry(raw: &str) -> Result<i64, String> {
    raw.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|_| {
            format!(
                "expiresAt must be an RFC 3339 time such as \
                 2030-01-31T12:00:00Z, not '{raw}'"
            )
        })
}

/// `maxVisits`: at least 1, or `None` for no limit.
fn check_max_visits(max_visits: Option<u64>) -> Result<Option<u64>, String> {
    if max_visits == Some(0) {
        return Err("maxVisits must be at least 1 (or null for no limit)".into());
    }
    Ok(max_visits)
}

/// `redirectStatus`: one of the redirect statuses, or `None` for the default.
fn check_redirect_status(status: Option<u16>) -> Result<Option<u16>, String> {
    if let Some(s) = status
        && ![301, 302, 307, 308].contains(&s)
    {
        return Err(format!(
            "redirectStatus must be 301, 302, 307 or 308 (or null for the default \
             302), not {s}"
        ));
    }
    Ok(status)
}

/// `rules`: at most [`MAX_RULES`], each checked by [`check_rule`].
fn check_rules(rules: &[RuleBody]) -> Result<Vec<RedirectRule>, String> {
    if rules.len() > MAX_RULES {
        return Err(format!("a link may have at most {MAX_RULES} rules"));
    }
    let mut checked = Vec::with_capacity(rules.len());
    for (i, rule) in rules.iter().enumerate() {
        checked.push(check_rule(i, rule)?);
    }
    Ok(checked)
}

/// Rule `i`: a device or a two-letter country (upper-cased), and a URL.
fn check_rule(i: usize, rule: &RuleBody) -> Result<RedirectRule, String> {
    let country = match rule.country.as_deref() {
        None => None,
        Some(c) if c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()) => {
            Some(c.to_ascii_uppercase())
        }
        Some(c) => {
            return Err(format!(
                "rules[{i}].country must be a two-letter country code, not '{c}'"
            ));
        }
    };
    if rule.device.is_none() && country.is_none() {
        return Err(format!(
            "rules[{i}] must name a device (ios, android, desktop) or a country"
        ));
    }
    Ok(RedirectRule {
        device: rule.device,
        country,
        url: url(&format!("rules[{i}].url"), &rule.url)?,
    })
}

/// A new password: 1 to [`MAX_PASSWORD`] characters.
fn check_password(password: &str) -> Result<(), String> {
    if password.is_empty() || password.chars().count() > MAX_PASSWORD {
        return Err(format!(
            "password must be 1 to {MAX_PASSWORD} characters (or null to remove it)"
        ));
    }
    Ok(())
}

impl LinkPatch {
    /// The link with this change.
    pub fn apply(&self, link: &Link) -> Link {
        let mut new = link.clone();
        if let Some(target) = &self.target {
            new.target = target.clone();
        }
        if let Some(title) = &self.title {
            new.title.clone_from(title);
        }
        if let Some(tags) = &self.tags {
            new.tags.clone_from(tags);
        }
        if let Some(expires_at) = self.expires_at {
            new.expires_at = expires_at;
        }
        if let Some(expired_url) = &self.expired_url {
            new.expired_url.clone_from(expired_url);
        }
        if let Some(max_visits) = self.max_visits {
            new.max_visits = max_visits;
        }
        if let Some(status) = self.redirect_status {
            new.redirect_status = status;
        }
        if let Some(forward) = self.forward_query {
            new.forward_query = forward;
        }
        if let Some(public) = self.public_stats {
            new.public_stats = public;
        }
        if let Some(password) = &self.password {
            new.password.clone_from(password);
        }
        if let Some(rules) = &self.rules {
            new.rules.clone_from(rules);
        }
        new
    }
}

/// The argon2id hash (PHC string) of a password, with a fresh salt. About 20 ms of CPU: call
/// it off the async threads.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::{Argon2, PasswordHasher, password_hash::SaltString};
    let salt: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches the stored hash (false for a hash that cannot be read).
pub fn verify_password(hash: &str, password: &str) -> bool {
    use argon2::{Argon2, PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> Result<LinkPatch, String> {
        serde_json::from_str::<LinkFields>(json)
            .map_err(|e| e.to_string())?
            .check()
    }

    #[test]
    fn absent_fields_stay_and_null_clears() -> Result<(), String> {
        let mut link = Link::new(
            crate::domain::ShortCode::parse("abc").map_err(|e| e.to_string())?,
            url("url", "https://example.com/")?,
            "owner".into(),
            0,
        );
        link.title = Some("old".into());
        link.max_visits = Some(5);
        let changed = fields(r#"{"title":null,"tags":["a","A"," b "]}"#)?.apply(&link);
        assert_eq!(changed.title, None);
        assert_eq!(changed.tags, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(changed.max_visits, Some(5), "absent: unchanged");
        let changed =
            fields(r#"{"maxVisits":null,"expiresAt":"2030-01-31T12:00:00Z"}"#)?.apply(&link);
        assert_eq!(changed.max_visits, None);
        assert_eq!(changed.expires_at, Some(1_896_091_200_000));
        Ok(())
    }

    #[test]
    fn bad_values_are_refused_with_the_field_named() {
        for (json, word) in [
            (r#"{"redirectStatus":303}"#, "redirectStatus"),
            (r#"{"maxVisits":0}"#, "maxVisits"),
            (r#"{"expiresAt":"tomorrow"}"#, "expiresAt"),
            (r#"{"expiredUrl":"ftp://x"}"#, "expiredUrl"),
            (r#"{"rules":[{"url":"https://a.example/"}]}"#, "rules[0]"),
            (
                r#"{"rules":[{"country":"NLD","url":"https://a.example/"}]}"#,
                "country",
            ),
            (
                r#"{"rules":[{"device":"tv","url":"https://a.example/"}]}"#,
                "expected one of `ios`, `android`, `desktop`",
            ),
            (r#"{"password":""}"#, "password"),
            (
                r#"{"tags":["x\u0007"]}"#,
                "a tag must not contain control characters",
            ),
            (r#"{"nope":1}"#, "nope"),
        ] {
            let err = fields(json).err().unwrap_or_default();
            assert!(err.contains(word), "{json}: {err}");
        }
    }

    #[test]
    fn passwords_verify_only_against_their_hash() -> Result<(), String> {
        let hash = hash_password("open sesame")?;
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(&hash, "open sesame"));
        assert!(!verify_password(&hash, "open sesame!"));
        assert!(!verify_password("not a hash", "open sesame"));
        Ok(())
    }
}
