//! The series of a window: one point per bucket of its interval, from the buckets retention
//! has kept, with the sum of their clicks and the window's unique visitors.

use super::super::aggregates::{
    AggregateSettings, Aggregates, Bucket, Counts, HOUR_MS, Interval, floor,
};
use super::{MAX_POINTS, Point, QueryError, StatsQuery, Totals, local_day, show};

/// The series a window asks for: its first bucket start, the points, and their sum.
pub(super) struct Series {
    pub start: i64,
    /// The window was cut short by retention.
    pub cut: bool,
    pub to: i64,
    pub points: Vec<Point>,
    /// The clicks of the points.
    pub sum: Counts,
    pub visitors: u64,
}

/// The points of a series as they are made, and the sum of their clicks.
struct Points<'q> {
    query: &'q StatsQuery,
    list: Vec<Point>,
    sum: Counts,
}

impl Points<'_> {
    fn push(&mut self, t: i64, bucket: &Bucket, visitors: u64) {
        self.list.push(Point {
            t: show(t, self.query),
            ms: t,
            counts: Totals {
                clicks: bucket.counts.clicks,
                human_clicks: bucket.counts.human,
                bot_clicks: bucket.counts.bots(),
                unique_visitors: visitors,
            },
        });
        self.sum.clicks += bucket.counts.clicks;
        self.sum.human += bucket.counts.human;
    }
}

pub(super) fn series(
    aggregates: &Aggregates,
    query: &StatsQuery,
    settings: &AggregateSettings,
    created_at: i64,
    now: i64,
) -> Result<Series, QueryError> {
    let to = query.to.unwrap_or(now + 1);
    let from = query.from.unwrap_or(created_at).min(to);
    let local_days = query.interval == Interval::Day && !query.utc();
    let width = query.interval.width_ms();
    let horizon = horizon(query, settings, local_days, now);
    let floored = floor(from, width);
    let mut start = floored.max(horizon);
    let count = (to - start + width - 1) / width;
    if count > MAX_POINTS {
        return Err(QueryError::TooLong {
            points: count,
            interval: query.interval.as_str(),
        });
    }
    let mut points = Points {
        query,
        list: Vec::with_capacity(usize::try_from(count).unwrap_or(0)),
        sum: Counts::default(),
    };
    // The end of the last bucket.
    let end;
    if local_days {
        let minutes_from = floor(now.saturating_sub(settings.minute_retention_ms), HOUR_MS);
        (start, end) = local_day_points(
            aggregates,
            from.max(horizon),
            (horizon, minutes_from),
            to,
            &mut points,
        )?;
    } else {
        end = bucket_points(aggregates, start, to, &mut points);
    }
    let visitors = aggregates.visitors_between(start, end);
    Ok(Series {
        start,
        cut: start > floored,
        to,
        points: points.list,
        sum: points.sum,
        visitors,
    })
}

/// How far back the buckets of the interval asked for reach (what retention has left), as
/// the start of the first whole bucket; local days are made of hour buckets.
fn horizon(query: &StatsQuery, settings: &AggregateSettings, local_days: bool, now: i64) -> i64 {
    let width = query.interval.width_ms();
    let retention = match query.interval {
        Interval::Minute => Some(settings.minute_retention_ms),
        Interval::Hour => Some(settings.hour_retention_ms),
        // Local days are made of hour buckets.
        Interval::Day if local_days => Some(settings.hour_retention_ms),
        Interval::Day => settings.day_retention_ms,
    };
    let unit = if local_days { HOUR_MS } else { width };
    retention.map_or(i64::MIN, |keep| floor(now.saturating_sub(keep), unit))
}

/// One point per local day from the day holding `from` up to `to`, each summed from its hour
/// buckets: the start of the first day and the end of the last. In a zone whose days do not
/// begin on a whole hour (`+05:30`), the hour a day begins in is split between the two days by
/// its minute buckets while they are kept (from `minutes_from` on); past that the whole hour
/// counts for the day its start lies in. `horizons` is (hours kept from, minutes kept from).
fn local_day_points(
    aggregates: &Aggregates,
    from: i64,
    horizons: (i64, i64),
    to: i64,
    points: &mut Points<'_>,
) -> Result<(i64, i64), QueryError> {
    let (horizon, minutes_from) = horizons;
    let tz = &points.query.tz;
    let Some((first, next)) = local_day(from, tz) else {
        return Err(QueryError::TimeZone);
    };
    // A local day only partly kept in hour buckets is left out.
    let start = if first < horizon { next } else { first };
    let mut day = start;
    let mut end = start;
    while day < to {
        let Some((_, next)) = local_day(day, tz) else {
            break;
        };
        end = next;
        let mut bucket = Bucket::default();
        let mut add = |counts: &Counts| {
            bucket.counts.clicks += counts.clicks;
            bucket.counts.human += counts.human;
        };
        // The whole hours of the day, then the parts of the hours it begins and ends in.
        let (head, tail) = (floor(day, HOUR_MS), floor(next, HOUR_MS));
        let whole_from = if head == day { day } else { head + HOUR_MS };
        for (_, hour) in aggregates.buckets(Interval::Hour, whole_from, tail) {
            add(&hour.counts);
        }
        if head != day && head >= minutes_from {
            for (_, minute) in aggregates.buckets(Interval::Minute, day, head + HOUR_MS) {
                add(&minute.counts);
            }
        }
        if tail != next {
            if tail >= minutes_from {
                for (_, minute) in aggregates.buckets(Interval::Minute, tail, next) {
                    add(&minute.counts);
                }
            } else {
                for (_, hour) in aggregates.buckets(Interval::Hour, tail, tail + 1) {
                    add(&hour.counts);
                }
            }
        }
        points.push(day, &bucket, aggregates.visitors_between(day, next));
        day = next;
    }
    Ok((start, end))
}

/// One point per bucket of the query's interval from `start` up to `to`, empty where none
/// is kept: the end of the last.
fn bucket_points(aggregates: &Aggregates, start: i64, to: i64, points: &mut Points<'_>) -> i64 {
    let interval = points.query.interval;
    let width = interval.width_ms();
    let empty = Bucket::default();
    let mut kept = aggregates.buckets(interval, start, to).peekable();
    let mut t = start;
    while t < to {
        match kept.next_if(|(at, _)| *at == t) {
            Some((_, bucket)) => points.push(t, bucket, bucket.visitors.estimate() as u64),
            None => points.push(t, &empty, 0),
        }
        t += width;
    }
    t
}
