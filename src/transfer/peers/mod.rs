//! Links from the exports of other shorteners: Bitly, Shlink, YOURLS and Kutt. One parser
//! feeds both `linkpulse import --format ...` (a stopped server's store) and
//! `POST /api/import?format=...` (a running server, through the bulk creation path).
//!
//! Each format is read by its column names (any case; spaces, `_` and `-` ignored), so the
//! order of columns and extra columns do not matter. What each carries (see
//! `tests/fixtures/imports/README.md` for where the names come from):
//!
//! | format | code | target | title | tags | created | visits |
//! |---|---|---|---|---|---|---|
//! | bitly  | first `custom_bitlinks`, else `link`/`bitlink` (its last path segment) | `long_url` | `title` | `tags` | `created_at` | `clicks` |
//! | shlink | `shortCode` | `longUrl` | `title` | `tags` (`\|`-separated) | `createdAt` | `visits` |
//! | yourls | `keyword` | `url` | `title` | none | `timestamp` (UTC) | `clicks` |
//! | kutt   | `address` | `target` | `description` | none | `created_at` | `visit_count` |
//!
//! Kutt is also read as JSON: a page of `GET /api/v2/links` (`{"data":[...]}`) or a bare
//! array of such links. The visits become the link's `importedClickCount`, never its count.
//!
//! A file that cannot be read as its format at all (broken CSV, a row whose number of fields
//! is not the header's, no column for the target, bad JSON) is [`Malformed`], naming the
//! line: nothing of it is imported. A row that can be read but not taken (a bad URL, code,
//! time or count) is [`Refused`], and the other rows go on.

mod formats;
mod offline;
#[cfg(test)]
mod tests;

use serde::Serialize;

use crate::domain::{KeyId, Link, ShortCode, TargetUrl, check_tags, check_title, now_ms};
pub use formats::PeerFormat;
pub use offline::import_peer;

/// One link read from another shortener's export, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLink {
    /// The line of the file it came from (JSON: its place in the list, from 1).
    pub line: u64,
    /// `None`: the row has none; one is generated.
    pub code: Option<ShortCode>,
    pub target: TargetUrl,
    pub title: Option<String>,
    pub tags: Vec<String>,
    /// Epoch milliseconds.
    pub created_at: Option<i64>,
    pub visits: Option<u64>,
}

impl PeerLink {
    /// The link it becomes, with `code` (its own, or a generated one), owned by `owner` in
    /// `workspace`; created now when the row had no time.
    pub fn to_link(&self, code: ShortCode, owner: &KeyId, workspace: &str) -> Link {
        let mut link = Link::new(
            code,
            self.target.clone(),
            owner.clone(),
            self.created_at.unwrap_or_else(now_ms),
        );
        link.workspace = workspace.to_owned();
        link.title.clone_from(&self.title);
        link.tags.clone_from(&self.tags);
        link.imported_click_count = self.visits;
        link
    }
}

/// A row that was read but cannot be a link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refused {
    pub line: u64,
    pub error: String,
}

/// A row skipped because its code is taken (in the store, or by an earlier row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub line: u64,
    pub code: String,
    pub reason: String,
}

/// What a file holds: the links it can give, and the rows refused.
#[derive(Debug, Default)]
pub struct Parsed {
    pub links: Vec<PeerLink>,
    pub refused: Vec<Refused>,
}

/// A file that cannot be read as its format at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct Malformed {
    pub line: u64,
    pub message: String,
}

/// Reads `input` as an export of `format`.
pub fn parse(format: PeerFormat, input: &[u8]) -> Result<Parsed, Malformed> {
    let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
    let first = input.iter().find(|b| !b.is_ascii_whitespace());
    if format == PeerFormat::Kutt && matches!(first, Some(b'{' | b'[')) {
        return formats::kutt_json(input);
    }
    formats::csv(format, input)
}

/// The fields of one row by meaning, as read (before they are checked).
#[derive(Default)]
struct RawRow<'a> {
    code: Option<&'a str>,
    target: Option<&'a str>,
    title: Option<&'a str>,
    tags: Vec<&'a str>,
    created: Option<&'a str>,
    visits: Option<&'a str>,
}

impl RawRow<'_> {
    /// The row checked as the API checks a new link's fields.
    fn check(&self, line: u64) -> Result<PeerLink, Refused> {
        let refuse = |error: String| Refused { line, error };
        let target = self.target.map(str::trim).unwrap_or_default();
        if target.is_empty() {
            return Err(refuse("no target URL".into()));
        }
        let target =
            TargetUrl::parse(target).map_err(|e| refuse(format!("url {target:?}: {e}")))?;
        let code = match self.code.map(str::trim).filter(|c| !c.is_empty()) {
            None => None,
            Some(raw) => {
                Some(ShortCode::parse(raw).map_err(|e| refuse(format!("code {raw:?}: {e}")))?)
            }
        };
        let title = match self.title {
            None => None,
            Some(raw) => check_title(raw).map_err(refuse)?,
        };
        let tags = check_tags(self.tags.iter().copied()).map_err(refuse)?;
        let created_at = match self.created.map(str::trim).filter(|t| !t.is_empty()) {
            None => None,
            Some(raw) => Some(parse_time(raw).ok_or_else(|| {
                refuse(format!(
                    "creation time {raw:?} is not a time this import reads (RFC 3339, \
                     YYYY-MM-DD HH:MM:SS, or seconds since 1970)"
                ))
            })?),
        };
        let visits = match self.visits.map(str::trim).filter(|v| !v.is_empty()) {
            None => None,
            Some(raw) => Some(
                raw.parse::<u64>()
                    .map_err(|_| refuse(format!("visit count {raw:?} is not a whole number")))?,
            ),
        };
        Ok(PeerLink {
            line,
            code,
            target,
            title,
            tags,
            created_at,
            visits,
        })
    }
}

/// A time as exports write it, in epoch milliseconds: RFC 3339 (`Z`, `+00:00` or `+0000`),
/// `YYYY-MM-DD HH:MM:SS` (taken as UTC), or seconds since 1970.
pub(crate) fn parse_time(raw: &str) -> Option<i64> {
    if let Ok(t) = raw.parse::<jiff::Timestamp>() {
        return Some(t.as_millisecond());
    }
    // `+0000`, as Bitly writes it: a colon added to the offset.
    let bytes = raw.as_bytes();
    if bytes.len() > 5 {
        let (head, offset) = raw.split_at(raw.len() - 5);
        if (offset.starts_with('+') || offset.starts_with('-'))
            && offset[1..].bytes().all(|b| b.is_ascii_digit())
            && let Ok(t) =
                format!("{head}{}:{}", &offset[..3], &offset[3..]).parse::<jiff::Timestamp>()
        {
            return Some(t.as_millisecond());
        }
    }
    if let Ok(civil) = raw.parse::<jiff::civil::DateTime>()
        && let Ok(at) = jiff::tz::TimeZone::UTC.to_timestamp(civil)
    {
        return Some(at.as_millisecond());
    }
    if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        let n: i64 = raw.parse().ok()?;
        // Milliseconds already past 1973 when read as seconds would be after year 33658.
        return Some(if n >= 100_000_000_000 {
            n
        } else {
            n.checked_mul(1000)?
        });
    }
    None
}

/// What an import from another shortener did, or would do (`dry_run`): the shape
/// `POST /api/import` answers and `linkpulse import --format ...` prints.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerReport {
    pub format: &'static str,
    pub dry_run: bool,
    /// Rows read (blank ones not counted).
    pub rows: u64,
    /// Links created (in a dry run: that would be).
    pub created: u64,
    pub skipped: Vec<Skipped>,
    pub errors: Vec<Refused>,
}

impl PeerReport {
    pub fn new(format: PeerFormat, dry_run: bool, parsed: &Parsed) -> Self {
        Self {
            format: format.name(),
            dry_run,
            rows: (parsed.links.len() + parsed.refused.len()) as u64,
            errors: parsed.refused.clone(),
            ..Self::default()
        }
    }

    /// Skips rows whose code an earlier row has (the first keeps it); the links left.
    pub fn skip_repeated(&mut self, links: Vec<PeerLink>) -> Vec<PeerLink> {
        let mut first = std::collections::HashMap::new();
        let mut kept = Vec::with_capacity(links.len());
        for link in links {
            if let Some(code) = &link.code {
                if let Some(line) = first.get(code) {
                    self.skipped.push(Skipped {
                        line: link.line,
                        code: code.to_string(),
                        reason: format!("line {line} has the same code"),
                    });
                    continue;
                }
                first.insert(code.clone(), link.line);
            }
            kept.push(link);
        }
        kept
    }

    /// The report as `linkpulse import` prints it: a summary line, then one line per row
    /// skipped or refused.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let verb = if self.dry_run {
            "would create"
        } else {
            "created"
        };
        let mut out = format!(
            "{}: {verb} {} links, skipped {}, refused {} (of {} rows){}\n",
            self.format,
            self.created,
            self.skipped.len(),
            self.errors.len(),
            self.rows,
            if self.dry_run {
                "; dry run, nothing changed"
            } else {
                ""
            }
        );
        for s in &self.skipped {
            let _ = writeln!(out, "skipped line {}: {}: {}", s.line, s.code, s.reason);
        }
        for e in &self.errors {
            let _ = writeln!(out, "refused line {}: {}", e.line, e.error);
        }
        out
    }
}
