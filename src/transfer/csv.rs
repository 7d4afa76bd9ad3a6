//! Links from the CSV `url,code[,title,tags]` that other shorteners export.

use std::io::Read;

use super::{ImportError, Imported, importer::Importer};
use crate::{
    domain::{KeyId, Link, ShortCode, TargetUrl, check_tags, check_title},
    store::Store,
};

/// How many times a generated code is drawn again when it is taken (as the API does).
const GENERATE_ATTEMPTS: usize = 8;

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
pub(super) fn generated_code(store: &Store, now: i64) -> Result<ShortCode, String> {
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
