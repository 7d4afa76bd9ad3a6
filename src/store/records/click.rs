//! Click records, written once per click: compact arrays (fields by position, about 40%
//! smaller than maps).

use serde::{Deserialize, Serialize};

use super::{DecodeError, RECORD_VERSION, check_version, decode, encode_compact};
use crate::domain::{ClickEvent, DeviceClass};

/// A click as stored (its fields visible to the records' tests, which write future versions).
#[derive(Serialize, Deserialize)]
pub(super) struct ClickRecord {
    pub(super) v: u8,
    pub(super) seq: u64,
    pub(super) at: i64,
    pub(super) ip: Option<String>,
    pub(super) ua: String,
    pub(super) referer: Option<String>,
    pub(super) country: Option<String>,
    pub(super) browser: String,
    pub(super) os: String,
    pub(super) device: DeviceClass,
    pub(super) bot: bool,
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
