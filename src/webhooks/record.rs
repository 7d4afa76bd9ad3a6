//! What the store keeps of a webhook: its settings (`webhook.{id}`, written by the API) and its
//! delivery state (`webhook-state.{id}`, written only by the node delivering it): the cursor
//! over each link's click log and the audit log, the failures so far and the last attempts.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::store::{
    Backend, StoreError,
    records::{DecodeError, RECORD_VERSION, decode_any, encode_any},
};

/// The settings' names start with this, then the webhook's id.
pub const PREFIX: &str = "webhook.";
/// The delivery states' names start with this, then the webhook's id.
pub const STATE_PREFIX: &str = "webhook-state.";
/// The cursors' names start with this, then the webhook's id, a dot and the shard's number.
pub const CURSOR_PREFIX: &str = "webhook-cursor.";
/// The cursors are kept in this many records, by a hash of the link's key: a save writes only
/// those that changed, and none grows past what a store takes in one value (NATS: 1 MB, about
/// 50,000 links a record).
pub const SHARDS: u64 = 64;
/// How many attempts `GET /api/webhooks/{id}/deliveries` shows.
pub const KEPT_DELIVERIES: usize = 50;

/// The events a webhook may ask for.
pub const EVENTS: [&str; 4] = [
    "link.clicked",
    "link.created",
    "link.updated",
    "link.deleted",
];

/// A webhook as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRecord {
    pub v: u8,
    pub id: String,
    pub workspace: String,
    pub url: String,
    /// Some of [`EVENTS`].
    pub events: Vec<String>,
    /// Only these links (keys: `code` or `domain/code`); `None`: every link of the workspace.
    pub links: Option<Vec<String>>,
    pub enabled: bool,
    /// Why it was disabled by linkpulse (failures), if it was.
    pub disabled_reason: Option<String>,
    /// `whsec_` and the key in base64, as the Standard Webhooks libraries take it.
    pub secret: String,
    /// The secret before the last rotation, and until when (epoch ms) it still signs.
    pub previous_secret: Option<(String, i64)>,
    pub created_at: i64,
    pub created_by: String,
    /// When it was last enabled (made, enabled again, or given another URL): failures before
    /// it are forgotten.
    pub enabled_at: i64,
}

impl WebhookRecord {
    pub fn wants(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == event)
    }

    /// Whether the link with key `key` is one this webhook speaks of.
    pub fn covers(&self, key: &str) -> bool {
        self.links
            .as_ref()
            .is_none_or(|links| links.iter().any(|l| l == key))
    }
}

/// One attempt to deliver a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// When it was sent (epoch ms).
    pub at: i64,
    /// The message's `webhook-id`.
    pub message: String,
    /// The message's `type`.
    pub event: String,
    /// How many clicks it carried.
    pub clicks: u32,
    /// The receiver's status, if it answered.
    pub status: Option<u16>,
    pub latency_ms: u64,
    /// What went wrong, if it did.
    pub error: Option<String>,
}

/// Where a webhook stands on one link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkCursor {
    /// The last click delivered (or passed over).
    pub seq: u64,
    /// The creation time of the link it counts (epoch ms; 0: not known): a link made again
    /// under the same code starts from its first click.
    pub born: i64,
}

/// Where a webhook's delivery stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookState {
    pub v: u8,
    /// The last click delivered of each link (by key); a link not here had none to deliver
    /// when the webhook was made, or was made after it. Stored apart, in [`SHARDS`] records.
    #[serde(skip)]
    pub clicks: BTreeMap<String, LinkCursor>,
    /// The last audit entry looked at (its link events delivered).
    pub audit: u64,
    /// Failed attempts in a row.
    pub failures: u32,
    /// When the first of those failed (epoch ms).
    pub failing_since: Option<i64>,
    /// Clicks delivered, in all.
    pub delivered: u64,
    /// The last attempts, newest last.
    pub deliveries: VecDeque<Delivery>,
}

impl WebhookState {
    pub fn attempted(&mut self, delivery: Delivery) {
        if self.deliveries.len() >= KEPT_DELIVERIES {
            self.deliveries.pop_front();
        }
        self.deliveries.push_back(delivery);
    }
}

pub fn encode_webhook(record: &WebhookRecord) -> Vec<u8> {
    encode_any(&WebhookRecord {
        v: RECORD_VERSION,
        ..record.clone()
    })
}

pub fn decode_webhook(bytes: &[u8]) -> Result<WebhookRecord, DecodeError> {
    decode_any("webhook", bytes)
}

pub fn encode_state(state: &WebhookState) -> Vec<u8> {
    encode_any(state)
}

pub fn decode_state(bytes: &[u8]) -> Result<WebhookState, DecodeError> {
    decode_any("webhook state", bytes)
}

/// The shard of the cursor of the link `key`.
pub fn shard_of(key: &str) -> u8 {
    use std::hash::Hasher;
    let mut hash = siphasher::sip::SipHasher13::new_with_keys(0, 0);
    hash.write(key.as_bytes());
    (hash.finish() % SHARDS) as u8
}

fn cursor_name(id: &str, shard: u8) -> String {
    format!("{CURSOR_PREFIX}{id}.{shard:02}")
}

/// The records that hold `state`: its own (`webhook-state.{id}`) and the cursor records of
/// `shards`, each as (name, bytes), `None` for a shard left empty (to delete).
pub fn state_records(
    id: &str,
    state: &WebhookState,
    shards: &BTreeSet<u8>,
) -> Vec<(String, Option<Vec<u8>>)> {
    let mut parts: BTreeMap<u8, BTreeMap<&str, LinkCursor>> =
        shards.iter().map(|s| (*s, BTreeMap::new())).collect();
    for (key, cursor) in &state.clicks {
        if let Some(part) = parts.get_mut(&shard_of(key)) {
            part.insert(key, *cursor);
        }
    }
    let mut records = vec![(format!("{STATE_PREFIX}{id}"), Some(encode_state(state)))];
    for (shard, part) in parts {
        records.push((
            cursor_name(id, shard),
            (!part.is_empty()).then(|| encode_any(&part)),
        ));
    }
    records
}

/// Writes records made by [`state_records`]; `synced`: durably before returning.
pub fn write_records(
    store: &dyn Backend,
    records: &[(String, Option<Vec<u8>>)],
    synced: bool,
) -> Result<(), StoreError> {
    for (name, bytes) in records {
        match (bytes, synced) {
            (Some(bytes), true) => store.put_setting(name, bytes)?,
            (Some(bytes), false) => store.put_setting_unsynced(name, bytes)?,
            (None, _) => store.delete_setting(name)?,
        }
    }
    Ok(())
}

/// A webhook's state with its cursors, if it has one stored.
pub fn load_state(store: &dyn Backend, id: &str) -> Result<Option<WebhookState>, StoreError> {
    let unreadable = |e: DecodeError| StoreError::Inconsistent(e.to_string());
    let Some(bytes) = store.setting(&format!("{STATE_PREFIX}{id}"))? else {
        return Ok(None);
    };
    let mut state = decode_state(&bytes).map_err(unreadable)?;
    for (_, bytes) in store.settings(&format!("{CURSOR_PREFIX}{id}."))? {
        let part: BTreeMap<String, LinkCursor> =
            decode_any("webhook cursors", &bytes).map_err(unreadable)?;
        state.clicks.extend(part);
    }
    Ok(Some(state))
}

/// Deletes a webhook's state and cursors.
pub fn delete_state(store: &dyn Backend, id: &str) -> Result<(), StoreError> {
    store.delete_setting(&format!("{STATE_PREFIX}{id}"))?;
    for (name, _) in store.settings(&format!("{CURSOR_PREFIX}{id}."))? {
        store.delete_setting(&name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn cursors_are_stored_in_shards_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let mut state = WebhookState::default();
        for n in 0..1000 {
            state
                .clicks
                .insert(format!("c{n}"), LinkCursor { seq: n, born: 1 });
        }
        let all: BTreeSet<u8> = state.clicks.keys().map(|k| shard_of(k)).collect();
        assert!(all.len() > SHARDS as usize / 2, "spread over the shards");
        write_records(&store, &state_records("wh_1", &state, &all), true).unwrap();
        assert_eq!(
            load_state(&store, "wh_1").unwrap().unwrap().clicks,
            state.clicks
        );
        // One cursor moves and one goes: only their shards are written.
        state
            .clicks
            .insert("c5".into(), LinkCursor { seq: 99, born: 1 });
        state.clicks.remove("c7");
        let changed: BTreeSet<u8> = [shard_of("c5"), shard_of("c7")].into();
        let records = state_records("wh_1", &state, &changed);
        assert_eq!(records.len(), 1 + changed.len());
        write_records(&store, &records, false).unwrap();
        assert_eq!(
            load_state(&store, "wh_1").unwrap().unwrap().clicks,
            state.clicks
        );
        delete_state(&store, "wh_1").unwrap();
        assert!(load_state(&store, "wh_1").unwrap().is_none());
        assert!(store.settings(CURSOR_PREFIX).unwrap().is_empty());
    }

    #[test]
    fn records_read_back_as_written() {
        let record = WebhookRecord {
            v: 1,
            id: "wh_1".into(),
            workspace: "default".into(),
            url: "https://example.com/hook".into(),
            events: vec!["link.clicked".into()],
            links: Some(vec!["abc".into(), "go.example.com/x".into()]),
            enabled: true,
            disabled_reason: None,
            secret: "whsec_AAAA".into(),
            previous_secret: Some(("whsec_BBBB".into(), 5)),
            created_at: 1,
            created_by: "a@example.com".into(),
            enabled_at: 1,
        };
        assert_eq!(decode_webhook(&encode_webhook(&record)).unwrap(), record);
        assert!(record.covers("abc") && !record.covers("abd"));
        let mut state = WebhookState::default();
        state
            .clicks
            .insert("abc".into(), LinkCursor { seq: 7, born: 3 });
        for n in 0..(KEPT_DELIVERIES + 3) {
            state.attempted(Delivery {
                at: n as i64,
                message: format!("msg_{n}"),
                event: "link.clicked".into(),
                clicks: 1,
                status: Some(200),
                latency_ms: 1,
                error: None,
            });
        }
        let back = decode_state(&encode_state(&state)).unwrap();
        assert_eq!(back.deliveries.len(), KEPT_DELIVERIES);
        assert_eq!(back.deliveries[0].at, 3, "the oldest attempts make room");
        assert!(back.clicks.is_empty(), "the cursors are kept apart");
        assert_eq!(back.deliveries, state.deliveries);
    }
}
