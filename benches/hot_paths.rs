//! Benches of the hot paths, each beside a reference measured in the same run (the machines are
//! shared and noisy, so the ratio is the figure to read):
//!
//! | bench | reference |
//! | --- | --- |
//! | encode a click record, encode an SSE frame | `serde_json` of the same click (what a naive implementation sends) |
//! | an actor counting 1,000 clicks (through its inbox: numbering, user agent, hand-off to the writer) | 1,000 `ractor` casts to an actor that does nothing |
//! | a group commit of 1,000 clicks through the writer | one fjall batch of 1,000 plain inserts of the same size |
//! | the redirect handler in-process (salvo test client) | a salvo handler answering a fixed `302` |
//! | the stats answer of a link with 10 million clicks over a year (whole life by day, 30 days by hour, a year by day with its top lists) | a scan of 100,000 stored clicks (1% of that link's log), what answering from the clicks would cost |
//!
//! `cargo bench --bench hot_paths` prints criterion's figures, then a table of ratios.

use std::{hint::black_box, path::PathBuf, sync::Arc, time::Duration};

use criterion::{Criterion, criterion_group};
use fjall::{Database, KeyspaceCreateOptions};
use linkpulse::{
    App, ServeConfig,
    domain::{ClickEvent, DeviceClass, now_ms},
    links::{Click, frame},
    store::records,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use salvo::{http::StatusCode, prelude::*, test::TestClient};

const KEY: &str = "lp_bench_key_0123456789";

fn event(seq: u64) -> ClickEvent {
    ClickEvent {
        seq,
        at: now_ms(),
        ip: Some("203.0.113.0".into()),
        user_agent: "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
                     Chrome/120.0.0.0 Safari/537.36"
            .into(),
        referer: Some("https://news.example/item?id=1".into()),
        country: Some("NL".into()),
        browser: "Chrome".into(),
        os: "Linux".into(),
        device: DeviceClass::Desktop,
        bot: false,
    }
}

fn encoding(c: &mut Criterion) {
    let e = event(42);
    let mut group = c.benchmark_group("encode");
    group.bench_function("reference_serde_json", |b| {
        b.iter(|| {
            serde_json::to_vec(&linkpulse::links::frame::Analytics::of(
                "bench",
                black_box(&e),
            ))
        })
    });
    group.bench_function("click_record", |b| {
        b.iter(|| records::encode_click(black_box(&e)))
    });
    group.bench_function("sse_frame", |b| {
        b.iter(|| frame::state_frame("bench", 42, Some(black_box(&e))))
    });
    group.finish();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"))
}

struct Noop;

impl Actor for Noop {
    type Msg = u64;
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<u64>, (): ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

/// Starts the real app on a temp store (port 0) and creates the link `bench`.
async fn bench_app(dir: PathBuf) -> (App, reqwest::Client, String) {
    let mut config = ServeConfig::for_dir(dir);
    config.initial_api_key = Some(KEY.into());
    let app = App::build(config)
        .await
        .unwrap_or_else(|e| panic!("app: {e}"));
    let base = format!("http://{}", app.local_addr());
    (app, reqwest::Client::new(), base)
}

fn actor_and_redirect(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let (app, _client, _base) = rt.block_on(bench_app(dir.path().to_path_buf()));
    let service = Service::new(app.router());
    rt.block_on(async {
        let res = TestClient::post("http://127.0.0.1/api/links")
            .bearer_auth(KEY)
            .json(&serde_json::json!({"url": "https://example.com/", "code": "bench"}))
            .send(&service)
            .await;
        assert_eq!(res.status_code, Some(StatusCode::CREATED));
    });

    let mut group = c.benchmark_group("redirect");
    #[handler]
    async fn fixed(res: &mut Response) {
        res.status_code(StatusCode::FOUND);
        let _ = res.add_header("location", "https://example.com/", true);
    }
    let reference = Service::new(Router::with_path("{code}").get(fixed));
    group.bench_function("reference_fixed_302", |b| {
        b.to_async(&rt).iter(|| async {
            TestClient::get("http://127.0.0.1/bench")
                .send(&reference)
                .await
        })
    });
    group.bench_function("linkpulse_302_and_click", |b| {
        b.to_async(&rt).iter(|| async {
            TestClient::get("http://127.0.0.1/bench")
                .send(&service)
                .await
        })
    });
    group.finish();

    let mut group = c.benchmark_group("actor_1000_clicks");
    group.sample_size(20);
    let noop = rt.block_on(async {
        Actor::spawn(None, Noop, ())
            .await
            .map(|(actor, _)| actor)
            .unwrap_or_else(|e| panic!("spawn: {e}"))
    });
    group.bench_function("reference_1000_ractor_casts", |b| {
        b.to_async(&rt).iter(|| async {
            for i in 0..1000 {
                let _ = noop.cast(i);
            }
            // The actor handles its mailbox in order: this answer comes after the casts.
            let _ = ractor::call_t!(
                noop,
                |port: ractor::RpcReplyPort<()>| {
                    let _ = port.send(());
                    0
                },
                1000
            );
        })
    });
    let links = app.links().clone();
    let link = rt.block_on(async {
        let code = linkpulse::domain::ShortCode::parse("bench").unwrap_or_else(|e| panic!("{e}"));
        links
            .find(&code)
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("no link"))
    });
    group.bench_function("linkpulse_1000_clicks_counted", |b| {
        b.to_async(&rt).iter(|| async {
            for _ in 0..1000 {
                let _ = links
                    .click(
                        &link,
                        Click {
                            at: now_ms(),
                            ip: Some("203.0.113.0".into()),
                            user_agent: "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0.0.0".into(),
                            referer: None,
                            country: None,
                            ack: None,
                            admit: None,
                        },
                    )
                    .await;
            }
            // Answered after the actor has counted every click queued before it.
            links.snapshot(&link).await
        })
    });
    group.finish();
    drop(rt);
}

fn group_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let db = Database::builder(dir.path().join("raw"))
        .open()
        .unwrap_or_else(|e| panic!("db: {e}"));
    let ks = db
        .keyspace("raw", KeyspaceCreateOptions::default)
        .unwrap_or_else(|e| panic!("keyspace: {e}"));
    let value = records::encode_click(&event(1));
    let mut seq = 0u64;
    let mut group = c.benchmark_group("group_commit_1000");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(5));
    group.bench_function("reference_fjall_batch", |b| {
        b.iter(|| {
            let mut batch = db.batch();
            for _ in 0..1000 {
                seq += 1;
                batch.insert(&ks, seq.to_be_bytes().to_vec(), value.clone());
            }
            batch.commit()
        })
    });
    let store = linkpulse::store::Store::open(&dir.path().join("store"))
        .unwrap_or_else(|e| panic!("store: {e}"));
    let writer = linkpulse::store::Writer::start(
        store,
        linkpulse::store::WriterConfig {
            durability: linkpulse::store::Durability::Default,
            commit_interval: Duration::ZERO,
            max_batch: 4096,
            fsync_interval: Duration::from_secs(1),
            deleted_code_hold: Duration::ZERO,
            metrics: Default::default(),
        },
    )
    .unwrap_or_else(|e| panic!("writer: {e}"));
    let handle = writer.handle();
    let rt = runtime();
    let code = linkpulse::domain::ShortCode::parse("bench").unwrap_or_else(|e| panic!("{e}"));
    let mut n = 0u64;
    group.bench_function("linkpulse_writer", |b| {
        b.to_async(&rt).iter(|| {
            for _ in 0..1000 {
                n += 1;
                handle.clicks(linkpulse::store::ClickBatch {
                    code: code.clone(),
                    events: vec![Arc::new(event(n))],
                    acks: Vec::new(),
                    listener: None,
                    permit: linkpulse::store::Permit::empty(),
                    admits: Vec::new(),
                    limit: None,
                });
            }
            let handle = handle.clone();
            async move { handle.barrier().await }
        })
    });
    group.finish();
    let _ = writer.stop();
}

/// Aggregates of `n` clicks spread over a year: 50,000 visitors, 40 referrers, 30 countries,
/// four agents (one a bot).
fn aggregates_of(n: u64) -> linkpulse::analytics::Aggregates {
    use linkpulse::analytics::{AggregateSettings, Aggregates, VisitorKey};
    let key = VisitorKey::new([9; 32]);
    let settings = AggregateSettings::default();
    let mut agg = Aggregates::default();
    let year = 365 * 86_400_000i64;
    let start = now_ms() - year;
    let agents = [
        ("Chrome", "Linux", DeviceClass::Desktop, false),
        ("Safari", "iOS", DeviceClass::Mobile, false),
        ("Firefox", "Windows 10", DeviceClass::Desktop, false),
        ("Googlebot", "UNKNOWN", DeviceClass::Bot, true),
    ];
    let step = year / i64::try_from(n).unwrap_or(1).max(1);
    for seq in 1..=n {
        let i = seq as usize;
        let (browser, os, device, bot) = agents[i % agents.len()];
        let mut e = event(seq);
        e.at = start + step * i64::try_from(seq).unwrap_or(0);
        e.ip = Some(format!("10.{}.{}.0", (i / 256) % 200, i % 256));
        e.referer = Some(format!("https://site{}.example/page", i % 40));
        e.country = Some(format!("C{}", (b'A' + (i % 26) as u8) as char));
        e.browser = browser.into();
        e.os = os.into();
        e.device = device;
        e.bot = bot;
        let _ = agg.fold(&e, &key, &settings);
    }
    agg
}

fn stats(c: &mut Criterion) {
    use linkpulse::analytics::{AggregateSettings, StatsQuery, query};
    const CLICKS: u64 = 10_000_000;
    const SCANNED: u64 = 100_000;
    let built = std::time::Instant::now();
    let agg = aggregates_of(CLICKS);
    let snapshot = linkpulse::analytics::aggregates::encode_snapshot(&agg).expect("encodes");
    println!(
        "aggregates of {CLICKS} clicks folded in {:.1} s; snapshot {} KiB",
        built.elapsed().as_secs_f64(),
        snapshot.len() / 1024
    );
    let settings = AggregateSettings::default();
    let created = now_ms() - 366 * 86_400_000;
    let now = now_ms();

    // The reference: reading stored clicks back, as a stats answer built from the log would.
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Database::builder(dir.path()).open().expect("fjall opens");
    let clicks = db
        .keyspace("clicks", KeyspaceCreateOptions::default)
        .expect("keyspace");
    for chunk in (1..=SCANNED).collect::<Vec<_>>().chunks(10_000) {
        let mut batch = db.batch();
        for &seq in chunk {
            batch.insert(
                &clicks,
                records::click_key("big", seq),
                records::encode_click(&event(seq)),
            );
        }
        batch.commit().expect("commit");
    }

    let mut group = c.benchmark_group("stats_10m_clicks");
    group.sample_size(20);
    group.bench_function("reference_scan_100k_stored_clicks", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for guard in clicks.prefix(records::click_prefix("big")) {
                let (_, value) = guard.into_inner().expect("read");
                n += records::decode_click(&value).map_or(0, |e| e.seq & 1);
            }
            n
        })
    });
    // RFC 3339, as a stats question carries it.
    let at = |ms: i64| {
        jiff::Timestamp::from_millisecond(ms).map_or_else(|_| String::new(), |t| t.to_string())
    };
    let whole = StatsQuery::whole_life();
    let month = StatsQuery::parse(Some(&at(now - 30 * 86_400_000)), None, Some("hour"), None)
        .expect("query");
    let year = StatsQuery::parse(
        Some(&at(now - 365 * 86_400_000)),
        Some(&at(now)),
        Some("day"),
        None,
    )
    .expect("query");
    let quarter = StatsQuery::parse(
        Some(&at(now - 89 * 86_400_000)),
        None,
        Some("day"),
        Some("Europe/Berlin"),
    )
    .expect("query");
    for (name, q) in [
        ("whole_life_by_day", &whole),
        ("last_30_days_by_hour", &month),
        ("a_year_by_day_with_its_top_lists", &year),
        ("89_days_by_berlin_day", &quarter),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let answer = query::answer("big", black_box(&agg), q, &settings, created, now)
                    .expect("answers");
                serde_json::to_vec(&answer).expect("json").len()
            })
        });
    }
    group.bench_function("decode_snapshot", |b| {
        b.iter(|| linkpulse::analytics::aggregates::decode_snapshot(black_box(&snapshot)).is_ok())
    });
    group.finish();
}

criterion_group!(benches, encoding, actor_and_redirect, group_commit, stats);

/// Runs the benches, then prints each one as a ratio to the reference of its group.
fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    let root = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("criterion");
    println!("\nratios to the reference measured in the same run (lower is faster):");
    for group in [
        "encode",
        "redirect",
        "actor_1000_clicks",
        "group_commit_1000",
        "stats_10m_clicks",
    ] {
        let dir = root.join(group);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut means = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path().join("new").join("estimates.json");
            let Ok(text) = std::fs::read_to_string(path) else {
                continue;
            };
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            if let Some(ns) = json["mean"]["point_estimate"].as_f64() {
                means.push((name, ns));
            }
        }
        let Some(&(_, reference)) = means.iter().find(|(n, _)| n.starts_with("reference")) else {
            continue;
        };
        means.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, ns) in &means {
            println!(
                "  {group}/{name}: {:.0} ns, {:.2} x reference",
                ns,
                ns / reference
            );
        }
    }
}
