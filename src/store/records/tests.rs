//! Unit and property tests of the record encodings: round trips, records older versions
//! wrote, and damaged bytes that must never panic a decoder.

use serde::Serialize;

use super::{click::ClickRecord, *};
use crate::domain::{ClickEvent, DeviceClass, Link, Scope, ShortCode, TargetUrl};

fn event() -> ClickEvent {
    ClickEvent {
        seq: 42,
        at: 1_700_000_000_000,
        ip: Some("203.0.113.0".into()),
        user_agent: "curl/8".into(),
        referer: None,
        country: Some("NL".into()),
        browser: "unknown".into(),
        os: "unknown".into(),
        device: DeviceClass::Other,
        bot: false,
    }
}

#[test]
fn click_round_trips() {
    let e = event();
    assert_eq!(decode_click(&encode_click(&e)).ok(), Some(e));
}

/// A key record as versions before scopes wrote it: a map without `scope` and
/// `last_used_at`.
#[derive(Serialize)]
struct KeyRecordBeforeScopes {
    v: u8,
    id: String,
    name: String,
    admin: bool,
    created_at: i64,
}

#[test]
fn key_records_from_before_scopes_decode_as_admin_or_links() {
    for (admin, scope) in [(true, Scope::Admin), (false, Scope::Links)] {
        let old = encode(&KeyRecordBeforeScopes {
            v: RECORD_VERSION,
            id: "0123456789abcdef".into(),
            name: "old".into(),
            admin,
            created_at: 1_700_000_000_000,
        });
        let record = decode_key(&old).expect("an old record decodes");
        assert_eq!(
            (record.scope, record.last_used_at, record.scope()),
            (None, None, scope)
        );
        assert_eq!((record.name.as_str(), record.admin), ("old", admin));
    }
    // A new record keeps its scope, which wins over the flag.
    let new = KeyRecord {
        v: RECORD_VERSION,
        id: "x".into(),
        name: "reader".into(),
        admin: false,
        created_at: 1,
        scope: Some(Scope::Read),
        last_used_at: Some(2),
        workspace: None,
    };
    let back = decode_key(&encode_key(&new)).expect("decodes");
    assert_eq!((back.scope(), back.last_used_at), (Scope::Read, Some(2)));
}

#[test]
fn garbage_and_future_versions_are_errors() {
    assert!(matches!(
        decode_click(b"\xff\x00garbage"),
        Err(DecodeError::Malformed { .. })
    ));
    assert!(click_seq(b"ab\x00123", 3).is_err());
    assert_eq!(click_seq(&click_key("ab", 7), 3).ok(), Some(7));
    let mut future = ClickRecord {
        v: 9,
        seq: 1,
        at: 0,
        ip: None,
        ua: String::new(),
        referer: None,
        country: None,
        browser: String::new(),
        os: String::new(),
        device: DeviceClass::Other,
        bot: false,
    };
    assert!(matches!(
        decode_click(&encode_compact(&future)),
        Err(DecodeError::Version { version: 9, .. })
    ));
    future.v = RECORD_VERSION;
    assert!(decode_click(&encode_compact(&future)).is_ok());
}

#[test]
fn totals_round_trip_and_refuse_future_versions() {
    let totals = Totals {
        v: RECORD_VERSION,
        links: 3,
        clicks: 10_000_000_000,
        expired: 7,
        deleted_links: 2,
        deleted_clicks: 5,
    };
    assert_eq!(decode_totals(&encode_totals(&totals)).ok(), Some(totals));
    let future = encode(&Totals { v: 9, ..totals });
    assert!(matches!(
        decode_totals(&future),
        Err(DecodeError::Version { version: 9, .. })
    ));
}

#[test]
fn click_keys_sort_by_code_then_number() {
    assert!(click_key("ab", 2) < click_key("ab", 256));
    assert!(click_key("ab", u64::MAX) < click_key("abc", 1));
    assert!(click_key("ab", 1).starts_with(&click_prefix("ab")));
    assert!(!click_key("abc", 1).starts_with(&click_prefix("ab")));
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn click_event() -> impl Strategy<Value = ClickEvent> {
        let device = proptest::sample::select(vec![
            DeviceClass::Desktop,
            DeviceClass::Mobile,
            DeviceClass::Tablet,
            DeviceClass::Bot,
            DeviceClass::Other,
        ]);
        (
            (any::<u64>(), any::<i64>(), any::<Option<String>>()),
            (any::<String>(), any::<Option<String>>()),
            (any::<Option<String>>(), any::<String>(), any::<String>()),
            (device, any::<bool>()),
        )
            .prop_map(
                |((seq, at, ip), (user_agent, referer), (country, browser, os), (device, bot))| {
                    ClickEvent {
                        seq,
                        at,
                        ip,
                        user_agent,
                        referer,
                        country,
                        browser,
                        os,
                        device,
                        bot,
                    }
                },
            )
    }

    fn link() -> impl Strategy<Value = Link> {
        (
            "[A-Za-z0-9_-]{1,64}",
            "https?://[a-z0-9-]{1,20}(\\.[a-z]{2,5})?(:[0-9]{1,4})?/[a-zA-Z0-9/._~%?&=#-]{0,40}",
            any::<String>(),
            any::<i64>(),
        )
            .prop_filter_map("a valid code and URL", |(code, url, owner, created_at)| {
                Some(Link::new(
                    ShortCode::parse(&code).ok()?,
                    TargetUrl::parse(&url).ok()?,
                    owner,
                    created_at,
                ))
            })
    }

    /// Arbitrary bytes, and valid records cut short or with one byte changed.
    fn damaged(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
        let len = valid.len().max(1);
        let cut = valid.clone();
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            (0..len).prop_map(move |n| cut[..n.min(cut.len())].to_vec()),
            (0..len, any::<u8>()).prop_map(move |(i, b)| {
                let mut bytes = valid.clone();
                if let Some(slot) = bytes.get_mut(i) {
                    *slot = b;
                }
                bytes
            }),
        ]
    }

    proptest! {
        #[test]
        fn any_click_round_trips(event in click_event()) {
            prop_assert_eq!(decode_click(&encode_click(&event)).ok(), Some(event));
        }

        #[test]
        fn any_link_round_trips(link in link()) {
            prop_assert_eq!(decode_link(&encode_link(&link)).ok(), Some(link));
        }

        #[test]
        fn any_key_record_round_trips(
            id in any::<String>(),
            name in any::<String>(),
            admin in any::<bool>(),
            created_at in any::<i64>(),
            scope in proptest::option::of(prop_oneof![
                Just(Scope::Admin),
                Just(Scope::Links),
                Just(Scope::Read)
            ]),
            last_used_at in any::<Option<i64>>(),
        ) {
            let record = KeyRecord {
                v: RECORD_VERSION, id, name, admin, created_at, scope, last_used_at, workspace: None,
            };
            prop_assert_eq!(decode_key(&encode_key(&record)).ok(), Some(record));
        }

        #[test]
        fn damaged_clicks_never_panic(
            bytes in click_event().prop_flat_map(|e| damaged(encode_click(&e)))
        ) {
            let _ = decode_click(&bytes);
        }

        #[test]
        fn damaged_links_never_panic(
            bytes in link().prop_flat_map(|l| damaged(encode_link(&l)))
        ) {
            let _ = decode_link(&bytes);
        }

        #[test]
        fn arbitrary_bytes_never_panic_any_decoder(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            prefix_len in prop_oneof![0..80usize, any::<usize>()],
        ) {
            let _ = decode_click(&bytes);
            let _ = decode_link(&bytes);
            let _ = decode_key(&bytes);
            let _ = decode_totals(&bytes);
            if let Ok(seq) = click_seq(&bytes, prefix_len) {
                prop_assert_eq!(bytes.len().checked_sub(prefix_len), Some(8));
                prop_assert_eq!(&click_key("", seq)[1..], &bytes[prefix_len..]);
            }
        }

        #[test]
        fn click_seq_reads_back_any_click_key(
            code in "[A-Za-z0-9_-]{1,64}",
            seq in any::<u64>(),
        ) {
            let prefix_len = click_prefix(&code).len();
            prop_assert_eq!(click_seq(&click_key(&code, seq), prefix_len).ok(), Some(seq));
        }
    }
}
