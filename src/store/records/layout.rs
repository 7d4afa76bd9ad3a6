//! How the keys of the keyspaces are laid out: a code's clicks by number, the listing index
//! by creation time, deleted codes, the last click a snapshot covers. Integers that sort are
//! big-endian.

use super::DecodeError;
use crate::domain::Link;

/// Separates a code from a sequence number in click keys; it cannot occur in a code.
const SEP: u8 = 0;

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
