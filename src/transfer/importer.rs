//! The state of one import: lines taken one at a time into batches, each code's clicks checked
//! to be numbered in order, and a snapshot stored only together with the clicks it covers.

use std::collections::{HashMap, HashSet};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};

use super::{ImportError, Imported, Snapshot, lines::ClickLine};
use crate::{
    analytics::aggregates,
    domain::{ClickEvent, KeyId, Link, ShortCode, now_ms},
    store::{ImportBatch, Store, records::DomainRecord},
};

/// Items committed per batch of an import.
const BATCH: usize = 10_000;

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
pub(super) struct Importer<'a> {
    store: &'a Store,
    owner: Option<KeyId>,
    /// Whether snapshots count visitors with this store's secret (it adopted the export's).
    pub(super) same_key: bool,
    pending: ImportBatch,
    /// (links, clicks, snapshots) in `pending`.
    pending_counts: (u64, u64, u64),
    pub(super) done: Imported,
    codes: HashMap<ShortCode, Seen>,
    /// The code of the last click or snapshot line: clicks come grouped by code.
    current: Option<ShortCode>,
    pub(super) now: i64,
    /// The domains links may live on: the store's and those imported (read at first need).
    domains: Option<HashSet<String>>,
}

impl<'a> Importer<'a> {
    pub(super) fn new(store: &'a Store, owner: Option<KeyId>) -> Self {
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
            domains: None,
        }
    }

    /// The domains links may live on: the store's (read once) and those imported.
    fn domains(&mut self) -> Result<&mut HashSet<String>, String> {
        if self.domains.is_none() {
            let stored = self.store.domains().map_err(|e| e.to_string())?;
            self.domains = Some(stored.into_iter().map(|d| d.name).collect());
        }
        Ok(self.domains.get_or_insert_default())
    }

    /// Adds a domain the store does not have (one it has is kept as it is).
    pub(super) fn domain(&mut self, record: DomainRecord) -> Result<(), String> {
        if self.domains()?.contains(&record.name) {
            return Ok(());
        }
        self.store.put_domain(&record).map_err(|e| e.to_string())?;
        self.domains()?.insert(record.name);
        self.done.domains += 1;
        Ok(())
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
    pub(super) fn link(&mut self, mut link: Link) -> Result<(), String> {
        self.leave_current()?;
        if self.codes.contains_key(&link.code) {
            return Err(format!("a second link line for {}", link.code));
        }
        if let Some(domain) = link.code.domain()
            && !self.domains()?.contains(domain)
        {
            return Err(format!(
                "link {} is on the domain {domain}, which no domain line before it names \
                 (add the domain to this store first, or a domain line to the export)",
                link.code
            ));
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
        let code = ShortCode::from_key(raw).map_err(|e| format!("code {raw:?}: {e}"))?;
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

    pub(super) fn click(&mut self, line: ClickLine) -> Result<(), String> {
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

    pub(super) fn aggregates(
        &mut self,
        raw: &str,
        covers: u64,
        snapshot: &str,
    ) -> Result<(), String> {
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
    pub(super) fn finish(&mut self) -> Result<(), String> {
        self.leave_current()?;
        self.flush()?;
        self.store.sync().map_err(|e| e.to_string())
    }

    /// Commits what came before a failed line and says which line failed.
    pub(super) fn fail(&mut self, line: u64, message: String) -> ImportError {
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
