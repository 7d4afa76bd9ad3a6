//! A link's aggregates: clicks over time (minute, hour and day buckets), unique visitors per
//! bucket, and top lists (referrer host, country, browser, OS, device) split into humans and
//! bots. They are a pure function of the link's click log taken in order: the actor folds each
//! committed click in, a snapshot tagged with the last click it covers is stored now and then,
//! and a restart folds the clicks after that snapshot in again, so the aggregates always
//! describe exactly the stored clicks.
//!
//! Every breakdown sums to the count: a top list holds at most `top_values` distinct values,
//! in the order they first came, and the rest of its clicks under `(other)`.

mod snapshot;
#[cfg(test)]
mod tests;
mod tops;
mod visitors;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::ClickEvent;
pub use snapshot::{decode_snapshot, encode_snapshot};
use tops::Facets;
pub use tops::{Breakdown, TopList, device_name, referrer_host};
pub use visitors::{VisitorKey, Visitors};

pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 60 * MINUTE_MS;
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// The value a top list files a click under when the click has none.
pub const DIRECT: &str = "(direct)";
pub const UNKNOWN: &str = "(unknown)";
/// The values past a top list's cap.
pub const OTHER: &str = "(other)";

/// How long buckets are kept and how long top lists may grow.
#[derive(Debug, Clone)]
pub struct AggregateSettings {
    pub minute_retention_ms: i64,
    pub hour_retention_ms: i64,
    /// `None`: day buckets are kept for ever.
    pub day_retention_ms: Option<i64>,
    /// Distinct values a top list keeps before filing the rest under `(other)`.
    pub top_values: usize,
    /// A link's snapshot is stored once this many clicks are folded in since the last one and
    /// `snapshot_gap` has passed (and whenever its actor stops): a restart after a crash folds
    /// in about this many clicks per link again, at most.
    pub snapshot_clicks: u64,
    pub snapshot_gap: std::time::Duration,
}

impl Default for AggregateSettings {
    fn default() -> Self {
        Self {
            minute_retention_ms: 48 * HOUR_MS,
            hour_retention_ms: 90 * DAY_MS,
            day_retention_ms: None,
            top_values: 100,
            snapshot_clicks: 10_000,
            snapshot_gap: std::time::Duration::from_secs(10),
        }
    }
}

/// Clicks, all and by humans; the rest are bots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub clicks: u64,
    pub human: u64,
}

impl Counts {
    fn add(&mut self, human: bool) {
        self.clicks += 1;
        self.human += u64::from(human);
    }

    fn merge(&mut self, other: &Counts) {
        self.clicks += other.clicks;
        self.human += other.human;
    }

    pub fn bots(&self) -> u64 {
        self.clicks - self.human
    }
}

/// One time bucket.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Bucket {
    pub counts: Counts,
    pub visitors: Visitors,
}

impl Bucket {
    fn add(&mut self, human: bool, visitor: u64) {
        self.counts.add(human);
        self.visitors.insert_hash(visitor);
    }
}

/// Why a click could not be folded in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("click {got} cannot follow the aggregates of clicks 1..={covers}")]
pub struct OutOfOrder {
    pub covers: u64,
    pub got: u64,
}

/// Start of the bucket of width `width` holding `ms`.
pub fn floor(ms: i64, width: i64) -> i64 {
    ms.div_euclid(width) * width
}

/// The aggregates of clicks 1..=`covers` of one link.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Aggregates {
    covers: u64,
    /// Clicks 1..=covers that are not in the aggregates (see [`Aggregates::skip_to`]).
    #[serde(default)]
    missing: u64,
    totals: Counts,
    visitors: Visitors,
    minutes: BTreeMap<i64, Bucket>,
    hours: BTreeMap<i64, Bucket>,
    days: BTreeMap<i64, Bucket>,
    /// Top lists per UTC day, for windows.
    day_tops: BTreeMap<i64, Breakdown>,
    /// Top lists of the link's whole life.
    life: Breakdown,
}

impl Aggregates {
    /// The last click folded in (0: none).
    pub fn covers(&self) -> u64 {
        self.covers
    }

    pub fn totals(&self) -> Counts {
        self.totals
    }

    pub fn visitors(&self) -> u64 {
        self.visitors.estimate() as u64
    }

    pub fn life(&self) -> &Breakdown {
        &self.life
    }

    /// Clicks the aggregates never saw: a log whose start expired (`--click-retention-days`)
    /// and whose snapshot was lost.
    pub fn missing(&self) -> u64 {
        self.missing
    }

    /// Goes on from click `seq` when the clicks before it are gone from the log: they are
    /// counted as missing, not folded in.
    pub fn skip_to(&mut self, seq: u64) {
        if seq > self.covers + 1 {
            self.missing += seq - 1 - self.covers;
            self.covers = seq - 1;
        }
    }

    /// Folds in the next click. Clicks come in order of their numbers, each once.
    pub fn fold(
        &mut self,
        event: &ClickEvent,
        key: &VisitorKey,
        settings: &AggregateSettings,
    ) -> Result<(), OutOfOrder> {
        if event.seq != self.covers + 1 {
            return Err(OutOfOrder {
                covers: self.covers,
                got: event.seq,
            });
        }
        let facets = Facets::of(event);
        let visitor = key.visitor(event);
        let human = facets.human;
        let cap = settings.top_values;
        self.totals.add(human);
        self.visitors.insert_hash(visitor);
        let minute = floor(event.at, MINUTE_MS);
        let new_minute = !self.minutes.contains_key(&minute);
        self.minutes.entry(minute).or_default().add(human, visitor);
        self.hours
            .entry(floor(event.at, HOUR_MS))
            .or_default()
            .add(human, visitor);
        let day = floor(event.at, DAY_MS);
        self.days.entry(day).or_default().add(human, visitor);
        self.day_tops.entry(day).or_default().add(&facets, cap);
        self.life.add(&facets, cap);
        self.covers = event.seq;
        if new_minute {
            // Old buckets go once a minute at most, measured from the newest click.
            self.prune(event.at, settings);
        }
        Ok(())
    }

    /// Drops the buckets past their retention, as of `now` (epoch ms).
    pub fn prune(&mut self, now: i64, settings: &AggregateSettings) {
        fn keep_from<T>(map: &mut BTreeMap<i64, T>, horizon: i64) {
            *map = map.split_off(&horizon);
        }
        // A bucket goes once all of it is past the retention.
        let horizon = |keep: i64, width: i64| floor(now.saturating_sub(keep), width);
        keep_from(
            &mut self.minutes,
            horizon(settings.minute_retention_ms, MINUTE_MS),
        );
        keep_from(
            &mut self.hours,
            horizon(settings.hour_retention_ms, HOUR_MS),
        );
        if let Some(keep) = settings.day_retention_ms {
            keep_from(&mut self.days, horizon(keep, DAY_MS));
            keep_from(&mut self.day_tops, horizon(keep, DAY_MS));
        }
    }

    /// The buckets of `interval` whose start lies in `[from, to)`.
    pub fn buckets(
        &self,
        interval: Interval,
        from: i64,
        to: i64,
    ) -> impl Iterator<Item = (i64, &Bucket)> {
        let map = match interval {
            Interval::Minute => &self.minutes,
            Interval::Hour => &self.hours,
            Interval::Day => &self.days,
        };
        map.range(from..to.max(from)).map(|(t, b)| (*t, b))
    }

    /// The top lists of the UTC days whose start lies in `[from, to)`.
    pub fn tops_between(&self, from: i64, to: i64) -> Breakdown {
        let mut out = Breakdown::default();
        for day in self.day_tops.range(from..to.max(from)).map(|(_, b)| b) {
            out.merge(day);
        }
        out
    }

    /// Unique visitors in `[from, to)`. A visitor is one per UTC day (the day is in the hash),
    /// so the visitors of a window are the sum over its days: a whole day reads its day
    /// bucket's estimate, a part of a day merges the hour (or minute) buckets in it. The cost
    /// follows the number of days, not of buckets.
    pub fn visitors_between(&self, from: i64, to: i64) -> u64 {
        let mut total = 0;
        let mut day = floor(from, DAY_MS);
        while day < to {
            let (lo, hi) = (from.max(day), to.min(day + DAY_MS));
            total += if lo == day && hi == day + DAY_MS {
                self.days
                    .get(&day)
                    .map_or(0, |bucket| bucket.visitors.estimate() as u64)
            } else {
                // Hour buckets when the part is whole hours or minute buckets no longer reach
                // back to it (then the part is widened to whole hours).
                let minutes_kept = self.minutes.keys().next().is_some_and(|&m| m <= lo);
                let (source, lo, hi) = if lo % HOUR_MS == 0 && hi % HOUR_MS == 0 || !minutes_kept {
                    (Interval::Hour, floor(lo, HOUR_MS), hi)
                } else {
                    (Interval::Minute, lo, hi)
                };
                let mut part = Visitors::default();
                for (_, bucket) in self.buckets(source, lo, hi) {
                    part.merge(&bucket.visitors);
                }
                part.estimate() as u64
            };
            day += DAY_MS;
        }
        total
    }

    /// Checks the invariant every stored state keeps: the totals, the day series and every
    /// top list count the same clicks as `covers` (when no day bucket has been let go).
    pub fn check(&self) -> Result<(), String> {
        let count = self.covers - self.missing;
        if self.totals.clicks != count {
            return Err(format!(
                "totals count {} of {count} clicks",
                self.totals.clicks
            ));
        }
        for (name, list) in self.life.lists() {
            let sum = list.sum();
            if sum != self.totals {
                return Err(format!(
                    "top list {name} sums to {sum:?}, the totals are {:?}",
                    self.totals
                ));
            }
        }
        Ok(())
    }
}

/// A series' bucket width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "Interval"))]
#[serde(rename_all = "lowercase")]
pub enum Interval {
    Minute,
    Hour,
    Day,
}

impl Interval {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "minute" => Some(Self::Minute),
            "hour" => Some(Self::Hour),
            "day" => Some(Self::Day),
            _ => None,
        }
    }

    pub fn width_ms(self) -> i64 {
        match self {
            Self::Minute => MINUTE_MS,
            Self::Hour => HOUR_MS,
            Self::Day => DAY_MS,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }
}
