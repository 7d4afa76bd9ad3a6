//! Link records: maps with named fields, later fields defaulted so older records decode.

use serde::{Deserialize, Serialize};

use super::{DecodeError, RECORD_VERSION, check_version, decode, encode};
use crate::domain::{Link, RedirectRule, RuleDevice, ShortCode, TargetUrl};

/// Fields after `created_at` came with link management; records without them decode as the
/// plain links they were.
#[derive(Serialize, Deserialize)]
struct LinkRecord {
    v: u8,
    code: String,
    url: String,
    owner: String,
    created_at: i64,
    #[serde(default)]
    rev: u64,
    #[serde(default)]
    updated_at: Option<i64>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    expires_at: Option<i64>,
    #[serde(default)]
    expired_url: Option<String>,
    #[serde(default)]
    max_visits: Option<u64>,
    #[serde(default)]
    redirect_status: Option<u16>,
    #[serde(default)]
    forward_query: bool,
    #[serde(default = "yes")]
    public_stats: bool,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    rules: Vec<RuleRecord>,
    /// `None`: the first workspace (every link from before workspaces).
    #[serde(default)]
    workspace: Option<String>,
    /// The visits counted by the shortener the link was imported from.
    #[serde(default)]
    imported_click_count: Option<u64>,
}

fn yes() -> bool {
    true
}

#[derive(Serialize, Deserialize)]
struct RuleRecord {
    device: Option<RuleDevice>,
    country: Option<String>,
    url: String,
}

pub fn encode_link(link: &Link) -> Vec<u8> {
    encode(&LinkRecord {
        v: RECORD_VERSION,
        code: link.code.to_string(),
        url: link.target.to_string(),
        owner: link.owner.clone(),
        created_at: link.created_at,
        rev: link.rev,
        updated_at: Some(link.updated_at),
        title: link.title.clone(),
        tags: link.tags.clone(),
        expires_at: link.expires_at,
        expired_url: link.expired_url.as_ref().map(ToString::to_string),
        max_visits: link.max_visits,
        redirect_status: link.redirect_status,
        forward_query: link.forward_query,
        public_stats: link.public_stats,
        password: link.password.clone(),
        rules: link
            .rules
            .iter()
            .map(|r| RuleRecord {
                device: r.device,
                country: r.country.clone(),
                url: r.url.to_string(),
            })
            .collect(),
        workspace: crate::accounts::stored_id(&link.workspace),
        imported_click_count: link.imported_click_count,
    })
}

pub fn decode_link(bytes: &[u8]) -> Result<Link, DecodeError> {
    let r: LinkRecord = decode("link", bytes)?;
    check_version("link", r.v)?;
    let invalid = |cause: String| DecodeError::Invalid {
        what: "link",
        cause,
    };
    let url = |raw: &str| TargetUrl::parse(raw).map_err(|e| invalid(e.to_string()));
    let rules = r
        .rules
        .iter()
        .map(|rule| {
            Ok(RedirectRule {
                device: rule.device,
                country: rule.country.clone(),
                url: url(&rule.url)?,
            })
        })
        .collect::<Result<_, DecodeError>>()?;
    Ok(Link {
        code: ShortCode::from_key(&r.code).map_err(|e| invalid(e.to_string()))?,
        target: url(&r.url)?,
        owner: r.owner,
        workspace: crate::accounts::workspace_of(r.workspace.as_deref()).to_owned(),
        created_at: r.created_at,
        rev: r.rev,
        updated_at: r.updated_at.unwrap_or(r.created_at),
        title: r.title,
        tags: r.tags,
        expires_at: r.expires_at,
        expired_url: r.expired_url.as_deref().map(url).transpose()?,
        max_visits: r.max_visits,
        redirect_status: r.redirect_status,
        forward_query: r.forward_query,
        public_stats: r.public_stats,
        password: r.password,
        rules,
        imported_click_count: r.imported_click_count,
    })
}
