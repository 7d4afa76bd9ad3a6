//! What the store keeps of a webhook: its settings (`webhook.{id}`, written by the API) and its
//! delivery state (`webhook-state.{id}`, written only by the node delivering it): the cursor
//! over each link's click log and the audit log, the failures so far and the last attempts.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::store::records::{DecodeError, RECORD_VERSION, decode_any, encode_any};

/// The settings' names start with this, then the webhook's id.
pub const PREFIX: &str = "webhook.";
/// The delivery states' names start with this, then the webhook's id.
pub const STATE_PREFIX: &str = "webhook-state.";
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
    /// when the webhook was made, or was made after it.
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

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
        assert_eq!(back, state);
    }
}
