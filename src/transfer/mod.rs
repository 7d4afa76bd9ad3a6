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
//! 3. `{"type":"domain","name","owner","createdAt","rootUrl","notFoundUrl","https","hsts",
//!    "httpsOnly"}` per domain besides the default one (certificates are not exported: they
//!    are ordered again);
//! 4. `{"type":"link",...}` per link, with the fields the API shows plus `owner`, `rev` and
//!    `passwordHash`; a link on a domain has `"domain"` and the code `domain/code`;
//! 5. per clicked code: its `{"type":"click",...}` lines by number, and its
//!    `{"type":"aggregates","code","covers","snapshot"}` line (base64 of the stored snapshot)
//!    right after the click it covers last, so that an import can store a snapshot together
//!    with the clicks it needs (a link whose old clicks `--click-retention-days` deleted has
//!    its remaining clicks start above 1: only its snapshot carries the ones before).

mod csv;
mod export;
mod import;
mod importer;
mod lines;
pub mod peers;

pub use csv::import_csv;
pub use export::{Exported, export, export_cluster_command, export_command};
pub use import::{ImportError, Imported, import_command, import_jsonl};

/// The format version an export declares and an import accepts.
pub const FORMAT_VERSION: u32 = 1;

/// What `linkpulse import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportFormat {
    /// A `linkpulse export`.
    Jsonl,
    /// `url,code[,title,tags]`, header optional.
    Csv,
    /// Bitly's links export (CSV).
    Bitly,
    /// Shlink's short URL export (CSV, as shlink-web-client writes it).
    Shlink,
    /// YOURLS' links (CSV of its `yourls_url` table).
    Yourls,
    /// Kutt's links (JSON of `GET /api/v2/links`, or CSV with the same names).
    Kutt,
}

impl ImportFormat {
    /// The other shortener whose export this is, if it is one.
    pub fn peer(self) -> Option<peers::PeerFormat> {
        match self {
            Self::Jsonl | Self::Csv => None,
            Self::Bitly => Some(peers::PeerFormat::Bitly),
            Self::Shlink => Some(peers::PeerFormat::Shlink),
            Self::Yourls => Some(peers::PeerFormat::Yourls),
            Self::Kutt => Some(peers::PeerFormat::Kutt),
        }
    }
}

/// A stored aggregates snapshot: the last click it covers and its bytes.
type Snapshot = (u64, Vec<u8>);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
    use serde_json::Value;

    use super::{
        FORMAT_VERSION, export, import_jsonl,
        lines::{ClickLine, Line, LinkLine},
    };
    use crate::{
        analytics::{AggregateSettings, Aggregates, aggregates},
        domain::{ClickEvent, Link, ShortCode, TargetUrl, format_ms, now_ms},
        store::Store,
    };

    fn event(seq: u64) -> ClickEvent {
        ClickEvent {
            at: 1_700_000_000_000 + seq as i64,
            ip: Some("192.0.2.0".into()),
            user_agent: format!("agent {seq}"),
            ..ClickEvent::plain(seq)
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
    fn an_imported_click_count_goes_out_and_back_with_its_link_and_stays_in_the_record() {
        let mut link = Link::new(
            ShortCode::parse("moved").unwrap(),
            TargetUrl::parse("https://example.com/").unwrap(),
            "owner".into(),
            1_700_000_000_000,
        );
        let plain = serde_json::to_value(Line::Link(Box::new(LinkLine::of(&link)))).unwrap();
        assert!(plain.get("importedClickCount").is_none(), "{plain}");
        link.imported_click_count = Some(42);
        let line = serde_json::to_value(Line::Link(Box::new(LinkLine::of(&link)))).unwrap();
        assert_eq!(line["importedClickCount"], 42);
        let Line::Link(back) = serde_json::from_value(line).unwrap() else {
            panic!("a link line");
        };
        assert_eq!(back.into_link().unwrap(), link);
        let stored = crate::store::records::encode_link(&link);
        assert_eq!(crate::store::records::decode_link(&stored).unwrap(), link);
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
