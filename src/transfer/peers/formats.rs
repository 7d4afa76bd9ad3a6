//! The column names of each format, and the two readers: CSV by header names, and Kutt's
//! JSON.

use super::{Malformed, Parsed, RawRow};

/// A shortener whose export can be imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerFormat {
    Bitly,
    Shlink,
    Yourls,
    Kutt,
}

impl PeerFormat {
    pub const ALL: [Self; 4] = [Self::Bitly, Self::Shlink, Self::Yourls, Self::Kutt];

    pub fn name(self) -> &'static str {
        match self {
            Self::Bitly => "bitly",
            Self::Shlink => "shlink",
            Self::Yourls => "yourls",
            Self::Kutt => "kutt",
        }
    }

    /// The format named `raw` (any case).
    pub fn named(raw: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(raw.trim()))
    }

    fn columns(self) -> &'static Columns {
        match self {
            Self::Bitly => &BITLY,
            Self::Shlink => &SHLINK,
            Self::Yourls => &YOURLS,
            Self::Kutt => &KUTT,
        }
    }
}

/// The names (normalized: lower case, without spaces, `_` or `-`) a format's columns go by,
/// the first found taken.
struct Columns {
    /// The code itself.
    code: &'static [&'static str],
    /// A short URL whose last path segment is the code, when no `code` column is there.
    short_url: &'static [&'static str],
    target: &'static [&'static str],
    title: &'static [&'static str],
    tags: &'static [&'static str],
    created: &'static [&'static str],
    visits: &'static [&'static str],
}

/// Bitly's links (API v4 `Bitlink`, and the links export of the web app): `custom_bitlinks`
/// are the back-halves people chose, `link` the generated bitlink.
const BITLY: Columns = Columns {
    code: &[],
    short_url: &[
        "custombitlinks",
        "link",
        "bitlink",
        "shortlink",
        "shorturl",
        "id",
    ],
    target: &["longurl", "destinationurl", "destination", "url"],
    title: &["title"],
    tags: &["tags"],
    created: &["createdat", "datecreated", "created", "creationdate"],
    visits: &["clicks", "totalclicks", "engagements"],
};

/// shlink-web-client's "Export" of the short URL list (`short_urls.csv`): createdAt, domain,
/// shortCode, shortUrl, longUrl, title, tags (joined with `|`), visits.
const SHLINK: Columns = Columns {
    code: &["shortcode"],
    short_url: &["shorturl"],
    target: &["longurl"],
    title: &["title"],
    tags: &["tags"],
    created: &["createdat", "datecreated"],
    visits: &["visits", "visitscount"],
};

/// YOURLS' `yourls_url` table as its export plugins and database dumps write it: keyword,
/// url, title, timestamp, ip, clicks.
const YOURLS: Columns = Columns {
    code: &["keyword"],
    short_url: &["shorturl"],
    target: &["url", "longurl"],
    title: &["title"],
    tags: &[],
    created: &["timestamp", "date"],
    visits: &["clicks"],
};

/// Kutt's links as its API `GET /api/v2/links` gives them: address, target, description,
/// created_at, visit_count (the same names as CSV columns).
const KUTT: Columns = Columns {
    code: &["address"],
    short_url: &["link"],
    target: &["target"],
    title: &["description"],
    tags: &[],
    created: &["createdat"],
    visits: &["visitcount"],
};

fn normalized(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, ' ' | '_' | '-'))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The last path segment of a short URL (`https://bit.ly/3abc` and `bit.ly/3abc` alike); a
/// field of several (Bitly's `custom_bitlinks`) gives its first.
fn code_of_short_url(raw: &str) -> &str {
    let first = raw
        .split([',', '|', ' '])
        .map(str::trim)
        .find(|s| !s.is_empty())
        .unwrap_or_default();
    let path = first.split(['?', '#']).next().unwrap_or_default();
    let path = path.split_once("://").map_or(path, |(_, rest)| rest);
    match path.split_once('/') {
        Some((_, rest)) => rest
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default(),
        None => "",
    }
}

fn split_tags(raw: &str) -> Vec<&str> {
    raw.split([',', '|', ';']).collect()
}

/// Where each meaning is in a row: a column index per field.
struct Places {
    code: Option<usize>,
    short_urls: Vec<usize>,
    target: usize,
    title: Option<usize>,
    tags: Option<usize>,
    created: Option<usize>,
    visits: Option<usize>,
}

impl Places {
    fn find(format: PeerFormat, header: &[String]) -> Result<Self, String> {
        let cols = format.columns();
        let at = |names: &[&str]| {
            names
                .iter()
                .find_map(|name| header.iter().position(|h| h == name))
        };
        let target = at(cols.target).ok_or_else(|| {
            format!(
                "no column for the target URL in the header (a {} export names it {})",
                format.name(),
                cols.target.join(" or ")
            )
        })?;
        Ok(Self {
            code: at(cols.code),
            short_urls: cols
                .short_url
                .iter()
                .filter_map(|name| header.iter().position(|h| h == name))
                .collect(),
            target,
            title: at(cols.title),
            tags: at(cols.tags),
            created: at(cols.created),
            visits: at(cols.visits),
        })
    }

    fn row<'a>(&self, field: impl Fn(usize) -> Option<&'a str>) -> RawRow<'a> {
        let code = self.code.and_then(&field).or_else(|| {
            self.short_urls
                .iter()
                .filter_map(|&i| field(i))
                .map(code_of_short_url)
                .find(|c| !c.is_empty())
        });
        RawRow {
            code,
            target: field(self.target),
            title: self.title.and_then(&field),
            tags: self
                .tags
                .and_then(&field)
                .map(split_tags)
                .unwrap_or_default(),
            created: self.created.and_then(&field),
            visits: self.visits.and_then(&field),
        }
    }
}

/// A CSV export with a header row.
pub(super) fn csv(format: PeerFormat, input: &[u8]) -> Result<Parsed, Malformed> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(input);
    let malformed = |e: csv::Error| Malformed {
        line: e.position().map_or(1, csv::Position::line),
        message: match e.kind() {
            csv::ErrorKind::UnequalLengths {
                expected_len, len, ..
            } => format!("{len} fields where the header has {expected_len}"),
            csv::ErrorKind::Utf8 { .. } => "not UTF-8 text".into(),
            _ => format!("not CSV: {e}"),
        },
    };
    let header: Vec<String> = reader
        .headers()
        .map_err(malformed)?
        .iter()
        .map(normalized)
        .collect();
    let places = Places::find(format, &header).map_err(|message| Malformed { line: 1, message })?;
    let mut parsed = Parsed::default();
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(malformed(e)),
        }
        let line = record.position().map_or(0, csv::Position::line);
        if record.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        match places.row(|i| record.get(i)).check(line) {
            Ok(link) => parsed.links.push(link),
            Err(refused) => parsed.refused.push(refused),
        }
    }
    Ok(parsed)
}

/// Kutt's JSON: a page of its API (`{"data":[...]}`) or a bare array of links.
pub(super) fn kutt_json(input: &[u8]) -> Result<Parsed, Malformed> {
    let value: serde_json::Value = serde_json::from_slice(input).map_err(|e| Malformed {
        line: e.line() as u64,
        message: format!("not JSON: {e}"),
    })?;
    let items = match &value {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(page) => match page.get("data") {
            Some(serde_json::Value::Array(items)) => items,
            _ => {
                return Err(Malformed {
                    line: 1,
                    message: "a Kutt JSON export is an array of links or a page of \
                              GET /api/v2/links ({\"data\":[...]})"
                        .into(),
                });
            }
        },
        _ => {
            return Err(Malformed {
                line: 1,
                message: "a Kutt JSON export is an array of links".into(),
            });
        }
    };
    let mut parsed = Parsed::default();
    for (i, item) in items.iter().enumerate() {
        let line = i as u64 + 1;
        let Some(fields) = item.as_object() else {
            parsed.refused.push(super::Refused {
                line,
                error: "not a JSON object".into(),
            });
            continue;
        };
        // Names normalized as CSV headers are; numbers and strings alike as text.
        let texts: Vec<(String, String)> = fields
            .iter()
            .filter_map(|(name, value)| {
                let text = match value {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    // Newer Kutt: `link` is `{"link","url"}`.
                    serde_json::Value::Object(o) => o.get("url")?.as_str()?.to_owned(),
                    _ => return None,
                };
                Some((normalized(name), text))
            })
            .collect();
        let header: Vec<String> = texts.iter().map(|(n, _)| n.clone()).collect();
        let row = match Places::find(PeerFormat::Kutt, &header) {
            Ok(places) => places
                .row(|i| texts.get(i).map(|(_, v)| v.as_str()))
                .check(line),
            Err(_) => Err(super::Refused {
                line,
                error: "no target".into(),
            }),
        };
        match row {
            Ok(link) => parsed.links.push(link),
            Err(refused) => parsed.refused.push(refused),
        }
    }
    Ok(parsed)
}
