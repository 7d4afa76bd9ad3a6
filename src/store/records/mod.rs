//! On-disk encoding. Values are MessagePack with a version field `v` first. Links and keys are
//! maps with named fields; click records, written once per click, are compact arrays (fields by
//! position, about 40% smaller). Either way fields can only be added at the end, with
//! `#[serde(default)]`, so old records still decode. Keys that sort by number use big-endian
//! integers.

use serde::{Deserialize, Serialize};

use crate::domain::{
    ClickEvent, DeviceClass, KeyId, Link, RedirectRule, RuleDevice, Scope, ShortCode, TargetUrl,
};

/// The current version of every record kind.
pub const RECORD_VERSION: u8 = 1;

/// Separates a code from a sequence number in click keys; it cannot occur in a code.
const SEP: u8 = 0;

/// Why stored bytes could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("undecodable {what} record: {cause}")]
    Malformed { what: &'static str, cause: String },
    #[error("{what} record has unknown version {version}")]
    Version { what: &'static str, version: u8 },
    #[error("{what} record holds an invalid value: {cause}")]
    Invalid { what: &'static str, cause: String },
}

/// Fields after `created_at` came with link management; records without them decode as the
/// plain links they were.
#[derive(Serialize, Deserialize)]
struct LinkRecord {
    v: u8,
    code: String,
    url: String,
    owner: String,
    created_at: i64,
    #[serde(default)]
    rev: u64,
    #[serde(default)]
    updated_at: Option<i64>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    expires_at: Option<i64>,
    #[serde(default)]
    expired_url: Option<String>,
    #[serde(default)]
    max_visits: Option<u64>,
    #[serde(default)]
    redirect_status: Option<u16>,
    #[serde(default)]
    forward_query: bool,
    #[serde(default = "yes")]
    public_stats: bool,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    rules: Vec<RuleRecord>,
}

fn yes() -> bool {
    true
}

#[derive(Serialize, Deserialize)]
struct RuleRecord {
    device: Option<RuleDevice>,
    country: Option<String>,
    url: String,
}

#[derive(Serialize, Deserialize)]
struct ClickRecord {
    v: u8,
    seq: u64,
    at: i64,
    ip: Option<String>,
    ua: String,
    referer: Option<String>,
    country: Option<String>,
    browser: String,
    os: String,
    device: DeviceClass,
    bot: bool,
}

/// How many links and clicks the store holds, kept in the `meta` keyspace under [`TOTALS_KEY`]
/// and written by the group-commit writer in the same atomic batch as each group's clicks and
/// links. The journal replays a prefix of the batches, so after a crash the record still equals
/// what is stored, and the start-up check reads one record instead of counting the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub v: u8,
    pub links: u64,
    /// Clicks stored now.
    pub clicks: u64,
    /// Clicks deleted by `--click-retention-days` (their counts and aggregates stay).
    #[serde(default)]
    pub expired: u64,
    /// Links deleted through the API, and their clicks deleted so far.
    #[serde(default)]
    pub deleted_links: u64,
    #[serde(default)]
    pub deleted_clicks: u64,
}

impl Totals {
    /// Every click ever stored: what the floor compares, since expiry and deletion take
    /// clicks away.
    pub fn clicks_ever(&self) -> u64 {
        self.clicks + self.expired + self.deleted_clicks
    }

    /// Every link ever stored.
    pub fn links_ever(&self) -> u64 {
        self.links + self.deleted_links
    }
}

/// The key of the [`Totals`] record in the `meta` keyspace.
pub const TOTALS_KEY: &[u8] = b"totals";

/// An API key as stored: only its hash is the key of the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub v: u8,
    pub id: KeyId,
    pub name: String,
    /// Kept equal to `scope == admin`: what a record written before scopes says.
    pub admin: bool,
    pub created_at: i64,
    /// `None` in a record written before scopes: see [`KeyRecord::scope`].
    #[serde(default)]
    pub scope: Option<Scope>,
    /// Milliseconds since the epoch, saved at most once a minute (see `keys::ApiKeys`).
    #[serde(default)]
    pub last_used_at: Option<i64>,
}

impl KeyRecord {
    /// The key's scope; a record from before scopes is `admin` or `links` as its flag says.
    pub fn scope(&self) -> Scope {
        self.scope.unwrap_or(if self.admin {
            Scope::Admin
        } else {
            Scope::Links
        })
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising plain structs of strings and numbers into a Vec cannot fail.
    rmp_serde::to_vec_named(value).unwrap_or_default()
}

fn encode_compact<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec(value).unwrap_or_default()
}

fn decode<'a, T: Deserialize<'a>>(what: &'static str, bytes: &'a [u8]) -> Result<T, DecodeError> {
    rmp_serde::from_slice(bytes).map_err(|e| DecodeError::Malformed {
        what,
        cause: e.to_string(),
    })
}

fn check_version(what: &'static str, v: u8) -> Result<(), DecodeError> {
    if v == RECORD_VERSION {
        Ok(())
    } else {
        Err(DecodeError::Version { what, version: v })
    }
}

pub fn encode_link(link: &Link) -> Vec<u8> {
    encode(&LinkRecord {
        v: RECORD_VERSION,
        code: link.code.to_string(),
        url: link.target.to_string(),
        owner: link.owner.clone(),
        created_at: link.created_at,
        rev: link.rev,
        updated_at: Some(link.updated_at),
        title: link.title.clone(),
        tags: link.tags.clone(),
        expires_at: link.expires_at,
        expired_url: link.expired_url.as_ref().map(ToString::to_string),
        max_visits: link.max_visits,
        redirect_status: link.redirect_status,
        forward_query: link.forward_query,
        public_stats: link.public_stats,
        password: link.password.clone(),
        rules: link
            .rules
            .iter()
            .map(|r| RuleRecord {
                device: r.device,
                country: r.country.clone(),
                url: r.url.to_string(),
            })
            .collect(),
    })
}

pub fn decode_link(bytes: &[u8]) -> Result<Link, DecodeError> {
    let r: LinkRecord = decode("link", bytes)?;
    check_version("link", r.v)?;
    let invalid = |cause: String| DecodeError::Invalid {
        what: "link",
        cause,
    };
    let url = |raw: &str| TargetUrl::parse(raw).map_err(|e| invalid(e.to_string()));
    let rules = r
        .rules
        .iter()
        .map(|rule| {
            Ok(RedirectRule {
                device: rule.device,
                country: rule.country.clone(),
                url: url(&rule.url)?,
            })
        })
        .collect::<Result<_, DecodeError>>()?;
    Ok(Link {
        code: ShortCode::parse(&r.code).map_err(|e| invalid(e.to_string()))?,
        target: url(&r.url)?,
        owner: r.owner,
        created_at: r.created_at,
        rev: r.rev,
        updated_at: r.updated_at.unwrap_or(r.created_at),
        title: r.title,
        tags: r.tags,
        expires_at: r.expires_at,
        expired_url: r.expired_url.as_deref().map(url).transpose()?,
        max_visits: r.max_visits,
        redirect_status: r.redirect_status,
        forward_query: r.forward_query,
        public_stats: r.public_stats,
        password: r.password,
        rules,
    })
}

/// `gone 0x00 code` in the `meta` keyspace: a deleted code, held until the time it stores
/// (epoch milliseconds, big-endian) so it is not reused meanwhile.
pub fn gone_key(code: &str) -> Vec<u8> {
    let mut key = b"gone\0".to_vec();
    key.extend_from_slice(code.as_bytes());
    key
}

/// The prefix of every [`gone_key`].
pub const GONE_PREFIX: &[u8] = b"gone\0";

/// The time under a [`gone_key`] (0 when malformed: the hold is over).
pub fn decode_gone(bytes: &[u8]) -> i64 {
    <[u8; 8]>::try_from(bytes).map_or(0, i64::from_be_bytes)
}

/// In the `index` keyspace, the links by creation time, newest last:
/// `t created_at(be) code` for every link and `o owner 0x00 created_at(be) code` for each
/// owner's (values empty). `created_at` is shifted to sort as unsigned.
pub fn time_index_key(link: &Link) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + link.code.as_str().len());
    key.push(b't');
    key.extend_from_slice(&sortable_ms(link.created_at));
    key.extend_from_slice(link.code.as_str().as_bytes());
    key
}

pub fn owner_index_prefix(owner: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + owner.len());
    key.push(b'o');
    key.extend_from_slice(owner.as_bytes());
    key.push(SEP);
    key
}

pub fn owner_index_key(link: &Link) -> Vec<u8> {
    let mut key = owner_index_prefix(&link.owner);
    key.extend_from_slice(&sortable_ms(link.created_at));
    key.extend_from_slice(link.code.as_str().as_bytes());
    key
}

/// An index key's place in its list: the creation time and code after `prefix_len` bytes.
pub fn index_position(key: &[u8], prefix_len: usize) -> Option<(&[u8], &str)> {
    let tail = key.get(prefix_len..)?;
    let (time, code) = tail.split_at_checked(8)?;
    Some((time, std::str::from_utf8(code).ok()?))
}

fn sortable_ms(ms: i64) -> [u8; 8] {
    ((ms as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn encode_click(event: &ClickEvent) -> Vec<u8> {
    encode_compact(&ClickRecord {
        v: RECORD_VERSION,
        seq: event.seq,
        at: event.at,
        ip: event.ip.clone(),
        ua: event.user_agent.clone(),
        referer: event.referer.clone(),
        country: event.country.clone(),
        browser: event.browser.clone(),
        os: event.os.clone(),
        device: event.device,
        bot: event.bot,
    })
}

pub fn decode_click(bytes: &[u8]) -> Result<ClickEvent, DecodeError> {
    let r: ClickRecord = decode("click", bytes)?;
    check_version("click", r.v)?;
    Ok(ClickEvent {
        seq: r.seq,
        at: r.at,
        ip: r.ip,
        user_agent: r.ua,
        referer: r.referer,
        country: r.country,
        browser: r.browser,
        os: r.os,
        device: r.device,
        bot: r.bot,
    })
}

pub fn encode_key(record: &KeyRecord) -> Vec<u8> {
    encode(record)
}

pub fn decode_key(bytes: &[u8]) -> Result<KeyRecord, DecodeError> {
    let r: KeyRecord = decode("key", bytes)?;
    check_version("key", r.v)?;
    Ok(r)
}

pub fn encode_totals(totals: &Totals) -> Vec<u8> {
    encode(&Totals {
        v: RECORD_VERSION,
        ..*totals
    })
}

pub fn decode_totals(bytes: &[u8]) -> Result<Totals, DecodeError> {
    let r: Totals = decode("totals", bytes)?;
    check_version("totals", r.v)?;
    Ok(r)
}

/// The click number at the end of a click key whose prefix is `prefix_len` bytes.
pub fn click_seq(key: &[u8], prefix_len: usize) -> Result<u64, DecodeError> {
    let raw: [u8; 8] = key
        .get(prefix_len..)
        .and_then(|tail| tail.try_into().ok())
        .ok_or_else(|| DecodeError::Malformed {
            what: "click key",
            cause: format!("{} bytes after a {prefix_len}-byte prefix", key.len()),
        })?;
    Ok(u64::from_be_bytes(raw))
}

/// The code and number of a click key (`code 0x00 seq(be)`), or `None` when it is not one.
pub fn split_click_key(key: &[u8]) -> Option<(&[u8], u64)> {
    let at = key.len().checked_sub(9).filter(|&at| key[at] == SEP)?;
    Some((&key[..at], click_seq(key, at + 1).ok()?))
}

/// `code 0x00 seq(be)`: the clicks of one code sort together and by number.
pub fn click_key(code: &str, seq: u64) -> Vec<u8> {
    let mut key = click_prefix(code);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// `code 0x00`: in the `stats` keyspace, the last click a code's aggregates snapshot (stored
/// under the bare code) covers, as a big-endian u64.
pub fn covers_key(code: &str) -> Vec<u8> {
    click_prefix(code)
}

/// The value under a [`covers_key`] (0 when absent or not 8 bytes: no snapshot to rely on).
pub fn decode_covers(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes)
}

pub fn click_prefix(code: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(code.len() + 9);
    key.extend_from_slice(code.as_bytes());
    key.push(SEP);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

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
                    |(
                        (seq, at, ip),
                        (user_agent, referer),
                        (country, browser, os),
                        (device, bot),
                    )| {
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
                    v: RECORD_VERSION, id, name, admin, created_at, scope, last_used_at,
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
}
