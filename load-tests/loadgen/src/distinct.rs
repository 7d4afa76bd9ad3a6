//! `distinct`: N links clicked once each, with the server's memory and live actors sampled every
//! S seconds: how the server grows with many distinct codes, and shrinks as idle actors stop.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};
use hyper::StatusCode;
use tokio::{
    sync::watch,
    time::{Instant, interval_at, sleep},
};

use crate::{
    Common,
    http::{Api, Created, code, parallel},
    report::{self, Summary},
};

#[derive(clap::Args)]
pub struct Args {
    /// Links to create and click once each.
    #[arg(long, default_value_t = 10_000)]
    codes: usize,
    /// Requests in flight at once (each on a keep-alive connection of a pool).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds between samples of memory and live actors.
    #[arg(long, default_value_t = 1.0)]
    sample_every: f64,
    /// Seconds to keep sampling after the last click, e.g. to watch idle actors stop.
    #[arg(long, default_value_t = 0.0)]
    linger: f64,
    /// Codes are <prefix>0000001, <prefix>0000002, ...; existing ones are reused.
    #[arg(long, default_value = "d")]
    prefix: String,
    /// The links exist already (made by `linkpulse import`, say): click them without asking
    /// to create them first.
    #[arg(long)]
    no_create: bool,
}

const PHASES: [&str; 3] = ["create", "click", "linger"];

#[derive(Default)]
struct Progress {
    phase: AtomicU8,
    created: AtomicU64,
    existing: AtomicU64,
    found: AtomicU64,
    other: AtomicU64,
}

pub async fn run(common: &Common, args: Args) -> Result<bool> {
    if args.codes == 0 || args.concurrency == 0 {
        bail!("--codes and --concurrency must be at least 1");
    }
    if args.sample_every.is_nan() || args.sample_every < 0.01 || args.linger.is_nan() {
        bail!("--sample-every must be at least 0.01 s");
    }
    let api = Api::new(&common.base_url, common.key.clone())?;
    let clicks_before = api.metric("linkpulse_clicks_total").await?;
    let progress = Arc::new(Progress::default());
    let start = Instant::now();
    let (stop, stopped) = watch::channel(false);
    let period = Duration::from_secs_f64(args.sample_every);
    let sampler = tokio::spawn(sample(
        api.clone(),
        common.server_pid,
        progress.clone(),
        start,
        period,
        stopped,
    ));

    let prefix = Arc::new(args.prefix.clone());
    let (a, p, pre) = (api.clone(), progress.clone(), prefix.clone());
    let to_create = if args.no_create { 0 } else { args.codes };
    parallel(to_create, args.concurrency, move |i| {
        let (api, p, pre) = (a.clone(), p.clone(), pre.clone());
        async move {
            match api.create_link(&code(&pre, i)).await? {
                Created::New => p.created.fetch_add(1, Relaxed),
                Created::Existing => p.existing.fetch_add(1, Relaxed),
            };
            Ok(())
        }
    })
    .await?;
    let create_time = start.elapsed();

    progress.phase.store(1, Relaxed);
    let click_start = Instant::now();
    let (a, p, pre) = (api.clone(), progress.clone(), prefix.clone());
    parallel(args.codes, args.concurrency, move |i| {
        let (api, p, pre) = (a.clone(), p.clone(), pre.clone());
        async move {
            let counter = match api.click(&code(&pre, i)).await? {
                StatusCode::FOUND => &p.found,
                _ => &p.other,
            };
            counter.fetch_add(1, Relaxed);
            Ok(())
        }
    })
    .await?;
    let click_time = click_start.elapsed();

    progress.phase.store(2, Relaxed);
    sleep(Duration::from_secs_f64(args.linger.max(0.0))).await;
    let _ = stop.send(true);
    let peak_sampled = sampler.await.context("sampler panicked")?;
    let mem = report::memory_of(common.server_pid);
    let actors = api.metric("linkpulse_active_actors").await?;
    let clicks_after = api.metric("linkpulse_clicks_total").await?;

    let (found, other) = (progress.found.load(Relaxed), progress.other.load(Relaxed));
    let mut s = Summary::default();
    s.add("mode", "distinct");
    let (created, existing) = (
        progress.created.load(Relaxed),
        progress.existing.load(Relaxed),
    );
    s.add(
        "codes",
        format!(
            "{} ({created} created, {existing} already there)",
            args.codes
        ),
    );
    s.add(
        "create time",
        format!(
            "{:.3} s ({})",
            create_time.as_secs_f64(),
            report::per_sec(args.codes as u64, create_time)
        ),
    );
    s.add(
        "click time",
        format!(
            "{:.3} s ({})",
            click_time.as_secs_f64(),
            report::per_sec(args.codes as u64, click_time)
        ),
    );
    s.add("clicks", format!("{found} answered 302, {other} other"));
    if let (Some(b), Some(a)) = (clicks_before, clicks_after) {
        s.add("clicks_total rose by", a.saturating_sub(b));
    }
    if let Some(m) = mem {
        s.add(
            "peak rss (sampled)",
            report::bytes(peak_sampled.max(m.rss) as f64),
        );
        s.add("peak rss (VmHWM)", report::bytes(m.peak as f64));
        s.add("final rss", report::bytes(m.rss as f64));
    }
    s.add(
        "active actors at end",
        actors.map_or("-".to_string(), |a| a.to_string()),
    );
    s.print();
    Ok(other == 0)
}

/// Prints a row every `period` until told to stop; returns the highest RSS it saw.
async fn sample(
    api: Api,
    pid: Option<u32>,
    progress: Arc<Progress>,
    start: Instant,
    period: Duration,
    mut stop: watch::Receiver<bool>,
) -> u64 {
    println!(
        "{:>9}  {:<6}  {:>9}  {:>9}  {:>11}  {:>9}",
        "elapsed", "phase", "created", "clicked", "server rss", "actors"
    );
    let mut ticker = interval_at(start + period, period);
    let mut peak = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return peak,
        }
        let rss = report::memory_of(pid).map(|m| m.rss);
        peak = peak.max(rss.unwrap_or(0));
        let actors = api.metric("linkpulse_active_actors").await.ok().flatten();
        let phase = PHASES[usize::from(progress.phase.load(Relaxed)).min(2)];
        let created = progress.created.load(Relaxed) + progress.existing.load(Relaxed);
        let clicked = progress.found.load(Relaxed) + progress.other.load(Relaxed);
        println!(
            "{:>7.1} s  {phase:<6}  {created:>9}  {clicked:>9}  {:>11}  {:>9}",
            start.elapsed().as_secs_f64(),
            rss.map_or("-".to_string(), |r| report::bytes(r as f64)),
            actors.map_or("-".to_string(), |a| a.to_string()),
        );
    }
}
