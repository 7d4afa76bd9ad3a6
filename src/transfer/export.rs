//! `linkpulse export`: the store as JSON lines, in the order the module's documentation gives,
//! written to a file beside the target and renamed into place when complete.

use std::{
    collections::HashSet,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::Context;
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};

use super::{
    FORMAT_VERSION, Snapshot,
    lines::{ClickLine, DomainLine, Line, LinkLine},
};
use crate::{
    domain::{format_ms, now_ms},
    store::{ExportSource, Store},
};

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exported {
    pub owners: u64,
    pub domains: u64,
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
pub fn export(store: &dyn ExportSource, out: &mut impl Write) -> anyhow::Result<Exported> {
    let mut done = Exported::default();
    put(
        out,
        &Line::LinkpulseExport {
            version: FORMAT_VERSION,
            exported_at: format_ms(now_ms()),
            visitor_key: Some(hex::encode(store.visitor_key_bytes())),
        },
    )?;
    let mut keys = store.key_records()?;
    keys.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    for key in keys {
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
    let mut domains = store.domain_records()?;
    domains.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
    for domain in domains {
        put(out, &Line::Domain(DomainLine::of(&domain)))?;
        done.domains += 1;
    }
    // The codes of the link lines written: a click of another code (a link made while a
    // cluster is exported) would stop an import, having no link line before it.
    let mut linked = HashSet::new();
    store.each_link(&mut |link| {
        put(out, &Line::Link(Box::new(LinkLine::of(&link))))?;
        linked.insert(link.code.to_string());
        done.links += 1;
        anyhow::Ok(())
    })?;
    // The code being written and its snapshot, until it is written.
    let mut current: Option<(String, Option<Snapshot>)> = None;
    store.each_click(&mut |code: &str, event| {
        if !linked.contains(code) {
            return Ok(());
        }
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

/// `linkpulse export`: writes the store in `data_dir` to `output` (`-`: standard output;
/// a file is written beside and renamed into place when complete). Returns the summary for
/// standard error. Blocking.
pub fn export_command(data_dir: &Path, output: &Path) -> anyhow::Result<String> {
    anyhow::ensure!(
        data_dir.join("version").exists(),
        "there is no linkpulse store in {}",
        data_dir.display()
    );
    crate::store::with_stopped_store(data_dir, Store::open, |store| export_to(store, output))
}

/// `linkpulse export --nats URLS`: writes the cluster's store to `output`, as
/// [`export_command`] writes an embedded one. Blocking (call it from `spawn_blocking` inside
/// the runtime: the cluster's client runs on it).
pub fn export_cluster_command(urls: &str, output: &Path) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Handle::current();
    let store = runtime.block_on(crate::store::ClusterStore::open_existing(urls))?;
    export_to(&store, output)
}

/// Writes `store` to `output` (see [`export_command`]); returns the summary.
fn export_to(store: &dyn ExportSource, output: &Path) -> anyhow::Result<String> {
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
        "exported {} links, {} clicks, {} aggregates, {} owners, {} domains (key secrets \
         and certificates are not exported)\n",
        done.links, done.clicks, done.aggregates, done.owners, done.domains
    ))
}

fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    output.with_file_name(name)
}
