//! The stats API's window (`from`, `to`, `interval`, `tz`) and the answer it gets, computed
//! from a link's [`Aggregates`] alone: its cost follows the number of buckets in the window,
//! never the number of clicks.
//!
//! - Minute and hour buckets start on whole UTC minutes and hours; `t` is shown in `tz`.
//! - Day buckets are UTC days. In another zone, days are local days summed from hour buckets
//!   (exact for zones a whole number of hours from UTC), so they reach back as far as hour
//!   buckets are kept.
//! - A window reaching back past what its interval keeps starts where the kept buckets start;
//!   the answer's `from` says where that is. `totals` are the sum of the `series`.
//! - Top lists are kept per UTC day: a window's top lists cover the UTC days it touches
//!   (`topFrom`, `topTo`); without `from` and `to`, the link's whole life.

mod series;
mod shapes;

use jiff::{Timestamp, civil::Date, tz::TimeZone};

use super::aggregates::{AggregateSettings, Aggregates, DAY_MS, HOUR_MS, Interval, floor};
use series::{Series, series};
pub use shapes::{Entry, LiveStats, Minutes, Point, StatsAnswer, Top, Totals};

/// The most points one answer may have.
pub const MAX_POINTS: i64 = 10_000;

/// Why a stats question was refused (a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("interval must be minute, hour or day")]
    Interval,
    #[error("tz must be an IANA time zone name (Europe/Berlin) or an offset (+05:30)")]
    TimeZone,
    #[error("{0} must be an RFC 3339 time (2026-11-30T10:00:00Z) or a date (2026-11-30)")]
    Time(&'static str),
    #[error("from must be before to")]
    Order,
    #[error(
        "the window holds {points} {interval} buckets; at most {MAX_POINTS}: ask for a shorter window or a longer interval"
    )]
    TooLong { points: i64, interval: &'static str },
}

/// A parsed stats question.
#[derive(Debug, Clone)]
pub struct StatsQuery {
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub interval: Interval,
    pub tz: TimeZone,
    pub tz_name: String,
}

impl StatsQuery {
    /// The whole life of a link, by day, in UTC.
    pub fn whole_life() -> Self {
        Self {
            from: None,
            to: None,
            interval: Interval::Day,
            tz: TimeZone::UTC,
            tz_name: "UTC".into(),
        }
    }

    /// From the raw query parameters (absent ones are `None`).
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        interval: Option<&str>,
        tz: Option<&str>,
    ) -> Result<Self, QueryError> {
        let interval = match interval {
            None => Interval::Day,
            Some(text) => Interval::parse(text).ok_or(QueryError::Interval)?,
        };
        let (tz, tz_name) = match tz {
            None => (TimeZone::UTC, "UTC".to_owned()),
            Some(name) => (parse_zone(name)?, name.to_owned()),
        };
        let from = from
            .map(|t| parse_time(t, &tz, false).ok_or(QueryError::Time("from")))
            .transpose()?;
        let to = to
            .map(|t| parse_time(t, &tz, true).ok_or(QueryError::Time("to")))
            .transpose()?;
        if let (Some(from), Some(to)) = (from, to)
            && from >= to
        {
            return Err(QueryError::Order);
        }
        Ok(Self {
            from,
            to,
            interval,
            tz,
            tz_name,
        })
    }

    fn utc(&self) -> bool {
        self.tz.iana_name() == Some("UTC")
            || self.tz.to_fixed_offset().is_ok_and(|o| o.seconds() == 0)
    }
}

fn parse_zone(name: &str) -> Result<TimeZone, QueryError> {
    if let Some(sign) = name
        .strip_prefix('+')
        .map(|r| (1, r))
        .or(name.strip_prefix('-').map(|r| (-1, r)))
    {
        let (sign, rest) = sign;
        let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
        let (h, m): (i32, i32) = (
            h.parse().map_err(|_| QueryError::TimeZone)?,
            m.parse().map_err(|_| QueryError::TimeZone)?,
        );
        if !(0..=18).contains(&h) || !(0..60).contains(&m) {
            return Err(QueryError::TimeZone);
        }
        let offset = jiff::tz::Offset::from_seconds(sign * (h * 3600 + m * 60))
            .map_err(|_| QueryError::TimeZone)?;
        return Ok(TimeZone::fixed(offset));
    }
    if name.len() > 64 {
        return Err(QueryError::TimeZone);
    }
    TimeZone::get(name).map_err(|_| QueryError::TimeZone)
}

/// An RFC 3339 time, or a date in `tz` (its start; with `end`, the start of the next day, so
/// `to=2026-11-30` includes that day).
fn parse_time(text: &str, tz: &TimeZone, end: bool) -> Option<i64> {
    if let Ok(ts) = text.parse::<Timestamp>() {
        return Some(ts.as_millisecond());
    }
    let date: Date = text.parse().ok()?;
    let date = if end { date.tomorrow().ok()? } else { date };
    Some(
        date.to_zoned_datetime(tz.clone())
            .ok()?
            .timestamp()
            .as_millisecond(),
    )
}

/// RFC 3339 in `tz` (`Z` in UTC).
fn show(ms: i64, query: &StatsQuery) -> String {
    let Ok(ts) = Timestamp::from_millisecond(ms) else {
        return String::new();
    };
    if query.utc() {
        return ts.to_string();
    }
    ts.to_zoned_datetime(query.tz.clone())
        .strftime("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

/// The start of the local day holding `ms`, and of the next.
fn local_day(ms: i64, tz: &TimeZone) -> Option<(i64, i64)> {
    let zdt = Timestamp::from_millisecond(ms)
        .ok()?
        .to_zoned_datetime(tz.clone());
    let start = zdt.start_of_day().ok()?;
    let next = start.tomorrow().ok()?.start_of_day().ok()?;
    Some((
        start.timestamp().as_millisecond(),
        next.timestamp().as_millisecond(),
    ))
}

/// Answers `query` from `aggregates`, for a link created at `created_at`, at time `now`.
pub fn answer(
    code: &str,
    aggregates: &Aggregates,
    query: &StatsQuery,
    settings: &AggregateSettings,
    created_at: i64,
    now: i64,
) -> Result<StatsAnswer, QueryError> {
    let Series {
        start,
        cut,
        to,
        points,
        sum,
        visitors,
    } = series(aggregates, query, settings, created_at, now)?;
    // The whole life's top lists, unless the series was cut short: then those of its days.
    let whole_life = query.from.is_none() && query.to.is_none() && !cut;
    let (top_from, top_to) = if whole_life {
        (created_at, to)
    } else {
        let from = if cut {
            start
        } else {
            query.from.unwrap_or(created_at).min(to)
        };
        (floor(from, DAY_MS), floor(to - 1, DAY_MS) + DAY_MS)
    };
    let window;
    let tops = if whole_life {
        aggregates.life()
    } else {
        window = aggregates.tops_between(top_from, top_to);
        &window
    };
    Ok(StatsAnswer {
        code: code.to_owned(),
        from: show(start, query),
        to: show(to, query),
        interval: query.interval,
        tz: query.tz_name.clone(),
        totals: Totals {
            clicks: sum.clicks,
            human_clicks: sum.human,
            bot_clicks: sum.bots(),
            unique_visitors: visitors,
        },
        series: points,
        top: Top::of(tops, None, true),
        top_from: show(top_from, query),
        top_to: show(top_to, query),
        clicks_not_in_aggregates: aggregates.missing(),
    })
}

pub const LIVE_TOP: usize = 10;

pub fn live(aggregates: &Aggregates, settings: &AggregateSettings, now: i64) -> LiveStats {
    let hour = StatsQuery {
        from: Some(now - HOUR_MS + super::aggregates::MINUTE_MS),
        to: Some(now + 1),
        interval: Interval::Minute,
        tz: TimeZone::UTC,
        tz_name: "UTC".into(),
    };
    let points =
        series(aggregates, &hour, settings, now, now).map_or_else(|_| Vec::new(), |s| s.points);
    let totals = aggregates.totals();
    let from_ms = points.first().map_or(now, |p| p.ms);
    LiveStats {
        totals: Totals {
            clicks: totals.clicks,
            human_clicks: totals.human,
            bot_clicks: totals.bots(),
            unique_visitors: aggregates.visitors(),
        },
        minutes: Minutes {
            from: show(from_ms, &hour),
            from_ms,
            step_ms: super::aggregates::MINUTE_MS,
            clicks: points.iter().map(|p| p.counts.clicks).collect(),
            human_clicks: points.iter().map(|p| p.counts.human_clicks).collect(),
        },
        top: Top::of(aggregates.life(), Some(LIVE_TOP), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        analytics::aggregates::{MINUTE_MS, VisitorKey},
        domain::{ClickEvent, DeviceClass},
    };

    fn agg_with(times: &[i64]) -> Aggregates {
        let key = VisitorKey::new([0; 32]);
        let settings = AggregateSettings::default();
        let mut agg = Aggregates::default();
        for (i, at) in times.iter().enumerate() {
            let e = ClickEvent {
                seq: i as u64 + 1,
                at: *at,
                ip: Some(format!("10.0.{i}.1")),
                user_agent: "ua".into(),
                referer: None,
                country: None,
                browser: "Chrome".into(),
                os: "Linux".into(),
                device: DeviceClass::Desktop,
                bot: i % 2 == 1,
            };
            assert_eq!(agg.fold(&e, &key, &settings), Ok(()));
        }
        agg
    }

    #[test]
    fn parses_and_refuses_windows() {
        assert!(StatsQuery::parse(None, None, Some("week"), None).is_err());
        assert_eq!(
            StatsQuery::parse(Some("2026-11-30"), Some("2026-11-29"), None, None).err(),
            Some(QueryError::Order)
        );
        assert_eq!(
            StatsQuery::parse(Some("yesterday"), None, None, None).err(),
            Some(QueryError::Time("from"))
        );
        assert_eq!(
            StatsQuery::parse(None, None, None, Some("Mars/Olympus")).err(),
            Some(QueryError::TimeZone)
        );
        let q = StatsQuery::parse(Some("2026-11-30"), Some("2026-11-30"), None, Some("+02:00"));
        let q = q.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            q.to.unwrap_or(0) - q.from.unwrap_or(0),
            DAY_MS,
            "a date `to` includes its day"
        );
        assert!(StatsQuery::parse(None, None, None, Some("Europe/Berlin")).is_ok());
    }

    #[test]
    fn the_series_fills_empty_buckets_and_the_totals_are_its_sum() {
        let day0 = 20_000 * DAY_MS;
        let agg = agg_with(&[
            day0 + 5 * MINUTE_MS,
            day0 + 5 * MINUTE_MS + 1,
            day0 + 2 * DAY_MS,
        ]);
        let settings = AggregateSettings::default();
        let whole = StatsQuery::whole_life();
        let a = answer("c", &agg, &whole, &settings, day0, day0 + 2 * DAY_MS + 10)
            .unwrap_or_else(|e| panic!("{e}"));
        let clicks: Vec<u64> = a.series.iter().map(|p| p.counts.clicks).collect();
        assert_eq!(clicks, vec![2, 0, 1]);
        assert_eq!(a.totals.clicks, 3);
        assert_eq!(a.totals.human_clicks, 2);
        assert_eq!(a.totals.bot_clicks, 1);
        assert_eq!(a.series[0].t, "2024-10-04T00:00:00Z");

        // In a zone two hours ahead, the first two clicks (00:05 UTC) are on the local day
        // that began at 22:00 UTC the day before.
        let q = StatsQuery::parse(None, None, Some("day"), Some("+02:00"))
            .unwrap_or_else(|e| panic!("{e}"));
        let a = answer("c", &agg, &q, &settings, day0, day0 + 2 * DAY_MS + 10)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.series[0].t, "2024-10-04T00:00:00+02:00");
        assert_eq!(a.series[0].counts.clicks, 2);
        assert_eq!(a.totals.clicks, 3);
    }

    /// In a zone whose days begin at half past an hour, a click in the first half hour of a
    /// local day is on that day while minute buckets are kept, and the days still sum to the
    /// totals; past the minute buckets' retention the whole hour counts for the day it began.
    #[test]
    fn a_half_hour_zone_splits_the_hour_its_days_begin_in() {
        let day0 = 20_000 * DAY_MS;
        // 18:40 UTC is 00:10 the next day at +05:30; 18:10 UTC is 23:40 the same day there.
        let agg = agg_with(&[
            day0 + 18 * HOUR_MS + 10 * MINUTE_MS,
            day0 + 18 * HOUR_MS + 40 * MINUTE_MS,
            day0 + 18 * HOUR_MS + 45 * MINUTE_MS,
        ]);
        let settings = AggregateSettings::default();
        let q = StatsQuery::parse(None, None, Some("day"), Some("+05:30"))
            .unwrap_or_else(|e| panic!("{e}"));
        let now = day0 + 19 * HOUR_MS;
        let a = answer("c", &agg, &q, &settings, day0, now).unwrap_or_else(|e| panic!("{e}"));
        let days: Vec<(&str, u64)> = a
            .series
            .iter()
            .map(|p| (p.t.as_str(), p.counts.clicks))
            .collect();
        assert_eq!(
            days,
            vec![
                ("2024-10-04T00:00:00+05:30", 1),
                ("2024-10-05T00:00:00+05:30", 2)
            ]
        );
        assert_eq!(a.totals.clicks, 3);

        // Minute buckets kept for less than a day: asked two days later, the whole 18:00 UTC
        // hour is on the day it began in.
        let short = AggregateSettings {
            minute_retention_ms: HOUR_MS,
            ..AggregateSettings::default()
        };
        let later = day0 + 2 * DAY_MS;
        let a = answer("c", &agg, &q, &short, day0, later).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.series[0].counts.clicks, 3, "{:?}", a.series);
        assert_eq!(a.totals.clicks, 3);
    }

    #[test]
    fn a_window_too_long_for_its_interval_is_refused() {
        let agg = agg_with(&[]);
        let q = StatsQuery::parse(Some("2000-01-01"), Some("2024-10-01"), Some("hour"), None)
            .unwrap_or_else(|e| panic!("{e}"));
        // Hour buckets reach back 90 days, so this window is cut there, not refused.
        let now = 20_000 * DAY_MS;
        assert!(answer("c", &agg, &q, &AggregateSettings::default(), 0, now).is_ok());
        let keep_all = AggregateSettings {
            minute_retention_ms: i64::MAX / 4,
            ..AggregateSettings::default()
        };
        let q = StatsQuery::parse(Some("2000-01-01"), Some("2026-01-01"), Some("minute"), None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            answer("c", &agg, &q, &keep_all, 0, now),
            Err(QueryError::TooLong { .. })
        ));
    }
}
