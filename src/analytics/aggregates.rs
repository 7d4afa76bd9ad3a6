//! A link's aggregates: clicks over time (minute, hour and day buckets), unique visitors per
//! bucket, and top lists (referrer host, country, browser, OS, device) split into humans and
//! bots. They are a pure function of the link's click log taken in order: the actor folds each
//! committed click in, a snapshot tagged with the last click it covers is stored now and then,
//! and a restart folds the clicks after that snapshot in again, so the aggregates always
//! describe exactly the stored clicks.
//!
//! Every breakdown sums to the count: a top list holds at most `top_values` distinct values,
//! in the order they first came, and the rest of its clicks under `(other)`.

use std::collections::{BTreeMap, HashMap};

use cardinality_estimator::CardinalityEstimator;
use serde::{Deserialize, Serialize};

use super::anonymise_ip;
use crate::domain::{ClickEvent, DeviceClass};

pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 60 * MINUTE_MS;
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// The value a top list files a click under when the click has none.
pub const DIRECT: &str = "(direct)";
pub const UNKNOWN: &str = "(unknown)";
/// The values past a top list's cap.
pub const OTHER: &str = "(other)";

/// A set of visitors, estimated: exact (as a small sorted array of 32-bit hash encodings) up to
/// 128 visitors, then a HyperLogLog++ of 2^12 six-bit registers (about 1.6% standard error).
pub type Visitors = CardinalityEstimator<u64>;

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

/// The clicks of one dimension by value, capped. Ten lookups per click (five lists, per day
/// and for the whole life) on short strings: foldhash, not the default SipHash (a profile of
/// 10,000 busy links showed the lookups at 4% of the process with SipHash).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TopList {
    values: HashMap<String, Counts, foldhash::fast::RandomState>,
    other: Counts,
}

impl TopList {
    fn add(&mut self, value: &str, human: bool, cap: usize) {
        if let Some(counts) = self.values.get_mut(value) {
            counts.add(human);
        } else if self.values.len() < cap {
            self.values.entry(value.to_owned()).or_default().add(human);
        } else {
            self.other.add(human);
        }
    }

    fn merge(&mut self, other: &TopList) {
        for (value, counts) in &other.values {
            self.values.entry(value.clone()).or_default().merge(counts);
        }
        self.other.merge(&other.other);
    }

    /// Values by clicks, most first (ties by value), then `(other)` if it has any.
    pub fn ranked(&self) -> Vec<(&str, Counts)> {
        let mut out: Vec<(&str, Counts)> = self
            .values
            .iter()
            .map(|(value, counts)| (value.as_str(), *counts))
            .collect();
        out.sort_unstable_by(|a, b| b.1.clicks.cmp(&a.1.clicks).then(a.0.cmp(b.0)));
        if self.other.clicks > 0 {
            out.push((OTHER, self.other));
        }
        out
    }

    pub fn sum(&self) -> Counts {
        let mut sum = self.other;
        for counts in self.values.values() {
            sum.merge(counts);
        }
        sum
    }
}

/// The five top lists.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Breakdown {
    pub referrers: TopList,
    pub countries: TopList,
    pub browsers: TopList,
    pub os: TopList,
    pub devices: TopList,
}

impl Breakdown {
    fn add(&mut self, click: &Facets<'_>, cap: usize) {
        let human = click.human;
        self.referrers.add(&click.referrer, human, cap);
        self.countries.add(click.country, human, cap);
        self.browsers.add(click.browser, human, cap);
        self.os.add(click.os, human, cap);
        self.devices.add(click.device, human, cap);
    }

    fn merge(&mut self, other: &Breakdown) {
        self.referrers.merge(&other.referrers);
        self.countries.merge(&other.countries);
        self.browsers.merge(&other.browsers);
        self.os.merge(&other.os);
        self.devices.merge(&other.devices);
    }

    /// Every list with its name, for checks that each sums to the count.
    pub fn lists(&self) -> [(&'static str, &TopList); 5] {
        [
            ("referrers", &self.referrers),
            ("countries", &self.countries),
            ("browsers", &self.browsers),
            ("os", &self.os),
            ("devices", &self.devices),
        ]
    }
}

/// What the top lists file one click under.
struct Facets<'a> {
    human: bool,
    referrer: std::borrow::Cow<'a, str>,
    country: &'a str,
    browser: &'a str,
    os: &'a str,
    device: &'a str,
}

impl<'a> Facets<'a> {
    fn of(event: &'a ClickEvent) -> Self {
        Self {
            human: !event.bot,
            referrer: referrer_host(event.referer.as_deref()),
            country: event.country.as_deref().unwrap_or(UNKNOWN),
            browser: &event.browser,
            os: &event.os,
            device: device_name(event.device),
        }
    }
}

pub fn device_name(device: DeviceClass) -> &'static str {
    match device {
        DeviceClass::Desktop => "desktop",
        DeviceClass::Mobile => "mobile",
        DeviceClass::Tablet => "tablet",
        DeviceClass::Bot => "bot",
        DeviceClass::Other => "other",
    }
}

/// The host a referrer names, without `www.`: `(direct)` when there is none, `(unknown)`
/// when it is not a URL with a host.
pub fn referrer_host(referer: Option<&str>) -> std::borrow::Cow<'static, str> {
    let Some(referer) = referer.map(str::trim).filter(|r| !r.is_empty()) else {
        return DIRECT.into();
    };
    match url::Url::parse(referer)
        .ok()
        .and_then(|url| url.host_str().map(str::to_ascii_lowercase))
    {
        Some(host) => host.strip_prefix("www.").unwrap_or(&host).to_owned().into(),
        None => UNKNOWN.into(),
    }
}

/// The secret that makes visitor hashes unlinkable to addresses: 32 random bytes made once per
/// store and kept in it, so a restart rebuilds the same unique counts.
#[derive(Clone)]
pub struct VisitorKey {
    k0: u64,
    k1: u64,
}

impl VisitorKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        let word = |at: usize| {
            let mut w = [0; 8];
            w.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(w)
        };
        // SipHash takes a 128-bit key; the two other words fold into it.
        Self {
            k0: word(0) ^ word(16),
            k1: word(8) ^ word(24),
        }
    }

    /// A keyed hash (SipHash-1-3, a keyed PRF) of (anonymised address, user agent, UTC day):
    /// one visitor per day. Never stored; only the sketch registers it sets are.
    pub fn visitor(&self, event: &ClickEvent) -> u64 {
        use std::hash::Hasher;
        let mut hash = siphasher::sip::SipHasher13::new_with_keys(self.k0, self.k1);
        match event
            .ip
            .as_deref()
            .and_then(|ip| ip.parse().ok())
            .map(anonymise_ip)
        {
            Some(std::net::IpAddr::V4(v4)) => hash.write(&v4.octets()),
            Some(std::net::IpAddr::V6(v6)) => hash.write(&v6.octets()),
            None => hash.write(&[]),
        }
        hash.write_u8(0xff);
        hash.write(event.user_agent.as_bytes());
        hash.write_u8(0xff);
        hash.write_i64(event.at.div_euclid(DAY_MS));
        hash.finish()
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

/// The stored form of a link's aggregates.
#[derive(Serialize, Deserialize)]
struct SnapshotRecord {
    v: u8,
    aggregates: Aggregates,
}

const SNAPSHOT_VERSION: u8 = 1;

/// Encodes aggregates for the `stats` keyspace (MessagePack, fields by position).
pub fn encode_snapshot(aggregates: &Aggregates) -> Option<Vec<u8>> {
    #[derive(Serialize)]
    struct Ref<'a> {
        v: u8,
        aggregates: &'a Aggregates,
    }
    rmp_serde::to_vec(&Ref {
        v: SNAPSHOT_VERSION,
        aggregates,
    })
    .ok()
}

pub fn decode_snapshot(bytes: &[u8]) -> Result<Aggregates, String> {
    let record: SnapshotRecord = rmp_serde::from_slice(bytes).map_err(|e| e.to_string())?;
    if record.v != SNAPSHOT_VERSION {
        return Err(format!("unknown aggregates version {}", record.v));
    }
    record.aggregates.check()?;
    Ok(record.aggregates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(
        seq: u64,
        at: i64,
        ip: &str,
        ua: &str,
        bot: bool,
        referer: Option<&str>,
    ) -> ClickEvent {
        ClickEvent {
            seq,
            at,
            ip: Some(ip.into()),
            user_agent: ua.into(),
            referer: referer.map(Into::into),
            country: Some("SE".into()),
            browser: "Firefox".into(),
            os: "Linux".into(),
            device: if bot {
                DeviceClass::Bot
            } else {
                DeviceClass::Desktop
            },
            bot,
        }
    }

    #[test]
    fn folds_in_order_and_every_breakdown_sums_to_the_count() {
        let key = VisitorKey::new([7; 32]);
        let settings = AggregateSettings {
            top_values: 2,
            ..AggregateSettings::default()
        };
        let mut agg = Aggregates::default();
        let refs = [
            Some("https://www.news.example/a"),
            Some("https://blog.example/"),
            None,
            Some("not a url"),
            Some("https://news.example/b"),
        ];
        for (i, referer) in refs.iter().enumerate() {
            let seq = i as u64 + 1;
            let e = event(
                seq,
                seq as i64 * HOUR_MS,
                "192.0.2.1",
                "ua",
                i == 2,
                *referer,
            );
            assert_eq!(agg.fold(&e, &key, &settings), Ok(()));
        }
        let skipped = event(9, 0, "192.0.2.1", "ua", false, None);
        assert_eq!(
            agg.fold(&skipped, &key, &settings),
            Err(OutOfOrder { covers: 5, got: 9 })
        );
        assert_eq!(agg.check(), Ok(()));
        assert_eq!(
            agg.totals(),
            Counts {
                clicks: 5,
                human: 4
            }
        );
        let referrers: Vec<(String, u64)> = agg
            .life()
            .referrers
            .ranked()
            .into_iter()
            .map(|(v, c)| (v.to_owned(), c.clicks))
            .collect();
        assert_eq!(
            referrers,
            vec![
                ("news.example".to_owned(), 2),
                ("blog.example".to_owned(), 1),
                (OTHER.to_owned(), 2),
            ],
            "two values kept (the first two seen), the rest under (other)"
        );
        let hours: Vec<i64> = agg
            .buckets(Interval::Hour, 0, i64::MAX)
            .map(|(t, _)| t / HOUR_MS)
            .collect();
        assert_eq!(hours, vec![1, 2, 3, 4, 5]);
        // One address and agent on one day: one visitor.
        assert_eq!(agg.visitors(), 1);

        let restored = encode_snapshot(&agg)
            .and_then(|bytes| decode_snapshot(&bytes).ok())
            .unwrap_or_default();
        assert_eq!(restored.covers(), 5);
        assert_eq!(restored.totals(), agg.totals());
        assert_eq!(restored.visitors(), 1);
    }

    #[test]
    fn minute_and_hour_buckets_go_after_their_retention_and_days_stay() {
        let key = VisitorKey::new([1; 32]);
        let settings = AggregateSettings::default();
        let mut agg = Aggregates::default();
        let times = [0, 3 * DAY_MS, 100 * DAY_MS];
        for (i, at) in times.iter().enumerate() {
            let e = event(i as u64 + 1, *at, "192.0.2.1", "ua", false, None);
            assert_eq!(agg.fold(&e, &key, &settings), Ok(()));
        }
        assert_eq!(agg.buckets(Interval::Minute, i64::MIN, i64::MAX).count(), 1);
        assert_eq!(agg.buckets(Interval::Hour, i64::MIN, i64::MAX).count(), 1);
        assert_eq!(agg.buckets(Interval::Day, i64::MIN, i64::MAX).count(), 3);
        assert_eq!(agg.check(), Ok(()));
    }

    #[test]
    fn unique_visitors_are_exact_when_few_and_close_when_many() {
        let key = VisitorKey::new([3; 32]);
        let settings = AggregateSettings::default();
        let mut agg = Aggregates::default();
        let mut seq = 0;
        // 100 visitors, each clicking three times on one day.
        for round in 0..3 {
            for v in 0..100 {
                seq += 1;
                let ip = format!("10.0.{v}.1");
                let e = event(seq, round * MINUTE_MS, &ip, "ua", false, None);
                assert_eq!(agg.fold(&e, &key, &settings), Ok(()));
            }
        }
        assert_eq!(agg.visitors(), 100);
        // 20,000 visitors: within 3 standard errors of the sketch (1.6% each).
        let mut agg = Aggregates::default();
        for v in 0..20_000u64 {
            let ip = format!("10.{}.{}.1", v / 256, v % 256);
            let e = event(v + 1, 0, &ip, "ua", false, None);
            assert_eq!(agg.fold(&e, &key, &settings), Ok(()));
        }
        let estimate = agg.visitors() as f64;
        assert!(
            (estimate - 20_000.0).abs() / 20_000.0 < 0.05,
            "estimate {estimate} of 20,000"
        );
    }

    #[test]
    fn a_log_whose_start_expired_is_counted_as_missing_not_folded() {
        let key = VisitorKey::new([5; 32]);
        let settings = AggregateSettings::default();
        let mut agg = Aggregates::default();
        agg.skip_to(3);
        for seq in 3..=4 {
            let e = event(seq, 0, "192.0.2.1", "ua", false, None);
            assert_eq!(agg.fold(&e, &key, &settings), Ok(()));
        }
        assert_eq!(
            (agg.covers(), agg.missing(), agg.totals().clicks),
            (4, 2, 2)
        );
        assert_eq!(agg.check(), Ok(()), "the missing clicks are accounted for");
    }

    #[test]
    fn referrer_hosts() {
        assert_eq!(referrer_host(None), DIRECT);
        assert_eq!(referrer_host(Some(" ")), DIRECT);
        assert_eq!(
            referrer_host(Some("https://WWW.Example.com/x?y")),
            "example.com"
        );
        assert_eq!(referrer_host(Some("android-app://com.slack")), "com.slack");
        assert_eq!(referrer_host(Some("garbage")), UNKNOWN);
    }
}
