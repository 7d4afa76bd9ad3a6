#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::{Malformed, PeerFormat, parse, parse_time};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/imports/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap()
}

fn codes(parsed: &super::Parsed) -> Vec<String> {
    parsed
        .links
        .iter()
        .map(|l| l.code.as_ref().map(|c| c.to_string()).unwrap_or_default())
        .collect()
}

#[test]
fn bitly_takes_the_custom_back_half_first_and_refuses_a_non_web_target() {
    let parsed = parse(PeerFormat::Bitly, &fixture("bitly.csv")).unwrap();
    assert_eq!(codes(&parsed), ["3Kx9aQz", "launch-day", "49pQw2r"]);
    let sale = &parsed.links[0];
    assert_eq!(sale.title.as_deref(), Some("Spring sale, 20% off"));
    assert_eq!(sale.tags, ["marketing", "spring"]);
    assert_eq!(sale.visits, Some(1520));
    assert_eq!(sale.created_at, Some(1_709_284_500_000));
    assert_eq!(sale.line, 2);
    assert_eq!(
        parsed.links[1].title.as_deref(),
        Some("Launch day 🚀 — Ünïcode")
    );
    assert_eq!(parsed.links[2].title, None);
    assert_eq!(parsed.refused.len(), 1);
    assert_eq!(parsed.refused[0].line, 5);
    assert!(
        parsed.refused[0].error.contains("ftp://"),
        "{:?}",
        parsed.refused
    );
}

#[test]
fn shlink_reads_the_web_clients_export_with_pipe_separated_tags() {
    let parsed = parse(PeerFormat::Shlink, &fixture("shlink.csv")).unwrap();
    assert_eq!(codes(&parsed), ["docs-2023", "xmas", "plain"]);
    assert_eq!(parsed.links[0].title.as_deref(), Some("Docs, version 2"));
    assert_eq!(parsed.links[0].tags, ["docs", "v2"]);
    assert_eq!(parsed.links[1].visits, Some(9001));
    // 23:59 at +01:00 is 22:59 UTC.
    assert_eq!(
        parsed.links[1].created_at,
        parse_time("2023-12-24T22:59:00Z")
    );
    assert_eq!(parsed.links[2].tags, Vec::<String>::new());
    assert!(parsed.refused.is_empty());
}

#[test]
fn yourls_reads_its_url_table_with_times_as_utc() {
    let parsed = parse(PeerFormat::Yourls, &fixture("yourls.csv")).unwrap();
    assert_eq!(codes(&parsed), ["gh", "cafe", "old-one"]);
    assert_eq!(
        parsed.links[0].title.as_deref(),
        Some("YOURLS: Your Own URL Shortener, on GitHub")
    );
    assert_eq!(parsed.links[0].created_at, Some(1_559_390_400_000));
    assert_eq!(parsed.links[0].visits, Some(2048));
    assert_eq!(
        parsed.links[1].title.as_deref(),
        Some("Café menu — naïve prices ☕")
    );
}

#[test]
fn kutt_reads_an_api_page_as_json_and_csv_with_the_same_names() {
    let parsed = parse(PeerFormat::Kutt, &fixture("kutt.json")).unwrap();
    assert_eq!(codes(&parsed), ["k-docs", "tokyo"]);
    assert_eq!(
        parsed.links[0].title.as_deref(),
        Some("Kutt docs, self-hosting")
    );
    assert_eq!(parsed.links[1].visits, Some(1234));
    assert_eq!(parsed.links[1].title.as_deref(), Some("東京の地図"));
    assert_eq!(parsed.refused.len(), 1);
    assert_eq!(parsed.refused[0].line, 2);
    let csv = parse(PeerFormat::Kutt, &fixture("kutt.csv")).unwrap();
    assert_eq!(codes(&csv), ["k-csv"]);
    assert_eq!(csv.links[0].visits, Some(12));
}

#[test]
fn a_broken_file_names_its_line_and_gives_nothing() {
    let uneven = b"keyword,url,title\nok,https://example.com/,x\nbad,https://example.com/\n";
    let err = parse(PeerFormat::Yourls, uneven).unwrap_err();
    assert_eq!(
        err,
        Malformed {
            line: 3,
            message: "2 fields where the header has 3".into()
        }
    );
    let no_target = parse(PeerFormat::Shlink, b"shortCode,title\nabc,x\n").unwrap_err();
    assert_eq!(no_target.line, 1);
    assert!(no_target.message.contains("longurl"), "{no_target}");
    let json = parse(PeerFormat::Kutt, b"{\"data\": [\n{\"address\": 1,\n}]}").unwrap_err();
    assert_eq!(json.line, 3, "{json}");
    let bad_count = b"keyword,url,clicks\nx,https://example.com/,many\n";
    let parsed = parse(PeerFormat::Yourls, bad_count).unwrap();
    assert!(
        parsed.refused[0].error.contains("visit count"),
        "{:?}",
        parsed.refused
    );
}

#[test]
fn times_in_each_exports_spelling() {
    let at = Some(1_709_284_500_000);
    assert_eq!(parse_time("2024-03-01T09:15:00Z"), at);
    assert_eq!(parse_time("2024-03-01T09:15:00+0000"), at);
    assert_eq!(parse_time("2024-03-01T10:15:00+01:00"), at);
    assert_eq!(parse_time("2024-03-01 09:15:00"), at);
    assert_eq!(parse_time("1709284500"), at);
    assert_eq!(parse_time("1709284500000"), at);
    assert_eq!(parse_time("yesterday"), None);
}

#[test]
fn headers_match_in_any_spelling_and_a_bom_is_ignored() {
    let input = "\u{FEFF}Title,Long URL,Bitlink,Date Created,Total Clicks\n\
                 Hi,https://example.com/,bit.ly/abc,2024-03-01T09:15:00+0000,4\n";
    let parsed = parse(PeerFormat::Bitly, input.as_bytes()).unwrap();
    assert_eq!(codes(&parsed), ["abc"]);
    assert_eq!(parsed.links[0].visits, Some(4));
    assert_eq!(PeerFormat::named("SHLINK"), Some(PeerFormat::Shlink));
    assert_eq!(PeerFormat::named("tinyurl"), None);
}
