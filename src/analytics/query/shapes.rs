//! The shapes of what the stats API answers ([`StatsAnswer`]) and of what a stream's `stats`
//! event carries ([`LiveStats`]): totals, a series of points and top lists.

use serde::Serialize;

use super::super::aggregates::{Breakdown, Interval, OTHER, TopList};

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, salvo_oapi::ToSchema)]
#[salvo(schema(name = "Totals"))]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub clicks: u64,
    pub human_clicks: u64,
    pub bot_clicks: u64,
    pub unique_visitors: u64,
}

#[derive(Debug, Clone, Serialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "Point"))]
#[serde(rename_all = "camelCase")]
pub struct Point {
    pub t: String,
    /// The bucket start in epoch milliseconds (for charts).
    pub ms: i64,
    #[serde(flatten)]
    pub counts: Totals,
}

#[derive(Debug, Clone, Serialize, salvo_oapi::ToSchema)]
#[serde(rename_all = "camelCase")]
#[salvo(schema(name = "TopEntry"))]
pub struct Entry {
    pub value: String,
    pub clicks: u64,
    pub human_clicks: u64,
    pub bot_clicks: u64,
}

#[derive(Debug, Clone, Default, Serialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "Top"))]
pub struct Top {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referrers: Option<Vec<Entry>>,
    pub countries: Vec<Entry>,
    pub browsers: Vec<Entry>,
    pub os: Vec<Entry>,
    pub devices: Vec<Entry>,
}

impl Top {
    /// All of every list (`limit` None), or the first `limit` entries of each (the rest
    /// folded into `(other)`); referrers only when `referrers` (owner-only data).
    pub fn of(breakdown: &Breakdown, limit: Option<usize>, referrers: bool) -> Self {
        let list = |list: &TopList| {
            let ranked = list.ranked();
            let mut entries: Vec<Entry> = Vec::with_capacity(ranked.len());
            let mut rest = Entry {
                value: OTHER.to_owned(),
                clicks: 0,
                human_clicks: 0,
                bot_clicks: 0,
            };
            for (i, (value, counts)) in ranked.into_iter().enumerate() {
                if limit.is_some_and(|n| i >= n) || value == OTHER {
                    rest.clicks += counts.clicks;
                    rest.human_clicks += counts.human;
                    rest.bot_clicks += counts.bots();
                } else {
                    entries.push(Entry {
                        value: value.to_owned(),
                        clicks: counts.clicks,
                        human_clicks: counts.human,
                        bot_clicks: counts.bots(),
                    });
                }
            }
            if rest.clicks > 0 {
                entries.push(rest);
            }
            entries
        };
        Self {
            referrers: referrers.then(|| list(&breakdown.referrers)),
            countries: list(&breakdown.countries),
            browsers: list(&breakdown.browsers),
            os: list(&breakdown.os),
            devices: list(&breakdown.devices),
        }
    }
}

/// The answer of `GET /api/links/{code}/stats`.
#[derive(Debug, Clone, Serialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "StatsAnswer"))]
#[serde(rename_all = "camelCase")]
pub struct StatsAnswer {
    pub code: String,
    pub from: String,
    pub to: String,
    pub interval: Interval,
    pub tz: String,
    pub totals: Totals,
    pub series: Vec<Point>,
    pub top: Top,
    pub top_from: String,
    pub top_to: String,
    /// Clicks counted but not in the aggregates: only when retention deleted raw clicks and
    /// the snapshot covering them was then lost (see the README). Absent when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub clicks_not_in_aggregates: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a `stats` event carries: the link's whole-life totals, its last hour by minute (as two
/// arrays, to keep the event small: it goes to every viewer), and the coarse top lists (the
/// first [`LIVE_TOP`](super::LIVE_TOP) values of each; no referrers).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveStats {
    pub totals: Totals,
    pub minutes: Minutes,
    pub top: Top,
}

/// Clicks per minute: `clicks[i]` is the minute starting at `fromMs + i * stepMs`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Minutes {
    pub from: String,
    pub from_ms: i64,
    pub step_ms: i64,
    pub clicks: Vec<u64>,
    pub human_clicks: Vec<u64>,
}
