//! Unit tests of the aggregates: folding in order, breakdowns that sum to the count, retention,
//! unique visitors, missing clicks, referrer hosts.

use super::*;
use crate::domain::DeviceClass;

fn event(seq: u64, at: i64, ip: &str, ua: &str, bot: bool, referer: Option<&str>) -> ClickEvent {
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
