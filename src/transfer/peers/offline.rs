//! `linkpulse import --format bitly|shlink|yourls|kutt` on a stopped server's store, through
//! the same importer as an export's links.

use super::{Malformed, PeerFormat, PeerReport, Skipped, parse};
use crate::{
    domain::{KeyId, format_ms},
    store::Store,
    transfer::importer::Importer,
};

/// Imports the links of `input` (an export of `format`) into `store`, owned by `owner` in
/// `workspace`. With `dry_run`, reports what it would do and changes nothing. A file that
/// cannot be read at all imports nothing.
pub fn import_peer(
    store: &Store,
    format: PeerFormat,
    input: &[u8],
    owner: KeyId,
    workspace: &str,
    dry_run: bool,
) -> Result<PeerReport, Malformed> {
    let parsed = parse(format, input)?;
    let mut report = PeerReport::new(format, dry_run, &parsed);
    let links = report.skip_repeated(parsed.links);
    let mut importer = Importer::new(store, Some(owner.clone()));
    let now = importer.now;
    let failed = |line: u64, message: String| Malformed { line, message };
    for peer in links {
        let code = match &peer.code {
            Some(code) => code.clone(),
            None => crate::transfer::csv::generated_code(store, now)
                .map_err(|e| failed(peer.line, e))?,
        };
        let free = store
            .code_free(code.as_str(), now)
            .map_err(|e| failed(peer.line, e.to_string()))?;
        if !free {
            let reason = match store.gone_until(code.as_str()) {
                Ok(Some(until)) if until > now => format!(
                    "held until {} (it belonged to a deleted link)",
                    format_ms(until)
                ),
                _ => "the code is taken".to_owned(),
            };
            report.skipped.push(Skipped {
                line: peer.line,
                code: code.to_string(),
                reason,
            });
            continue;
        }
        if !dry_run {
            importer
                .link(peer.to_link(code, &owner, workspace))
                .map_err(|e| failed(peer.line, e))?;
        }
        report.created += 1;
    }
    if !dry_run {
        importer
            .finish()
            .map_err(|e| failed(report.rows, format!("the store failed: {e}")))?;
    }
    Ok(report)
}
