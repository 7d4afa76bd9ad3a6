//! `linkpulse import`: an export read back into a store (JSON lines), or links from a CSV
//! (see `csv`), and the summary of what was imported.

use std::{
    io::{BufRead, Read},
    path::Path,
};

use anyhow::Context;

use super::{FORMAT_VERSION, ImportFormat, csv::import_csv, importer::Importer, lines::Line};
use crate::{
    domain::KeyId,
    keys::Scope,
    store::{KeyRecord, Store},
};

/// What an import did (so far, when it stopped at an error).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Imported {
    /// Domains added (one the store had is kept as it was).
    pub domains: u64,
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
        )?;
        if self.domains > 0 {
            write!(f, ", added {} domains", self.domains)?;
        }
        Ok(())
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

/// Imports a `linkpulse export` from `input` into `store`. Links whose code the store has are
/// skipped with their clicks. With `owner`, every imported link is given to that key; else
/// links keep the owner ids they had. Stops at the first line it cannot take; everything
/// before that line is imported and whole.
pub fn import_jsonl(
    store: &mut Store,
    input: impl BufRead,
    owner: Option<KeyId>,
) -> Result<Imported, ImportError> {
    let stop = |message: String| ImportError {
        line: 1,
        message,
        done: Imported::default(),
    };
    let mut lines = input.lines();
    let visitor_key = read_header(lines.next()).map_err(stop)?;
    let same_key = adopt_visitor_key(store, visitor_key).map_err(stop)?;
    let mut importer = Importer::new(store, owner);
    importer.same_key = same_key;
    let mut number = 1;
    for raw in lines {
        number += 1;
        if let Err(message) = take_line(&mut importer, raw) {
            return Err(importer.fail(number, message));
        }
    }
    match importer.finish() {
        Ok(()) => Ok(importer.done),
        Err(message) => Err(importer.fail(number, message)),
    }
}

/// The export's visitor secret (hex), from its first line, which must be a header of the
/// version this linkpulse reads.
fn read_header(first: Option<std::io::Result<String>>) -> Result<Option<String>, String> {
    let header = match first {
        None => return Err("empty input: not a linkpulse export".into()),
        Some(Err(e)) => return Err(format!("cannot read it: {e}")),
        Some(Ok(raw)) => raw,
    };
    match serde_json::from_str::<Line>(&header) {
        Ok(Line::LinkpulseExport {
            version,
            visitor_key,
            ..
        }) => {
            if version != FORMAT_VERSION {
                return Err(format!(
                    "export format version {version}; this linkpulse reads version \
                     {FORMAT_VERSION}"
                ));
            }
            Ok(visitor_key)
        }
        _ => Err("not a linkpulse export: the first line must be \
                 {\"type\":\"linkpulse-export\",\"version\":1,..}"
            .into()),
    }
}

/// Whether snapshots count visitors with this store's secret: the export's visitor secret,
/// taken if this store has never counted anything; then its snapshots and the clicks after
/// them count a returning visitor once.
fn adopt_visitor_key(store: &mut Store, visitor_key: Option<String>) -> Result<bool, String> {
    match visitor_key.map(|k| hex::decode(k).ok()?.try_into().ok()) {
        Some(Some(key)) => store.adopt_visitor_key(key).map_err(|e| e.to_string()),
        Some(None) => Err("visitorKey must be 64 hex digits".into()),
        None => Ok(false),
    }
}

/// Takes one line after the header (blank lines and owners are passed over).
fn take_line(importer: &mut Importer<'_>, raw: std::io::Result<String>) -> Result<(), String> {
    match raw {
        Err(e) => Err(format!("cannot read it: {e}")),
        Ok(raw) if raw.trim().is_empty() => Ok(()),
        Ok(raw) => match serde_json::from_str::<Line>(&raw) {
            Err(e) => Err(format!("malformed: {e}")),
            Ok(Line::LinkpulseExport { .. }) => Err("a second header line".into()),
            Ok(Line::Owner { .. }) => Ok(()),
            Ok(Line::Domain(domain)) => domain.into_record().and_then(|d| importer.domain(d)),
            Ok(Line::Link(link)) => link.into_link().and_then(|l| importer.link(l)),
            Ok(Line::Click(click)) => importer.click(click),
            Ok(Line::Aggregates {
                code,
                covers,
                snapshot,
            }) => importer.aggregates(&code, covers, &snapshot),
        },
    }
}

/// `linkpulse import`: reads `input` (`-`: standard input) into the store in `data_dir`
/// (made if missing). The format is `format`, else CSV for a name ending in `.csv`, else
/// JSON lines. Another shortener's export (`--format bitly|shlink|yourls|kutt`) may be a
/// `dry_run`, which reports what would change and changes nothing. Returns the summary for
/// standard output. Blocking.
pub fn import_command(
    data_dir: &Path,
    input: &Path,
    format: Option<ImportFormat>,
    owner: Option<String>,
    dry_run: bool,
) -> anyhow::Result<String> {
    let is_csv = input
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let format = format.unwrap_or(if is_csv {
        ImportFormat::Csv
    } else {
        ImportFormat::Jsonl
    });
    anyhow::ensure!(
        !dry_run || format.peer().is_some(),
        "--dry-run is for the exports of other shorteners (--format bitly, shlink, yourls or \
         kutt)"
    );
    let mut reader: Box<dyn BufRead> = if input == Path::new("-") {
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
    let owner_or_admin = |owner: Option<String>| match owner {
        Some(id) => Ok(id),
        None => oldest_admin(&keys).with_context(|| {
            format!(
                "a CSV import needs an owner for its links: pass --owner ID, or \
                 make an admin key first (linkpulse keys create --admin \
                 --data-dir {})",
                data_dir.display()
            )
        }),
    };
    if let Some(peer) = format.peer() {
        let owner = owner_or_admin(owner)?;
        // The owner's workspace (a key from before workspaces: the first).
        let workspace = keys
            .iter()
            .find(|(_, k)| k.id == owner)
            .and_then(|(_, k)| k.workspace.clone());
        let workspace = crate::accounts::workspace_of(workspace.as_deref()).to_owned();
        let mut bytes = Vec::new();
        reader
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", input.display()))?;
        let result = super::peers::import_peer(&store, peer, &bytes, owner, &workspace, dry_run);
        store
            .close_clean(data_dir)
            .context("cannot close the store cleanly")?;
        let report = result
            .map_err(|e| anyhow::anyhow!("{}: {e} (nothing was imported)", input.display()))?;
        return Ok(report.text());
    }
    let result = match format {
        ImportFormat::Jsonl => import_jsonl(&mut store, reader, owner),
        _ => import_csv(&store, reader, owner_or_admin(owner)?),
    };
    // Whatever was committed is whole: the next start may skip its checks.
    store
        .close_clean(data_dir)
        .context("cannot close the store cleanly")?;
    let done = result?;
    Ok(format!("{done}\n"))
}

/// The id of the oldest admin key: the owner of a CSV import's links without `--owner`.
fn oldest_admin(keys: &[([u8; 32], KeyRecord)]) -> Option<KeyId> {
    keys.iter()
        .filter(|(_, k)| k.scope() == Scope::Admin)
        .min_by_key(|(_, k)| (k.created_at, k.id.clone()))
        .map(|(_, k)| k.id.clone())
}
