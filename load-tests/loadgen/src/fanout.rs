//! `fanout`: N live subscribers over M links, then K paced clicks; measures the time until every
//! subscriber of a link has seen each click's count (or a later one) and the server's memory per
//! subscriber, and checks that every subscriber reaches its link's final count.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use http_body_util::BodyExt;
use hyper::{StatusCode, body::Incoming, header};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, oneshot},
    task::JoinSet,
    time::{Instant, MissedTickBehavior, interval, sleep, timeout},
};

use crate::{
    Common,
    http::{Api, Conn, REQUEST_TIMEOUT, SseParser, ensure_links},
    report::{self, Summary},
};

#[derive(clap::Args)]
pub struct Args {
    /// Live subscribers (`GET /realtime/{code}`), one connection each.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Links; subscriber i watches link i mod M.
    #[arg(long, default_value_t = 1)]
    links: usize,
    /// Clicks to send, round-robin over the links.
    #[arg(long, default_value_t = 100)]
    clicks: usize,
    /// Clicks per second.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Streams being opened at once (each until its first frame).
    #[arg(long, default_value_t = 200)]
    open_concurrency: usize,
    /// Seconds to wait, once every click is answered, for all subscribers to see the final counts.
    #[arg(long, default_value_t = 10.0)]
    settle_timeout: f64,
    /// Codes are <prefix>0000001, ...; existing ones are reused (their counts read first).
    #[arg(long, default_value = "f")]
    prefix: String,
    /// Where the clicks go, as http://host:port (default: --base-url). Links are made and
    /// counts read at --base-url; in a cluster, another node than the viewers' measures
    /// delivery across nodes.
    #[arg(long)]
    click_url: Option<String>,
    /// Where the subscribers connect, comma-separated http://host:port; subscriber i uses
    /// URL i mod V (default: --base-url).
    #[arg(long, value_delimiter = ',')]
    viewer_urls: Vec<String>,
}

/// One link as the tool clicks it and its subscribers see it. The tool is the only clicker, so
/// click j (from 0) of the link makes count `start + j + 1`. Times are ns since `Shared::t0`.
struct Track {
    code: String,
    start: u64,
    /// Subscribers that got their first frame.
    subscribers: AtomicUsize,
    sent_at: Vec<AtomicU64>,
    /// Subscribers that have seen click j's count or a later one.
    seen_by: Vec<AtomicUsize>,
    /// The latest time one of them first saw it.
    all_seen_at: Vec<AtomicU64>,
}

impl Track {
    fn final_count(&self) -> u64 {
        self.start + self.sent_at.len() as u64
    }

    /// A subscriber went from count `from` to `to` at `now` (`start <= from < to`).
    fn saw(&self, from: u64, to: u64, now: u64) {
        let lo = (from - self.start) as usize;
        let hi = ((to - self.start) as usize).min(self.sent_at.len());
        for j in lo..hi {
            self.all_seen_at[j].fetch_max(now, Relaxed);
            self.seen_by[j].fetch_add(1, Relaxed);
        }
    }
}

struct Shared {
    t0: Instant,
    links: Vec<Track>,
    frames: AtomicU64,
    bad_frames: AtomicU64,
    reached: AtomicUsize,
    /// Subscribers at their final count, and subscribers opened, per viewer URL.
    reached_by_url: Vec<AtomicUsize>,
    opened_by_url: Vec<AtomicUsize>,
    ended_early: AtomicUsize,
    done: AtomicBool,
}

impl Shared {
    fn now(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

pub async fn run(common: &Common, args: Args, nofile: u64) -> Result<bool> {
    let (n, m) = (args.subscribers, args.links);
    if m == 0 || n < m {
        bail!("need --links >= 1 and --subscribers >= --links");
    }
    if args.rate.is_nan() || args.rate <= 0.0 || args.open_concurrency == 0 {
        bail!("--rate and --open-concurrency must be positive");
    }
    if nofile > 0 && n as u64 + 64 > nofile {
        eprintln!("warning: the open-file limit ({nofile}) is too low for {n} subscribers");
    }
    let api = Api::new(&common.base_url, common.key.clone())?;
    let click_url = args.click_url.as_deref().unwrap_or(&common.base_url);
    Api::new(click_url, None).context("--click-url")?;
    let viewers: Vec<String> = if args.viewer_urls.is_empty() {
        vec![api.authority().to_string()]
    } else {
        let mut authorities = Vec::with_capacity(args.viewer_urls.len());
        for url in &args.viewer_urls {
            authorities.push(
                Api::new(url, None)
                    .context("--viewer-urls")?
                    .authority()
                    .to_string(),
            );
        }
        authorities
    };
    let codes = ensure_links(&api, &args.prefix, m).await?;
    let starts = api.click_counts(&codes).await?;
    let links = codes
        .iter()
        .zip(&starts)
        .enumerate()
        .map(|(l, (code, &start))| {
            let planned = args.clicks / m + usize::from(l < args.clicks % m);
            Track {
                code: code.clone(),
                start,
                subscribers: AtomicUsize::new(0),
                sent_at: (0..planned).map(|_| AtomicU64::new(0)).collect(),
                seen_by: (0..planned).map(|_| AtomicUsize::new(0)).collect(),
                all_seen_at: (0..planned).map(|_| AtomicU64::new(0)).collect(),
            }
        })
        .collect();
    let shared = Arc::new(Shared {
        t0: Instant::now(),
        links,
        frames: AtomicU64::new(0),
        bad_frames: AtomicU64::new(0),
        reached: AtomicUsize::new(0),
        reached_by_url: viewers.iter().map(|_| AtomicUsize::new(0)).collect(),
        opened_by_url: viewers.iter().map(|_| AtomicUsize::new(0)).collect(),
        ended_early: AtomicUsize::new(0),
        done: AtomicBool::new(false),
    });
    let mem_base = report::memory_of(common.server_pid);

    // Open every stream, at most `open_concurrency` waiting for their first frame at once.
    let open_start = Instant::now();
    let gate = Arc::new(Semaphore::new(args.open_concurrency));
    let mut streams = JoinSet::new();
    let mut readies = Vec::with_capacity(n);
    for i in 0..n {
        let permit = gate.clone().acquire_owned().await.context("semaphore")?;
        let (tx, rx) = oneshot::channel();
        readies.push(rx);
        let viewer = i % viewers.len();
        let authority = viewers[viewer].clone();
        streams.spawn(subscribe(
            shared.clone(),
            i % m,
            viewer,
            authority,
            permit,
            tx,
        ));
    }
    let (mut opened, mut open_failed, mut open_error) = (0, 0, None);
    for rx in readies {
        match rx
            .await
            .unwrap_or_else(|_| Err(anyhow!("subscriber task ended")))
        {
            Ok(()) => opened += 1,
            Err(e) => {
                open_failed += 1;
                open_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let open_time = open_start.elapsed();
    let mem_open = report::memory_of(common.server_pid);

    // Click at the given rate, round-robin over the links, from a thread of its own so that
    // the subscribers' work does not delay the pacing.
    let (tx, rx) = oneshot::channel();
    let (base_url, clicker_shared) = (click_url.to_string(), shared.clone());
    let (clicks, rate) = (args.clicks, args.rate);
    std::thread::spawn(move || {
        let outcome = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("clicker runtime")
            .and_then(|rt| rt.block_on(send_clicks(&base_url, clicker_shared, clicks, rate)));
        let _ = tx.send(outcome);
    });
    let sent = rx.await.context("clicker thread died")??;
    let (other, failed) = (sent.other, sent.failed);

    // Wait (bounded) for every open subscriber to reach its link's final count.
    let settle_start = Instant::now();
    let deadline = settle_start + Duration::from_secs_f64(args.settle_timeout.max(0.0));
    while shared.reached.load(Relaxed) < opened && Instant::now() < deadline {
        sleep(Duration::from_millis(5)).await;
    }
    let settle_time = settle_start.elapsed();
    shared.done.store(true, Relaxed);
    let finals = api.click_counts(&codes).await?;
    streams.abort_all();
    while streams.join_next().await.is_some() {}

    let mut delivery = report::histogram();
    let mut unseen = 0;
    for t in &shared.links {
        let subs = t.subscribers.load(Relaxed);
        for j in 0..t.sent_at.len() {
            if subs > 0 && t.seen_by[j].load(Relaxed) == subs {
                let ns = t.all_seen_at[j]
                    .load(Relaxed)
                    .saturating_sub(t.sent_at[j].load(Relaxed));
                delivery.saturating_record((ns / 1000).max(1));
            } else {
                unseen += 1;
            }
        }
    }
    let mismatches: Vec<String> = shared
        .links
        .iter()
        .zip(&finals)
        .zip(&sent.ok_per_link)
        .filter(|((t, fin), ok)| **fin != t.start + **ok)
        .map(|((t, fin), ok)| format!("{} is {fin}, expected {} + {ok}", t.code, t.start))
        .collect();
    let reached = shared.reached.load(Relaxed);

    let mut s = Summary::default();
    s.add("mode", "fanout");
    if args.click_url.is_some() {
        s.add("click url", click_url);
    }
    s.add("links", m);
    s.add(
        "subscribers",
        format!("{opened} opened of {n}, {open_failed} failed"),
    );
    if let Some(e) = &open_error {
        s.add("first open error", e);
    }
    s.add(
        "open time",
        format!(
            "{:.3} s ({})",
            open_time.as_secs_f64(),
            report::per_sec(opened as u64, open_time)
        ),
    );
    if let (Some(base), Some(open)) = (&mem_base, &mem_open) {
        s.add("server rss baseline", report::bytes(base.rss as f64));
        s.add("server rss subscribed", report::bytes(open.rss as f64));
        let per = (open.rss as f64 - base.rss as f64) / n as f64;
        s.add("rss per subscriber", format!("{per:.0} bytes"));
    }
    s.add(
        "clicks",
        format!(
            "{} sent, {} answered 302, {other} other, {failed} failed",
            args.clicks,
            args.clicks - other - failed
        ),
    );
    if let Some(e) = &sent.first_error {
        s.add("first click error", e);
    }
    s.add(
        "click rate",
        format!(
            "{:.0}/s target, {} sent",
            args.rate,
            // n clicks span n - 1 intervals.
            report::per_sec(args.clicks.saturating_sub(1) as u64, sent.time)
        ),
    );
    let quantiles = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)];
    s.latencies("delivery to all", &delivery, &quantiles);
    s.add(
        "clicks seen by all",
        format!("{} of {}", args.clicks - unseen, args.clicks),
    );
    s.add("frames received", shared.frames.load(Relaxed));
    s.add("frames malformed", shared.bad_frames.load(Relaxed));
    s.add("streams ended early", shared.ended_early.load(Relaxed));
    s.add("settle time", format!("{:.3} s", settle_time.as_secs_f64()));
    s.add("at final count", format!("{reached} of {n} subscribers"));
    if !args.viewer_urls.is_empty() {
        let by_url: Vec<String> = viewers
            .iter()
            .enumerate()
            .map(|(v, authority)| {
                format!(
                    "{authority} {} of {}",
                    shared.reached_by_url[v].load(Relaxed),
                    shared.opened_by_url[v].load(Relaxed)
                )
            })
            .collect();
        s.add("at final count by viewer url", by_url.join(", "));
    }
    match mismatches.first() {
        None => s.add(
            "count check",
            "ok: every clickCount = start + clicks answered 302",
        ),
        Some(first) => s.add(
            "count check",
            format!("FAILED on {} links, e.g. {first}", mismatches.len()),
        ),
    }
    s.print();
    Ok(reached == n && mismatches.is_empty() && other == 0 && failed == 0 && unseen == 0)
}

/// What became of the clicks.
struct Sent {
    ok_per_link: Vec<u64>,
    other: usize,
    failed: usize,
    first_error: Option<String>,
    time: Duration,
}

/// Sends `clicks` clicks at `rate` per second round-robin over the links, noting when each left.
async fn send_clicks(
    base_url: &str,
    shared: Arc<Shared>,
    clicks: usize,
    rate: f64,
) -> Result<Sent> {
    let api = Api::new(base_url, None)?;
    let m = shared.links.len();
    let start = Instant::now();
    let mut ticker = interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut tasks = JoinSet::new();
    for k in 0..clicks {
        ticker.tick().await;
        let (api, shared) = (api.clone(), shared.clone());
        tasks.spawn(async move {
            let (l, j) = (k % m, k / m);
            let track = &shared.links[l];
            track.sent_at[j].store(shared.now(), Relaxed);
            (l, api.click(&track.code).await)
        });
    }
    let time = start.elapsed();
    let mut sent = Sent {
        ok_per_link: vec![0; m],
        other: 0,
        failed: 0,
        first_error: None,
        time,
    };
    while let Some(joined) = tasks.join_next().await {
        match joined.context("click task panicked")? {
            (l, Ok(StatusCode::FOUND)) => sent.ok_per_link[l] += 1,
            (_, Ok(_)) => sent.other += 1,
            (_, Err(e)) => {
                sent.failed += 1;
                sent.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    Ok(sent)
}

/// Opens `GET path` as an event stream on its own connection.
async fn open_stream(authority: &str, path: &str) -> Result<(Conn, Incoming)> {
    let mut conn = Conn::open(authority).await?;
    let res = conn.get(path, &[("accept", "text/event-stream")]).await?;
    if res.status() != StatusCode::OK {
        let retry = res
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok());
        bail!(
            "GET {path}: {} (Retry-After {})",
            res.status(),
            retry.unwrap_or("-")
        );
    }
    Ok((conn, res.into_body()))
}

/// One subscriber: opens the stream, reports its first frame on `ready` (then lets the next one
/// open), and records which counts it sees until it is aborted or the stream ends.
async fn subscribe(
    shared: Arc<Shared>,
    link: usize,
    viewer: usize,
    authority: String,
    permit: OwnedSemaphorePermit,
    ready: oneshot::Sender<Result<()>>,
) {
    let track = &shared.links[link];
    let path = format!("/realtime/{}", track.code);
    let (_conn, mut body) = match timeout(REQUEST_TIMEOUT, open_stream(&authority, &path)).await {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => {
            let _ = ready.send(Err(e));
            return;
        }
        Err(_) => {
            let _ = ready.send(Err(anyhow!("GET {path}: no answer in {REQUEST_TIMEOUT:?}")));
            return;
        }
    };
    let mut waiting = Some((ready, permit));
    let (mut parser, mut events) = (SseParser::default(), Vec::new());
    let (mut seen, mut reached) = (track.start, false);
    loop {
        let next = if waiting.is_some() {
            timeout(REQUEST_TIMEOUT, body.frame()).await.ok().flatten()
        } else {
            body.frame().await
        };
        let Some(Ok(frame)) = next else { break };
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        let now = shared.now();
        parser.push(&chunk, &mut events);
        for event in events.drain(..) {
            if event.name.is_some() {
                // A `stats` event (aggregates), next to the count frames.
                continue;
            }
            let Some(count) = event.click_count() else {
                shared.bad_frames.fetch_add(1, Relaxed);
                continue;
            };
            if event.id != Some(count) {
                shared.bad_frames.fetch_add(1, Relaxed);
            }
            shared.frames.fetch_add(1, Relaxed);
            if let Some((tx, _permit)) = waiting.take() {
                track.subscribers.fetch_add(1, Relaxed);
                shared.opened_by_url[viewer].fetch_add(1, Relaxed);
                let _ = tx.send(Ok(()));
            }
            if count > seen {
                track.saw(seen, count, now);
                seen = count;
            }
            if !reached && seen >= track.final_count() {
                reached = true;
                shared.reached.fetch_add(1, Relaxed);
                shared.reached_by_url[viewer].fetch_add(1, Relaxed);
            }
        }
    }
    match waiting {
        Some((tx, _)) => {
            let _ = tx.send(Err(anyhow!("GET {path}: no first frame")));
        }
        None if !shared.done.load(Relaxed) => {
            shared.ended_early.fetch_add(1, Relaxed);
        }
        None => {}
    }
}
