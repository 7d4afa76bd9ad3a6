//! `linkpulse export` and `linkpulse import`: a store as JSON lines, and back; also links from
//! the CSV `url,code[,title,tags]` that other shorteners export. Both run on a stopped server's
//! data directory (fjall admits one process) and stream: memory follows the number of links,
//! never the number of clicks.
//!
//! The export, one JSON object a line, in this order:
//!
//! 1. `{"type":"linkpulse-export","version":1,"exportedAt","visitorKey"}`;
//! 2. `{"type":"owner","id","name","scope","createdAt"}` per API key (never the key's hash:
//!    keys are not exported);
//! 3. `{"type":"link",...}` per link, with the fields the API shows plus `owner`, `rev` and
//!    `passwordHash`;
//! 4. per clicked code: its `{"type":"click",...}` lines by number, and its
//!    `{"type":"aggregates","code","covers","snapshot"}` line (base64 of the stored snapshot)
//!    right after the click it covers last, so that an import can store a snapshot together
//!    with the clicks it needs (a link whose old clicks `--click-retention-days` deleted has
//!    its remaining clicks start above 1: only its snapshot carries the ones before).

use std::{
    collections::HashMap,
    io::{BufRead, Read, Write},
    path::{Path, PathBuf},
};

use anyhow::Context;
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use serde::{Deserialize, Serialize};

use crate::{
    analytics::aggregates,
    domain::{
        ClickEvent, DeviceClass, KeyId, Link, MAX_RULES, RedirectRule, RuleDevice, ShortCode,
        TargetUrl, check_tags, check_title, format_ms, now_ms,
    },
    keys::Scope,
    store::{ImportBatch, Store},
};

/// The format version an export declares and an import accepts.
pub const FORMAT_VERSION: u32 = 1;
/// Items committed per batch of an import.
const BATCH: usize = 10_000;
/// How many times a generated code is drawn again when it is taken (as the API does).
const GENERATE_ATTEMPTS: usize = 8;

/// What `linkpulse import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportFormat {
    /// A `linkpulse export`.
    Jsonl,
    /// `url,code[,title,tags]`, header optional.
    Csv,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
enum Line {
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
    Link(Box<LinkLine>),
    Click(ClickLine),
    Aggregates {
        code: String,
        covers: u64,
        snapshot: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LinkLine {
    code: String,
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
}

#[derive(Serialize, Deserialize)]
struct RuleLine {
    device: Option<RuleDevice>,
    country: Option<String>,
    url: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClickLine {
    code: String,
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
    fn of(link: &Link) -> Self {
        Self {
            code: link.code.to_string(),
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
        }
    }

    /// The link, checked as the API checks what it is sent.
    fn into_link(self) -> Result<Link, String> {
        let url = |name: &str, raw: &str| {
            TargetUrl::parse(raw).map_err(|e| format!("{name} {raw:?}: {e}"))
        };
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
        if self.rules.len() > MAX_RULES {
            return Err(format!("a link may have at most {MAX_RULES} rules"));
        }
        let rules = self
            .rules
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
            .collect::<Result<_, String>>()?;
        let created_at = time("createdAt", &self.created_at)?;
        Ok(Link {
            code: ShortCode::parse(&self.code).map_err(|e| format!("code {:?}: {e}", self.code))?,
            target: url("url", &self.url)?,
            owner: self.owner,
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
        })
    }
}

impl ClickLine {
    fn of(code: &str, e: ClickEvent) -> Self {
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

    fn event(self) -> Result<ClickEvent, String> {
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

/// A stored aggregates snapshot: the last click it covers and its bytes.
type Snapshot = (u64, Vec<u8>);

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exported {
    pub owners: u64,
    pub links: u64,
    pub clicks: u64,
    pub aggregates: u64,
}

fn put(out: &mut impl Write, line: &Line) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    out.write_all(b"\n")?;
    Ok(())
}

fn put_snapshot(out: &mut impl Write, code: &str, covers: u64, bytes: &[u8]) -> anyhow::Result<()> {
    put(
        out,
        &Line::Aggregates {
            code: code.to_owned(),
            covers,
            snapshot: BASE64.encode(bytes),
        },
    )
}

/// Writes the store as JSON lines to `out` (see the module's documentation), streaming.
pub fn export(store: &Store, out: &mut impl Write) -> anyhow::Result<Exported> {
    let mut done = Exported::default();
    put(
        out,
        &Line::LinkpulseExport {
            version: FORMAT_VERSION,
            exported_at: format_ms(now_ms()),
            visitor_key: Some(hex::encode(store.visitor_key_bytes())),
        },
    )?;
    let mut keys = store.api_keys()?;
    keys.sort_by(|a, b| (a.1.created_at, &a.1.id).cmp(&(b.1.created_at, &b.1.id)));
    for (_, key) in keys {
        put(
            out,
            &Line::Owner {
                scope: key.scope(),
                id: key.id,
                name: key.name,
                created_at: format_ms(key.created_at),
            },
        )?;
        done.owners += 1;
    }
    store.each_link(|link| {
        put(out, &Line::Link(Box::new(LinkLine::of(&link))))?;
        done.links += 1;
        anyhow::Ok(())
    })?;
    // The code being written and its snapshot, until it is written.
    let mut current: Option<(String, Option<Snapshot>)> = None;
    store.each_click(|code, event| {
        if current.as_ref().is_none_or(|(c, _)| c != code) {
            current = Some((code.to_owned(), store.snapshot_bytes(code)?));
        }
        let seq = event.seq;
        let mut due = |when: &dyn Fn(u64) -> bool| {
            current
                .as_mut()
                .and_then(|(_, snapshot)| snapshot.take_if(|(covers, _)| when(*covers)))
        };
        // One covering only clicks that expired goes before the first that is left.
        if let Some((covers, bytes)) = due(&|covers| covers < seq) {
            put_snapshot(out, code, covers, &bytes)?;
            done.aggregates += 1;
        }
        put(out, &Line::Click(ClickLine::of(code, event)))?;
        done.clicks += 1;
        if let Some((covers, bytes)) = due(&|covers| covers == seq) {
            put_snapshot(out, code, covers, &bytes)?;
            done.aggregates += 1;
        }
        anyhow::Ok(())
    })?;
    out.flush()?;
    Ok(done)
}

/// What an import did (so far, when it stopped at an error).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Imported {
    pub links: u64,
    pub clicks: u64,
    /// Links whose code the store already had (or holds after a deletion).
    pub skipped: u64,
    /// Clicks of skipped links.
    pub skipped_clicks: u64,
    /// Snapshots stored; imported links with clicks and none get theirs at the next start.
    pub aggregates: u64,
}

impl std::fmt::Display for Imported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "imported {} links, {} clicks, skipped {}",
            self.links, self.clicks, self.skipped
        )
    }
}

/// An import that stopped at a line it could not take. What came before it is imported.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message} (stopped there; before it: {done})")]
pub struct ImportError {
    pub line: u64,
    pub message: String,
    pub done: Imported,
}

/// A code the import has seen a link line for.
enum Seen {
    /// The store had the code: its lines are skipped.
    Skipped,
    Importing(Importing),
}

#[derive(Default)]
struct Importing {
    /// The number of the last click taken (committed, pending or held).
    count: u64,
    /// The number of its first click (0: none yet).
    first: u64,
    /// A snapshot waiting for the clicks it covers.
    snapshot: Option<Snapshot>,
    /// Clicks that start above 1 (their predecessors expired), held until the snapshot that
    /// covers those predecessors comes: stored without it, they would leave a gap.
    held: Vec<ClickEvent>,
}

/// Reads lines one at a time into batches; the state of one import.
struct Importer<'a> {
    store: &'a Store,
    owner: Option<KeyId>,
    /// Whether snapshots count visitors with this store's secret (it adopted the export's).
    same_key: bool,
    pending: ImportBatch,
    /// (links, clicks, snapshots) in `pending`.
    pending_counts: (u64, u64, u64),
    done: Imported,
    codes: HashMap<ShortCode, Seen>,
    /// The code of the last click or snapshot line: clicks come grouped by code.
    current: Option<ShortCode>,
    now: i64,
}

impl<'a> Importer<'a> {
    fn new(store: &'a Store, owner: Option<KeyId>) -> Self {
        Self {
            store,
            owner,
            same_key: false,
            pending: ImportBatch::default(),
            pending_counts: (0, 0, 0),
            done: Imported::default(),
            codes: HashMap::new(),
            current: None,
            now: now_ms(),
        }
    }

    /// Commits what is pending.
    fn flush(&mut self) -> Result<(), String> {
        let part = std::mem::take(&mut self.pending);
        self.store.import(part).map_err(|e| e.to_string())?;
        let (links, clicks, aggregates) = std::mem::take(&mut self.pending_counts);
        self.done.links += links;
        self.done.clicks += clicks;
        self.done.aggregates += aggregates;
        Ok(())
    }

    fn flush_if_full(&mut self) -> Result<(), String> {
        if self.pending.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Stores a new link unless its code is taken.
    fn link(&mut self, mut link: Link) -> Result<(), String> {
        self.leave_current()?;
        if self.codes.contains_key(&link.code) {
            return Err(format!("a second link line for {}", link.code));
        }
        if let Some(owner) = &self.owner {
            link.owner.clone_from(owner);
        }
        let free = self
            .store
            .code_free(link.code.as_str(), self.now)
            .map_err(|e| e.to_string())?;
        if free {
            self.codes
                .insert(link.code.clone(), Seen::Importing(Importing::default()));
            self.pending.link(link);
            self.pending_counts.0 += 1;
        } else {
            self.codes.insert(link.code, Seen::Skipped);
            self.done.skipped += 1;
        }
        self.flush_if_full()
    }

    /// The code's state, after the lines of the code before it are settled.
    fn enter(&mut self, raw: &str) -> Result<Option<ShortCode>, String> {
        let code = ShortCode::parse(raw).map_err(|e| format!("code {raw:?}: {e}"))?;
        if self.current.as_ref() != Some(&code) {
            self.leave_current()?;
        }
        match self.codes.get(&code) {
            None => Err(format!("{code} has no link line before this line")),
            Some(Seen::Skipped) => Ok(None),
            Some(Seen::Importing(_)) => {
                self.current = Some(code.clone());
                Ok(Some(code))
            }
        }
    }

    fn state(&mut self, code: &ShortCode) -> &mut Importing {
        Self::state_in(&mut self.codes, code)
    }

    fn state_in<'c>(
        codes: &'c mut HashMap<ShortCode, Seen>,
        code: &ShortCode,
    ) -> &'c mut Importing {
        match codes.get_mut(code) {
            Some(Seen::Importing(state)) => state,
            _ => unreachable!("entered codes are being imported"),
        }
    }

    fn click(&mut self, line: ClickLine) -> Result<(), String> {
        let Some(code) = self.enter(&line.code)? else {
            self.done.skipped_clicks += 1;
            return Ok(());
        };
        let event = line.event()?;
        let state = self.state(&code);
        let seq = event.seq;
        if state.count > 0 && seq != state.count + 1 {
            return Err(format!(
                "click number {seq} of {code} where number {} was due",
                state.count + 1
            ));
        }
        if state.first == 0 {
            state.first = seq;
        }
        state.count = seq;
        if state.first > 1 && !state.held.is_empty() || state.first == seq && seq > 1 {
            state.held.push(event);
        } else {
            self.pending.click(code.as_str(), event);
            self.pending_counts.1 += 1;
        }
        self.settle(&code);
        self.flush_if_full()
    }

    fn aggregates(&mut self, raw: &str, covers: u64, snapshot: &str) -> Result<(), String> {
        let Some(code) = self.enter(raw)? else {
            return Ok(());
        };
        let bytes = BASE64
            .decode(snapshot)
            .map_err(|e| format!("snapshot is not base64: {e}"))?;
        let decoded = aggregates::decode_snapshot(&bytes)
            .map_err(|e| format!("snapshot cannot be read: {e}"))?;
        if covers == 0 || decoded.covers() != covers {
            return Err(format!(
                "the snapshot covers clicks 1..={}, the line says {covers}",
                decoded.covers()
            ));
        }
        let same_key = self.same_key;
        let state = self.state(&code);
        if state.snapshot.is_some() {
            return Err(format!("a second aggregates line for {code}"));
        }
        // With another visitor secret, a snapshot is kept only where the clicks cannot rebuild
        // it (its first clicks expired); else the next start builds it with this store's.
        if same_key || state.first != 1 {
            state.snapshot = Some((covers, bytes));
        }
        self.settle(&code);
        self.flush_if_full()
    }

    /// Moves a waiting snapshot, and the clicks held for it, into the batch once the clicks it
    /// covers are all there.
    fn settle(&mut self, code: &ShortCode) {
        let same_key = self.same_key;
        let state = self.state(code);
        let Some((covers, _)) = &state.snapshot else {
            return;
        };
        let covers = *covers;
        if !same_key && state.first == 1 {
            // The clicks rebuild it with this store's visitor secret.
            state.snapshot = None;
            return;
        }
        let ready = state.count >= covers && state.first >= 1 && state.first <= covers + 1;
        if !ready {
            return;
        }
        let held = std::mem::take(&mut state.held);
        let snapshot = state.snapshot.take();
        let n = held.len() as u64;
        for event in held {
            self.pending.click(code.as_str(), event);
        }
        if let Some((covers, bytes)) = snapshot {
            self.pending.aggregates(code.as_str(), covers, bytes);
        }
        self.pending_counts.1 += n;
        self.pending_counts.2 += 1;
    }

    /// Settles the code whose lines just ended: a snapshot still waiting is left out (the next
    /// start builds it from the clicks); clicks still held cannot be stored.
    fn leave_current(&mut self) -> Result<(), String> {
        let Some(code) = self.current.take() else {
            return Ok(());
        };
        let state = self.state(&code);
        state.snapshot = None;
        if state.held.is_empty() {
            return Ok(());
        }
        let first = state.first;
        state.held.clear();
        Err(format!(
            "the clicks of {code} start at number {first} and no aggregates line covers the \
             {} before it (they expired in the exported store); its clicks are not imported",
            first - 1
        ))
    }

    /// Ends the import: the last code settled, everything committed and synced.
    fn finish(&mut self) -> Result<(), String> {
        self.leave_current()?;
        self.flush()?;
        self.store.sync().map_err(|e| e.to_string())
    }

    /// Commits what came before a failed line and says which line failed.
    fn fail(&mut self, line: u64, message: String) -> ImportError {
        let mut message = message;
        if let Err(e) = self
            .flush()
            .and_then(|()| self.store.sync().map_err(|e| e.to_string()))
        {
            message = format!("{message}; then committing the lines before it failed: {e}");
        }
        ImportError {
            line,
            message,
            done: self.done,
        }
    }
}

/// Imports a `linkpulse export` from `input` into `store`. Links whose code the store has are
/// skipped with their clicks. With `owner`, every imported link is given to that key; else
/// links keep the owner ids they had. Stops at the first line it cannot take; everything
/// before that line is imported and whole.
pub fn import_jsonl(
    store: &mut Store,
    input: impl BufRead,
    owner: Option<KeyId>,
) -> Result<Imported, ImportError> {
    let stop = |line: u64, message: String| ImportError {
        line,
        message,
        done: Imported::default(),
    };
    let mut lines = input.lines();
    let header = match lines.next() {
        None => return Err(stop(1, "empty input: not a linkpulse export".into())),
        Some(Err(e)) => return Err(stop(1, format!("cannot read it: {e}"))),
        Some(Ok(raw)) => raw,
    };
    let visitor_key = match serde_json::from_str::<Line>(&header) {
        Ok(Line::LinkpulseExport {
            version,
            visitor_key,
            ..
        }) => {
            if version != FORMAT_VERSION {
                return Err(stop(
                    1,
                    format!(
                        "export format version {version}; this linkpulse reads version \
                         {FORMAT_VERSION}"
                    ),
                ));
            }
            visitor_key
        }
        _ => {
            return Err(stop(
                1,
                "not a linkpulse export: the first line must be \
                 {\"type\":\"linkpulse-export\",\"version\":1,..}"
                    .into(),
            ));
        }
    };
    // The export's visitor secret, taken if this store has never counted anything: then its
    // snapshots and the clicks after them count a returning visitor once.
    let same_key = match visitor_key.map(|k| hex::decode(k).ok()?.try_into().ok()) {
        Some(Some(key)) => store
            .adopt_visitor_key(key)
            .map_err(|e| stop(1, e.to_string()))?,
        Some(None) => return Err(stop(1, "visitorKey must be 64 hex digits".into())),
        None => false,
    };
    let mut importer = Importer::new(store, owner);
    importer.same_key = same_key;
    let mut number = 1;
    for raw in lines {
        number += 1;
        let result = match raw {
            Err(e) => Err(format!("cannot read it: {e}")),
            Ok(raw) if raw.trim().is_empty() => Ok(()),
            Ok(raw) => match serde_json::from_str::<Line>(&raw) {
                Err(e) => Err(format!("malformed: {e}")),
                Ok(Line::LinkpulseExport { .. }) => Err("a second header line".into()),
                Ok(Line::Owner { .. }) => Ok(()),
                Ok(Line::Link(link)) => link.into_link().and_then(|l| importer.link(l)),
                Ok(Line::Click(click)) => importer.click(click),
                Ok(Line::Aggregates {
                    code,
                    covers,
                    snapshot,
                }) => importer.aggregates(&code, covers, &snapshot),
            },
        };
        if let Err(message) = result {
            return Err(importer.fail(number, message));
        }
    }
    match importer.finish() {
        Ok(()) => Ok(importer.done),
        Err(message) => Err(importer.fail(number, message)),
    }
}

/// Imports links from a CSV of `url,code[,title,tags]` (a first row whose first field is
/// `url` is a header), all owned by `owner`. An empty code gets a generated one; tags are
/// separated by `|` or `,` (a field with commas is quoted). Links whose code the store has are
/// skipped. Stops at the first row it cannot take; the rows before it are imported.
pub fn import_csv(store: &Store, input: impl Read, owner: KeyId) -> Result<Imported, ImportError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(input);
    let mut importer = Importer::new(store, Some(owner.clone()));
    let mut record = csv::StringRecord::new();
    let mut number = 0;
    loop {
        let line = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let at = e.position().map_or(line, csv::Position::line);
                return Err(importer.fail(at, format!("malformed CSV: {e}")));
            }
        }
        number = record.position().map_or(line, csv::Position::line);
        let header = number == 1 && record.get(0).is_some_and(|f| f.eq_ignore_ascii_case("url"));
        if header || record.iter().all(str::is_empty) {
            continue;
        }
        let result =
            csv_link(store, &record, &owner, importer.now).and_then(|link| importer.link(link));
        if let Err(message) = result {
            return Err(importer.fail(number, message));
        }
    }
    match importer.finish() {
        Ok(()) => Ok(importer.done),
        Err(message) => Err(importer.fail(number, message)),
    }
}

/// One CSV row as a new link.
fn csv_link(store: &Store, row: &csv::StringRecord, owner: &str, now: i64) -> Result<Link, String> {
    if !(2..=4).contains(&row.len()) {
        return Err(format!(
            "{} fields; expected url,code[,title,tags]",
            row.len()
        ));
    }
    let field = |i: usize| row.get(i).unwrap_or_default();
    let target = TargetUrl::parse(field(0)).map_err(|e| format!("url {:?}: {e}", field(0)))?;
    let code = match field(1) {
        "" => generated_code(store, now)?,
        raw => ShortCode::parse(raw).map_err(|e| format!("code {raw:?}: {e}"))?,
    };
    let mut link = Link::new(code, target, owner.to_owned(), now);
    link.title = check_title(field(2))?;
    link.tags = check_tags(field(3).split(['|', ',']))?;
    Ok(link)
}

/// A generated code that is free in the store.
fn generated_code(store: &Store, now: i64) -> Result<ShortCode, String> {
    for _ in 0..GENERATE_ATTEMPTS {
        let code = ShortCode::generate();
        if store
            .code_free(code.as_str(), now)
            .map_err(|e| e.to_string())?
        {
            return Ok(code);
        }
    }
    Err("no free code could be generated".into())
}

/// `linkpulse export`: writes the store in `data_dir` to `output` (`-`: standard output;
/// a file is written beside and renamed into place when complete). Returns the summary for
/// standard error. Blocking.
pub fn export_command(data_dir: &Path, output: &Path) -> anyhow::Result<String> {
    anyhow::ensure!(
        data_dir.join("version").exists(),
        "there is no linkpulse store in {}",
        data_dir.display()
    );
    crate::store::with_stopped_store(data_dir, Store::open, |store| {
        let done = if output == Path::new("-") {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            export(store, &mut out)?
        } else {
            let partial = partial_path(output);
            let file = std::fs::File::create(&partial)
                .with_context(|| format!("cannot create {}", partial.display()))?;
            let mut out = std::io::BufWriter::new(file);
            let done = export(store, &mut out)?;
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&partial, output)
                .with_context(|| format!("cannot write {}", output.display()))?;
            done
        };
        Ok(format!(
            "exported {} links, {} clicks, {} aggregates, {} owners (key secrets are not \
             exported)\n",
            done.links, done.clicks, done.aggregates, done.owners
        ))
    })
}

fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    output.with_file_name(name)
}

/// `linkpulse import`: reads `input` (`-`: standard input) into the store in `data_dir`
/// (made if missing). The format is `format`, else CSV for a name ending in `.csv`, else
/// JSON lines. Returns the summary for standard output. Blocking.
pub fn import_command(
    data_dir: &Path,
    input: &Path,
    format: Option<ImportFormat>,
    owner: Option<String>,
) -> anyhow::Result<String> {
    let is_csv = input
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let format = format.unwrap_or(if is_csv {
        ImportFormat::Csv
    } else {
        ImportFormat::Jsonl
    });
    let reader: Box<dyn BufRead> = if input == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(input)
            .with_context(|| format!("cannot read {}", input.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let mut store = Store::open(data_dir)
        .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
    let keys = store.api_keys().context("cannot read the API keys")?;
    if let Some(id) = &owner {
        anyhow::ensure!(
            keys.iter().any(|(_, k)| &k.id == id),
            "--owner {id}: no API key in {} has this id (see linkpulse keys list)",
            data_dir.display()
        );
    }
    let result = match format {
        ImportFormat::Jsonl => import_jsonl(&mut store, reader, owner),
        ImportFormat::Csv => {
            let owner = match owner {
                Some(id) => id,
                None => keys
                    .iter()
                    .filter(|(_, k)| k.scope() == Scope::Admin)
                    .min_by_key(|(_, k)| (k.created_at, k.id.clone()))
                    .map(|(_, k)| k.id.clone())
                    .with_context(|| {
                        format!(
                            "a CSV import needs an owner for its links: pass --owner ID, or \
                             make an admin key first (linkpulse keys create --admin \
                             --data-dir {})",
                            data_dir.display()
                        )
                    })?,
            };
            import_csv(&store, reader, owner)
        }
    };
    // Whatever was committed is whole: the next start may skip its checks.
    store
        .close_clean(data_dir)
        .context("cannot close the store cleanly")?;
    let done = result?;
    Ok(format!("{done}\n"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use serde_json::Value;

    use crate::analytics::{AggregateSettings, Aggregates};

    fn event(seq: u64) -> ClickEvent {
        ClickEvent {
            seq,
            at: 1_700_000_000_000 + seq as i64,
            ip: Some("192.0.2.0".into()),
            user_agent: format!("agent {seq}"),
            referer: None,
            country: None,
            browser: "unknown".into(),
            os: "unknown".into(),
            device: DeviceClass::Other,
            bot: false,
        }
    }

    fn json(line: &Line) -> String {
        serde_json::to_string(line).unwrap() + "\n"
    }

    /// An export of one link `old` whose clicks 1..=4 expired: a snapshot covering them, then
    /// clicks `from..=7`.
    fn expired_export(store: &Store, snapshot: bool, from: u64) -> String {
        let link = Link::new(
            ShortCode::parse("old").unwrap(),
            TargetUrl::parse("https://example.com/").unwrap(),
            "owner".into(),
            1_700_000_000_000,
        );
        let mut text = json(&Line::LinkpulseExport {
            version: FORMAT_VERSION,
            exported_at: format_ms(now_ms()),
            visitor_key: None,
        });
        text += &json(&Line::Link(Box::new(LinkLine::of(&link))));
        if snapshot {
            let mut agg = Aggregates::default();
            for seq in 1..=4 {
                let key = store.visitor_key();
                agg.fold(&event(seq), &key, &AggregateSettings::default())
                    .unwrap();
            }
            text += &json(&Line::Aggregates {
                code: "old".into(),
                covers: 4,
                snapshot: BASE64.encode(aggregates::encode_snapshot(&agg).unwrap()),
            });
        }
        for seq in from..=7 {
            text += &json(&Line::Click(ClickLine::of("old", event(seq))));
        }
        text
    }

    #[test]
    fn clicks_after_expired_ones_are_stored_with_the_snapshot_that_covers_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let text = expired_export(&store, true, 5);
        let done = import_jsonl(&mut store, text.as_bytes(), None).unwrap();
        assert_eq!((done.links, done.clicks, done.aggregates), (1, 3, 1));
        assert_eq!(store.counter("old").unwrap().count, 7);
        assert_eq!(store.covers("old").unwrap(), 4);
        let seen = store.verify().expect("numbered as retention leaves them");
        assert_eq!((seen.links, seen.clicks), (1, 3));
        // And exported again the same way: the snapshot before the first click left.
        let mut out = Vec::new();
        export(&store, &mut out).unwrap();
        let lines: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let kinds: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "linkpulse-export",
                "link",
                "aggregates",
                "click",
                "click",
                "click"
            ]
        );
    }

    #[test]
    fn clicks_starting_above_one_without_a_snapshot_stop_the_import_and_leave_the_link_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let text = expired_export(&store, false, 5);
        let refused = import_jsonl(&mut store, text.as_bytes(), None).unwrap_err();
        assert_eq!(refused.line, 5, "{refused}");
        assert!(
            refused.to_string().contains("start at number 5"),
            "{refused}"
        );
        assert_eq!((refused.done.links, refused.done.clicks), (1, 0));
        assert_eq!(store.counter("old").unwrap().count, 0);
        store.verify().expect("whole");
    }

    #[test]
    fn a_gap_in_the_clicks_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let mut text = expired_export(&store, false, 1);
        text = text.replace("\"seq\":3,", "\"seq\":9,");
        let refused = import_jsonl(&mut store, text.as_bytes(), None).unwrap_err();
        assert_eq!(refused.line, 5, "{refused}");
        assert!(refused.message.contains("number 9"), "{refused}");
        assert_eq!(refused.done.clicks, 2, "clicks 1 and 2 are imported");
        assert_eq!(store.counter("old").unwrap().count, 2);
        store.verify().expect("whole");
    }
}
