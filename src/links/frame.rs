//! SSE frames, encoded once per change and shared (as `Bytes`) by every subscriber.
//!
//! A state frame is `id: <count>\ndata: {"clickCount":N,"clickAnalytics":{...}}\n\n`, the format
//! of the original app plus the id a browser sends back as `Last-Event-ID`.

use bytes::Bytes;
use serde::Serialize;

use crate::{
    analytics::{anonymise_ip, query::LiveStats},
    domain::{ClickEvent, DeviceClass, format_ms},
};

/// A comment line: keeps proxies and browsers from timing the stream out.
pub const HEARTBEAT: Bytes = Bytes::from_static(b": keep-alive\n\n");

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Frame<'a> {
    click_count: u64,
    click_analytics: Option<PublicAnalytics<'a>>,
}

/// What anyone watching a link may see of a click: the original app's fields, with the
/// address always anonymised (also with `--store-full-ip`). The rest is the owner's.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PublicAnalytics<'a> {
    short_code: &'a str,
    created_at: String,
    ip_address: Option<String>,
    user_agent: &'a str,
    country: Option<&'a str>,
}

impl<'a> PublicAnalytics<'a> {
    fn of(code: &'a str, event: &'a ClickEvent) -> Self {
        Self {
            short_code: code,
            created_at: format_ms(event.at),
            ip_address: event
                .ip
                .as_deref()
                .and_then(|ip| ip.parse().ok())
                .map(|ip| anonymise_ip(ip).to_string()),
            user_agent: &event.user_agent,
            country: event.country.as_deref(),
        }
    }
}

/// The details of one click as its owner sees them (the API).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Analytics<'a> {
    short_code: &'a str,
    created_at: String,
    ip_address: Option<&'a str>,
    user_agent: &'a str,
    referer: Option<&'a str>,
    country: Option<&'a str>,
    browser: &'a str,
    os: &'a str,
    device: DeviceClass,
    bot: bool,
}

impl<'a> Analytics<'a> {
    pub fn of(code: &'a str, event: &'a ClickEvent) -> Self {
        Self {
            short_code: code,
            created_at: format_ms(event.at),
            ip_address: event.ip.as_deref(),
            user_agent: &event.user_agent,
            referer: event.referer.as_deref(),
            country: event.country.as_deref(),
            browser: &event.browser,
            os: &event.os,
            device: event.device,
            bot: event.bot,
        }
    }
}

/// The frame for a code's current state.
pub fn state_frame(code: &str, count: u64, last: Option<&ClickEvent>) -> Bytes {
    let frame = Frame {
        click_count: count,
        click_analytics: last.map(|e| PublicAnalytics::of(code, e)),
    };
    // Serialising a struct of strings and numbers cannot fail.
    let json = serde_json::to_string(&frame).unwrap_or_default();
    Bytes::from(format!("id: {count}\ndata: {json}\n\n"))
}

/// A `stats` event: the link's aggregates as anyone watching may see them (no referrers).
/// Named, so the original's `EventSource` clients (which listen to unnamed events) never see
/// it, and without an id, so `Last-Event-ID` stays the count.
pub fn stats_frame(stats: &LiveStats) -> Bytes {
    let json = serde_json::to_string(stats).unwrap_or_default();
    Bytes::from(format!("event: stats\ndata: {json}\n\n"))
}

/// The last event of a deleted link's streams: `event: deleted` with the final `clickCount`
/// (every click answered with a redirect before the deletion; the original's `onmessage`
/// clients never see it; their stream just ends, and its reconnection gets `404`).
pub fn deleted_frame(code: &str, count: u64) -> Bytes {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Deleted<'a> {
        code: &'a str,
        deleted: bool,
        click_count: u64,
    }
    let json = serde_json::to_string(&Deleted {
        code,
        deleted: true,
        click_count: count,
    })
    .unwrap_or_default();
    Bytes::from(format!("event: deleted\ndata: {json}\n\n"))
}

/// Tells the browser how long to wait before reconnecting.
pub fn retry_frame(millis: u64) -> Bytes {
    Bytes::from(format!("retry: {millis}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_frames_match_the_original_format_plus_an_id() {
        let empty = state_frame("abc", 0, None);
        assert_eq!(
            &empty[..],
            b"id: 0\ndata: {\"clickCount\":0,\"clickAnalytics\":null}\n\n"
        );
        let event = ClickEvent {
            seq: 3,
            at: 0,
            // Stored in full (--store-full-ip): the public frame still anonymises it.
            ip: Some("192.0.2.77".into()),
            user_agent: "ua \"quoted\"\nline".into(),
            referer: Some("https://private.example/".into()),
            country: None,
            browser: "Chrome".into(),
            os: "Linux".into(),
            device: DeviceClass::Desktop,
            bot: false,
        };
        let frame = state_frame("abc", 3, Some(&event));
        let text = String::from_utf8(frame.to_vec()).unwrap_or_default();
        assert_eq!(
            text,
            "id: 3\ndata: {\"clickCount\":3,\"clickAnalytics\":{\"shortCode\":\"abc\",\
             \"createdAt\":\"1970-01-01T00:00:00Z\",\"ipAddress\":\"192.0.2.0\",\
             \"userAgent\":\"ua \\\"quoted\\\"\\nline\",\"country\":null}}\n\n",
            "only the original's fields, the address anonymised, no referrer or browser"
        );
        assert_eq!(
            text.matches('\n').count(),
            3,
            "a newline in a value must not split the frame"
        );
    }

    #[test]
    fn the_deleted_frame_is_named_and_carries_the_final_count() {
        assert_eq!(
            &deleted_frame("a\"b", 42)[..],
            b"event: deleted\ndata: {\"code\":\"a\\\"b\",\"deleted\":true,\"clickCount\":42}\n\n"
        );
    }
}
