//! `redirect`: N `GET /{code}` (or as many as fit in `--duration`) over C keep-alive
//! connections; throughput, latency percentiles, and a check that the server counted exactly
//! the 302s it answered.
//!
//! Two load models. Closed (the default): each connection sends its next request as soon as
//! the answer to the last one is in, so the rate is whatever the server sustains. Open
//! (`--rate R`): a pacer thread schedules request k at `start + k / R` and hands it to
//! connection `k mod C`; latency runs from that intended time, so a stall counts against every
//! request it delays (no coordinated omission). The pacer sleeps on the OS's high-resolution
//! timer (tokio's timers tick in whole milliseconds, which would add up to 1 ms of the load
//! tool's own lateness to every figure); what it still adds is its tick, [`PACER_TICK`].

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// The longest the pacer sleeps between two looks at the clock.
const PACER_TICK: Duration = Duration::from_micros(50);

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use hyper::StatusCode;
use tokio::{
    sync::mpsc,
    task::JoinSet,
    time::{Instant, timeout},
};

use crate::{
    Common,
    http::{Api, Conn, REQUEST_TIMEOUT, ensure_links},
    report::{self, Summary},
};

#[derive(clap::Args)]
pub struct Args {
    /// Requests to send in all.
    #[arg(long, default_value_t = 100_000)]
    requests: u64,
    /// Keep-alive connections, each sending one request after the other.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Links to create and spread the requests over.
    #[arg(long, default_value_t = 1)]
    codes: usize,
    /// How requests pick their code.
    #[arg(long, value_enum, default_value_t = Pick::RoundRobin)]
    pick: Pick,
    /// Open model: requests per second in all, scheduled at fixed intervals and dealt to the
    /// connections in turn; latency is then measured from each request's intended send time,
    /// so a stall counts against every request it delays.
    #[arg(long)]
    rate: Option<f64>,
    /// Stop after this many seconds even if fewer than --requests were sent (the count check
    /// then compares with what was sent).
    #[arg(long)]
    duration: Option<f64>,
    /// Codes are <prefix>0000001, <prefix>0000002, ...; existing ones are reused.
    #[arg(long, default_value = "r")]
    prefix: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Pick {
    RoundRobin,
    Random,
}

impl Pick {
    fn index(self, i: u64, n: usize) -> usize {
        let i = match self {
            Pick::RoundRobin => i,
            Pick::Random => splitmix64(i),
        };
        (i % n as u64) as usize
    }
}

/// A fixed pseudo-random permutation of u64 (SplitMix64's finaliser).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What one connection saw.
struct Tally {
    latency: Histogram<u64>,
    found: u64,
    other: u64,
    failed: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency: report::histogram(),
            found: 0,
            other: 0,
            failed: 0,
            first_error: None,
        }
    }

    fn fail(&mut self, e: anyhow::Error) {
        self.failed += 1;
        self.first_error.get_or_insert_with(|| format!("{e:#}"));
    }

    fn merge(&mut self, t: Tally) -> Result<()> {
        self.latency.add(&t.latency).context("merging histograms")?;
        self.found += t.found;
        self.other += t.other;
        self.failed += t.failed;
        if self.first_error.is_none() {
            self.first_error = t.first_error;
        }
        Ok(())
    }
}

pub async fn run(common: &Common, args: Args) -> Result<bool> {
    if args.requests == 0 || args.connections == 0 || args.codes == 0 {
        bail!("--requests, --connections and --codes must be at least 1");
    }
    if args.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        bail!("--rate must be positive");
    }
    if args.duration.is_some_and(|d| d.is_nan() || d <= 0.0) {
        bail!("--duration must be positive");
    }
    let api = Api::new(&common.base_url, common.key.clone())?;
    let codes = ensure_links(&api, &args.prefix, args.codes).await?;
    let before = api.click_counts(&codes).await?;
    let mem_before = report::memory_of(common.server_pid);

    let codes = Arc::new(codes);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let until = args.duration.map(|d| start + Duration::from_secs_f64(d));
    let mut workers = JoinSet::new();
    let mut turns = Vec::new();
    for _ in 0..args.connections {
        let pace = args.rate.map(|_| {
            let (tx, rx) = mpsc::unbounded_channel();
            turns.push(tx);
            rx
        });
        let job = Job {
            authority: api.authority().to_string(),
            codes: codes.clone(),
            next: next.clone(),
            requests: args.requests,
            pick: args.pick,
            until,
            pace,
        };
        workers.spawn(job.run());
    }
    let pacer = args.rate.map(|rate| {
        let (requests, start) = (args.requests, start.into_std());
        let until = until.map(Instant::into_std);
        std::thread::spawn(move || pace(rate, requests, start, until, turns))
    });
    let mut total = Tally::new();
    while let Some(joined) = workers.join_next().await {
        total.merge(joined.context("connection task panicked")?)?;
    }
    let elapsed = start.elapsed();
    let late = match pacer {
        Some(p) => Some(
            p.join()
                .map_err(|_| anyhow::anyhow!("the pacer panicked"))?,
        ),
        None => None,
    };
    let mem_after = report::memory_of(common.server_pid);
    let after = api.click_counts(&codes).await?;
    let counted: u64 = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.saturating_sub(*b))
        .sum();
    let sent = total.found + total.other + total.failed;

    let mut s = Summary::default();
    s.add("mode", "redirect");
    let pick = match args.pick {
        Pick::RoundRobin => "round-robin",
        Pick::Random => "random",
    };
    s.add("codes", format!("{} ({pick})", codes.len()));
    s.add("connections", args.connections);
    s.add("requests", format!("{sent} of {}", args.requests));
    if let Some(rate) = args.rate {
        s.add("target rate", format!("{rate:.0}/s"));
    }
    s.add("duration", format!("{:.3} s", elapsed.as_secs_f64()));
    s.add("throughput", report::per_sec(sent, elapsed));
    if let Some(late) = late {
        s.add(
            "pacer lateness",
            format!(
                "p99 {} max {} (the load tool's own, included in the latencies)",
                report::ms(late.value_at_quantile(0.99)),
                report::ms(late.max())
            ),
        );
    }
    let from = match args.rate {
        Some(_) => "each request's scheduled time (--rate)",
        None => "sending each request",
    };
    s.add("latency from", from);
    s.latencies("latency", &total.latency, report::QUANTILES);
    s.add("302", total.found);
    s.add("other answers", total.other);
    s.add("failed", total.failed);
    if let Some(e) = &total.first_error {
        s.add("first error", e);
    }
    if let (Some(b), Some(a)) = (mem_before, mem_after) {
        s.add(
            "server rss",
            format!(
                "{} -> {}",
                report::bytes(b.rss as f64),
                report::bytes(a.rss as f64)
            ),
        );
    }
    let exact = counted == total.found;
    let complete = sent == args.requests || args.duration.is_some();
    let verdict = if exact { "ok" } else { "FAILED" };
    s.add(
        "count check",
        format!(
            "{verdict}: clickCount rose by {counted}, 302s received {}",
            total.found
        ),
    );
    s.print();
    Ok(exact && total.failed == 0 && complete)
}

/// The open model's schedule: request k is due at `start + k / rate`; each is handed, with its
/// due time, to connection `k mod C` as soon as it is due. Returns how late the hand-overs were
/// (microseconds).
fn pace(
    rate: f64,
    requests: u64,
    start: std::time::Instant,
    until: Option<std::time::Instant>,
    turns: Vec<mpsc::UnboundedSender<Instant>>,
) -> Histogram<u64> {
    let mut late = report::histogram();
    let interval = 1.0 / rate;
    let mut k = 0u64;
    while k < requests {
        let now = std::time::Instant::now();
        if until.is_some_and(|u| now >= u) {
            break;
        }
        loop {
            let due = start + Duration::from_secs_f64(k as f64 * interval);
            if due > now || k >= requests {
                let wait = due.saturating_duration_since(now).min(PACER_TICK);
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
                break;
            }
            late.saturating_record(report::micros(now - due));
            // A connection that gave up (3 failed connects) leaves its turns undone.
            let _ = turns[(k % turns.len() as u64) as usize].send(Instant::from_std(due));
            k += 1;
        }
    }
    late
}

/// One connection's share: takes request numbers from `next` until `requests` are taken or
/// `until` passes; paced by the turns it is dealt in the open model.
struct Job {
    authority: String,
    codes: Arc<Vec<String>>,
    next: Arc<AtomicU64>,
    requests: u64,
    pick: Pick,
    until: Option<Instant>,
    pace: Option<mpsc::UnboundedReceiver<Instant>>,
}

impl Job {
    async fn run(mut self) -> Tally {
        let mut tally = Tally::new();
        let mut conn: Option<Conn> = None;
        let mut connect_failures = 0;
        loop {
            let scheduled = match &mut self.pace {
                // Closed when the pacer is done.
                Some(turns) => match turns.recv().await {
                    Some(due) => due,
                    None => return tally,
                },
                None => Instant::now(),
            };
            if self.pace.is_none() && self.until.is_some_and(|u| scheduled >= u) {
                return tally;
            }
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.requests {
                return tally;
            }
            let path = format!("/{}", self.codes[self.pick.index(i, self.codes.len())]);
            if conn.is_none() {
                match Conn::open(&self.authority).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        tally.fail(e);
                        connect_failures += 1;
                        if connect_failures >= 3 {
                            // Leave the remaining requests to the other connections.
                            return tally;
                        }
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            match timeout(REQUEST_TIMEOUT, c.get_status(&path)).await {
                Ok(Ok(status)) => {
                    connect_failures = 0;
                    tally
                        .latency
                        .saturating_record(report::micros(scheduled.elapsed()));
                    if status == StatusCode::FOUND {
                        tally.found += 1;
                    } else {
                        tally.other += 1;
                    }
                }
                Ok(Err(e)) => {
                    tally.fail(e);
                    conn = None;
                }
                Err(_) => {
                    tally.fail(anyhow::anyhow!("{path}: no answer in {REQUEST_TIMEOUT:?}"));
                    conn = None;
                }
            }
        }
    }
}
