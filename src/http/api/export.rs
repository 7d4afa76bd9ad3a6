//! The CSV export of a link's clicks (`Accept: text/csv` on its clicks), streamed: memory
//! stays flat for any number of clicks.

use salvo::{
    http::{HeaderValue, header},
    prelude::*,
};
use tokio::sync::mpsc;

use super::super::AppState;
use crate::{
    domain::{Link, ShortCode, format_ms},
    store::SharedStore,
};

/// The columns of the CSV export.
const CSV_HEADER: [&str; 10] = [
    "seq",
    "createdAt",
    "ipAddress",
    "userAgent",
    "referer",
    "country",
    "browser",
    "os",
    "device",
    "bot",
];
/// A CSV chunk is sent once it holds this many bytes; at most [`CSV_CHUNKS`] wait for the
/// client, so an export holds about 256 KiB whatever the number of clicks.
const CSV_CHUNK: usize = 64 * 1024;
const CSV_CHUNKS: usize = 4;
/// How long an export waits for a client that does not read.
const CSV_STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// A cell a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, CR) gets a leading
/// `'` (OWASP's advice for CSV injection); only the free-text columns a visitor controls.
fn defused(value: &str) -> std::borrow::Cow<'_, str> {
    if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}").into()
    } else {
        value.into()
    }
}

/// Why an export stopped early.
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the client went away")]
    Gone,
}

/// A chunk of the export, or why it stopped.
type Chunk = Result<bytes::Bytes, ExportError>;

/// Streams every stored click of `link` as CSV: a blocking reader walks the store in order and
/// hands chunks to the response through a small bounded channel, so memory stays flat for any
/// number of clicks and a client that stops reading stops the reader.
pub(super) fn export_csv(state: &AppState, link: &Link, res: &mut Response) {
    let (tx, rx) = mpsc::channel::<Chunk>(CSV_CHUNKS);
    let store = state.links.store().clone();
    let code = link.code.clone();
    tokio::task::spawn_blocking(move || write_clicks(&store, &code, &tx));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    let name = format!("attachment; filename=\"{}-clicks.csv\"", link.code.code());
    if let Ok(value) = HeaderValue::from_str(&name) {
        res.headers_mut().insert(header::CONTENT_DISPOSITION, value);
    }
    res.stream(tokio_stream_from(rx));
}

/// The blocking reader of [`export_csv`]: writes the header and every click of `code` as CSV
/// rows, sending a chunk to `tx` each time one is full and the rest at the end.
fn write_clicks(store: &SharedStore, code: &ShortCode, tx: &mpsc::Sender<Chunk>) {
    let fresh = || csv::Writer::from_writer(Vec::with_capacity(CSV_CHUNK * 2));
    let mut out = fresh();
    let runtime = tokio::runtime::Handle::current();
    let flush = |out: &mut csv::Writer<Vec<u8>>| -> Result<(), ExportError> {
        let chunk = std::mem::replace(out, fresh())
            .into_inner()
            .unwrap_or_default();
        // A client that stops reading for this long lets the reader (a blocking thread
        // and a store iterator) go.
        let sent = runtime.block_on(tokio::time::timeout(CSV_STALL, tx.send(Ok(chunk.into()))));
        match sent {
            Ok(Ok(())) => Ok(()),
            _ => Err(ExportError::Gone),
        }
    };
    write_row(&mut out, &CSV_HEADER);
    let walked = store.clicks_after(code.as_str(), 0, |e| {
        write_click(&mut out, &e);
        if out.get_ref().len() >= CSV_CHUNK {
            flush(&mut out)?;
        }
        Ok::<_, ExportError>(())
    });
    match walked {
        Ok(()) => {
            let _ = flush(&mut out);
        }
        Err(ExportError::Gone) => {}
        Err(e) => {
            // The client sees the body end early (no chunked terminator): not a whole file.
            tracing::error!(code = %code, cause = %e, "a CSV export failed");
            let _ = tx.blocking_send(Err(e));
        }
    }
}

/// One row into `out`.
fn write_row(out: &mut csv::Writer<Vec<u8>>, row: &[&str]) {
    // Writing into a Vec cannot fail.
    let _ = out.write_record(row);
}

/// The row of one click, in the columns of [`CSV_HEADER`].
fn write_click(out: &mut csv::Writer<Vec<u8>>, e: &crate::domain::ClickEvent) {
    let seq = e.seq.to_string();
    let at = format_ms(e.at);
    let device = crate::analytics::aggregates::device_name(e.device);
    write_row(
        out,
        &[
            &seq,
            &at,
            e.ip.as_deref().unwrap_or(""),
            &defused(&e.user_agent),
            &defused(e.referer.as_deref().unwrap_or("")),
            e.country.as_deref().unwrap_or(""),
            &e.browser,
            &e.os,
            device,
            if e.bot { "true" } else { "false" },
        ],
    );
}

/// A receiver as a stream of body chunks.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
