//! The lines of an export, as they are written and read: the header, owners, links, clicks
//! and aggregates snapshots, each a JSON object tagged with its `type`.

use serde::{Deserialize, Serialize};

use crate::{
    domain::{
        ClickEvent, DeviceClass, DomainName, KeyId, Link, MAX_RULES, RedirectRule, RuleDevice,
        ShortCode, TargetUrl, check_tags, check_title, format_ms,
    },
    keys::Scope,
    store::records::DomainRecord,
};

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub(super) enum Line {
    #[serde(rename_all = "camelCase")]
    LinkpulseExport {
        version: u32,
        exported_at: String,
        /// Hex of the store's visitor-hash secret.
        #[serde(default)]
        visitor_key: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    Owner {
        id: KeyId,
        name: String,
        scope: Scope,
        created_at: String,
    },
    Domain(DomainLine),
    Link(Box<LinkLine>),
    Click(ClickLine),
    Aggregates {
        code: String,
        covers: u64,
        snapshot: String,
    },
}

/// A domain links may live on (its certificate is not exported: it is ordered again).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DomainLine {
    name: String,
    owner: KeyId,
    created_at: String,
    root_url: Option<String>,
    not_found_url: Option<String>,
    https: bool,
    hsts: bool,
    https_only: bool,
    /// Its workspace (absent: the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    workspace: Option<String>,
}

impl DomainLine {
    pub(super) fn of(record: &DomainRecord) -> Self {
        Self {
            name: record.name.clone(),
            owner: record.owner.clone(),
            created_at: format_ms(record.created_at),
            root_url: record.root_url.clone(),
            not_found_url: record.not_found_url.clone(),
            https: record.https,
            hsts: record.hsts,
            https_only: record.https_only,
            workspace: record.workspace.clone(),
        }
    }

    /// The domain, checked as the API checks what it is sent.
    pub(super) fn into_record(self) -> Result<DomainRecord, String> {
        let name =
            DomainName::parse(&self.name).map_err(|e| format!("domain {:?}: {e}", self.name))?;
        if (self.hsts || self.https_only) && !self.https {
            return Err(format!("domain {name}: hsts and httpsOnly need https"));
        }
        Ok(DomainRecord {
            v: crate::store::records::RECORD_VERSION,
            name: name.to_string(),
            owner: self.owner,
            created_at: time("createdAt", &self.created_at)?,
            root_url: self
                .root_url
                .as_deref()
                .map(|u| url("rootUrl", u))
                .transpose()?
                .map(|u| u.to_string()),
            not_found_url: self
                .not_found_url
                .as_deref()
                .map(|u| url("notFoundUrl", u))
                .transpose()?
                .map(|u| u.to_string()),
            https: self.https,
            hsts: self.hsts,
            https_only: self.https_only,
            workspace: self.workspace,
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct LinkLine {
    /// The link's key: its code, after `domain/` when it lives on a domain other than the
    /// default one.
    code: String,
    /// That domain (absent: the default one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    domain: Option<String>,
    url: String,
    owner: KeyId,
    created_at: String,
    updated_at: String,
    rev: u64,
    title: Option<String>,
    tags: Vec<String>,
    expires_at: Option<String>,
    expired_url: Option<String>,
    max_visits: Option<u64>,
    /// `null`: the server's default (302).
    redirect_status: Option<u16>,
    forward_query: bool,
    public_stats: bool,
    /// The argon2 hash (PHC string) of the link's password.
    password_hash: Option<String>,
    rules: Vec<RuleLine>,
    /// Its workspace (absent: the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    workspace: Option<String>,
    /// The visits counted by the shortener it was imported from (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    imported_click_count: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct RuleLine {
    device: Option<RuleDevice>,
    country: Option<String>,
    url: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ClickLine {
    pub(super) code: String,
    seq: u64,
    at: String,
    ip: Option<String>,
    user_agent: String,
    referer: Option<String>,
    country: Option<String>,
    browser: String,
    os: String,
    device: DeviceClass,
    bot: bool,
}

impl LinkLine {
    pub(super) fn of(link: &Link) -> Self {
        Self {
            code: link.code.to_string(),
            domain: link.code.domain().map(str::to_owned),
            url: link.target.to_string(),
            owner: link.owner.clone(),
            created_at: format_ms(link.created_at),
            updated_at: format_ms(link.updated_at),
            rev: link.rev,
            title: link.title.clone(),
            tags: link.tags.clone(),
            expires_at: link.expires_at.map(format_ms),
            expired_url: link.expired_url.as_ref().map(ToString::to_string),
            max_visits: link.max_visits,
            redirect_status: link.redirect_status,
            forward_query: link.forward_query,
            public_stats: link.public_stats,
            password_hash: link.password.clone(),
            rules: link
                .rules
                .iter()
                .map(|r| RuleLine {
                    device: r.device,
                    country: r.country.clone(),
                    url: r.url.to_string(),
                })
                .collect(),
            workspace: crate::accounts::stored_id(&link.workspace),
            imported_click_count: link.imported_click_count,
        }
    }

    /// The link, checked as the API checks what it is sent.
    pub(super) fn into_link(self) -> Result<Link, String> {
        let code =
            ShortCode::from_key(&self.code).map_err(|e| format!("code {:?}: {e}", self.code))?;
        // An export without `domain` (older ones) names it in the code alone.
        if self.domain.is_some() && self.domain.as_deref() != code.domain() {
            return Err(format!(
                "code {:?} and domain {:?} disagree (a link on a domain is keyed domain/code)",
                self.code, self.domain
            ));
        }
        if let Some(status) = self.redirect_status
            && ![301, 302, 307, 308].contains(&status)
        {
            return Err(format!(
                "redirectStatus must be 301, 302, 307 or 308, not {status}"
            ));
        }
        if self.max_visits == Some(0) {
            return Err("maxVisits must be at least 1 (or null)".into());
        }
        if let Some(hash) = &self.password_hash {
            argon2::PasswordHash::new(hash)
                .map_err(|e| format!("passwordHash is not a PHC string: {e}"))?;
        }
        let rules = rules(&self.rules)?;
        let created_at = time("createdAt", &self.created_at)?;
        Ok(Link {
            code,
            target: url("url", &self.url)?,
            owner: self.owner,
            workspace: crate::accounts::workspace_of(self.workspace.as_deref()).to_owned(),
            created_at,
            rev: self.rev,
            updated_at: time("updatedAt", &self.updated_at)?,
            title: self
                .title
                .as_deref()
                .map(check_title)
                .transpose()?
                .flatten(),
            tags: check_tags(self.tags.iter().map(String::as_str))?,
            expires_at: self
                .expires_at
                .as_deref()
                .map(|t| time("expiresAt", t))
                .transpose()?,
            expired_url: self
                .expired_url
                .as_deref()
                .map(|u| url("expiredUrl", u))
                .transpose()?,
            max_visits: self.max_visits,
            redirect_status: self.redirect_status,
            forward_query: self.forward_query,
            public_stats: self.public_stats,
            password: self.password_hash,
            rules,
            imported_click_count: self.imported_click_count,
        })
    }
}

/// A URL the API would take; `name` says which in an error.
fn url(name: &str, raw: &str) -> Result<TargetUrl, String> {
    TargetUrl::parse(raw).map_err(|e| format!("{name} {raw:?}: {e}"))
}

/// A link's rules: at most [`MAX_RULES`], each naming a device or an upper-case two-letter
/// country, and a URL.
fn rules(rules: &[RuleLine]) -> Result<Vec<RedirectRule>, String> {
    if rules.len() > MAX_RULES {
        return Err(format!("a link may have at most {MAX_RULES} rules"));
    }
    rules
        .iter()
        .map(|r| {
            let country_ok = r
                .country
                .as_deref()
                .is_none_or(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()));
            if !country_ok || (r.device.is_none() && r.country.is_none()) {
                return Err(format!(
                    "a rule needs a device or an upper-case two-letter country: {:?}",
                    r.country
                ));
            }
            Ok(RedirectRule {
                device: r.device,
                country: r.country.clone(),
                url: url("a rule's url", &r.url)?,
            })
        })
        .collect()
}

impl ClickLine {
    pub(super) fn of(code: &str, e: ClickEvent) -> Self {
        Self {
            code: code.to_owned(),
            seq: e.seq,
            at: format_ms(e.at),
            ip: e.ip,
            user_agent: e.user_agent,
            referer: e.referer,
            country: e.country,
            browser: e.browser,
            os: e.os,
            device: e.device,
            bot: e.bot,
        }
    }

    pub(super) fn event(self) -> Result<ClickEvent, String> {
        if self.seq == 0 {
            return Err("clicks are numbered from 1".into());
        }
        Ok(ClickEvent {
            seq: self.seq,
            at: time("at", &self.at)?,
            ip: self.ip,
            user_agent: self.user_agent,
            referer: self.referer,
            country: self.country,
            browser: self.browser,
            os: self.os,
            device: self.device,
            bot: self.bot,
        })
    }
}

/// An RFC 3339 time as epoch milliseconds.
fn time(name: &str, raw: &str) -> Result<i64, String> {
    raw.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|_| format!("{name} must be an RFC 3339 time, not {raw:?}"))
}
