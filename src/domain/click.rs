//! One click: what the redirect saw, enriched by the analytics module, numbered by the actor.

use serde::{Deserialize, Serialize};

/// The kind of device a user agent belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "DeviceClass"))]
#[serde(rename_all = "lowercase")]
pub enum DeviceClass {
    Desktop,
    Mobile,
    Tablet,
    Bot,
    Other,
}

/// A recorded click. `seq` numbers the clicks of one code from 1, with no gaps: the stored count
/// of a code is the `seq` of its last stored click.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickEvent {
    pub seq: u64,
    /// Epoch milliseconds.
    pub at: i64,
    /// The client address, anonymised unless the operator chose otherwise.
    pub ip: Option<String>,
    pub user_agent: String,
    pub referer: Option<String>,
    /// ISO 3166 alpha-2 country code, when a trusted proxy header carries one.
    pub country: Option<String>,
    pub browser: String,
    pub os: String,
    pub device: DeviceClass,
    pub bot: bool,
}

#[cfg(test)]
impl ClickEvent {
    /// A click numbered `seq` from `curl`, with nothing else known (for tests).
    pub(crate) fn plain(seq: u64) -> Self {
        Self {
            seq,
            at: 1_700_000_000_000,
            ip: None,
            user_agent: "curl/8".into(),
            referer: None,
            country: None,
            browser: "unknown".into(),
            os: "unknown".into(),
            device: DeviceClass::Other,
            bot: false,
        }
    }
}
