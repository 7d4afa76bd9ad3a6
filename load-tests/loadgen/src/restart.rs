//! `seed` and `restart`: how long a server takes to serve again on a large store.
//!
//! `seed` writes click events straight into a data directory through linkpulse's own store and
//! group-commit writer (as fast as the disk allows, no HTTP). `restart` then starts the server
//! binary on that directory and on an empty one, several rounds, and reports for each the time
//! from spawning the process to its first answered `GET /healthz` and to the first redirect of a
//! seeded code whose count is right, plus the ratio of the two stores' times.

use std::{
    path::PathBuf,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use linkpulse::{
    domain::{ClickEvent, DeviceClass, Link, ShortCode, TargetUrl, now_ms},
    store::{ClickBatch, Durability, Permit, Store, Writer, WriterConfig},
};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{
    Common,
    http::{Api, Conn},
    report::Summary,
};

#[derive(clap::Args)]
pub struct SeedArgs {
    /// The data directory to fill (created if missing; the server must not be running on it).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Click events to write in all.
    #[arg(long, default_value_t = 10_000_000)]
    pub events: u64,
    /// Codes to spread them over (`s0000001`, ...).
    #[arg(long, default_value_t = 1000)]
    pub codes: u64,
}

fn seed_code(i: u64) -> anyhow::Result<ShortCode> {
    ShortCode::parse(&format!("s{i:07}")).map_err(|e| anyhow::anyhow!("{e}"))
}

pub async fn seed(args: SeedArgs) -> anyhow::Result<bool> {
    std::fs::create_dir_all(&args.data_dir)?;
    let store = Store::open(&args.data_dir).context("opening the store")?;
    let writer = Writer::start(
        store,
        WriterConfig {
            durability: Durability::Default,
            commit_interval: Duration::from_millis(2),
            max_batch: 16_384,
            fsync_interval: Duration::from_secs(1),
            deleted_code_hold: Duration::ZERO,
            metrics: Default::default(),
        },
    )?;
    let handle = writer.handle();
    let target =
        TargetUrl::parse("https://example.com/seeded").map_err(|e| anyhow::anyhow!("{e}"))?;
    let codes = args.codes.max(1);
    for i in 1..=codes {
        let link = Link::new(seed_code(i)?, target.clone(), "seed".into(), now_ms());
        handle.create_link(link).await?;
    }
    let started = Instant::now();
    let per_code = args.events / codes;
    let mut written = 0u64;
    for seq in 1..=per_code {
        for i in 1..=codes {
            let event = ClickEvent {
                seq,
                at: now_ms(),
                ip: Some("203.0.113.0".into()),
                user_agent: "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0.0.0 Safari/537.36".into(),
                referer: None,
                country: None,
                browser: "Chrome".into(),
                os: "Linux".into(),
                device: DeviceClass::Desktop,
                bot: false,
            };
            handle.clicks(ClickBatch {
                code: seed_code(i)?,
                events: vec![Arc::new(event)],
                acks: Vec::new(),
                listener: None,
                permit: Permit::empty(),
                admits: Vec::new(),
                limit: None,
            });
            written += 1;
        }
        // Keep the writer's queue (and this process's memory) bounded.
        if seq % 100 == 0 {
            handle.barrier().await?;
        }
    }
    handle.barrier().await?;
    tokio::task::spawn_blocking(move || writer.stop())
        .await?
        .map_err(|e| anyhow::anyhow!("the final commit failed: {e}"))?;
    let secs = started.elapsed().as_secs_f64();
    let mut summary = Summary::default();
    summary.add("mode", "seed");
    summary.add(
        "events",
        format!("{written} over {codes} codes ({per_code} each)"),
    );
    summary.add(
        "write time",
        format!("{secs:.1} s ({:.0}/s)", written as f64 / secs),
    );
    summary.print();
    Ok(true)
}

#[derive(clap::Args)]
pub struct RestartArgs {
    /// The linkpulse binary.
    #[arg(long)]
    pub bin: PathBuf,
    /// A data directory filled by `seed`.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The number of codes `seed` wrote (to check the counts of the first and last).
    #[arg(long, default_value_t = 1000)]
    pub codes: u64,
    /// Events per code `seed` wrote.
    #[arg(long)]
    pub per_code: u64,
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
}

const KEY: &str = "lp_restart_key_0123456789";

/// Starts the server on `dir`, returns (seconds to /healthz, seconds to a right redirect).
async fn one_start(
    args: &RestartArgs,
    dir: &std::path::Path,
    code: Option<(&str, u64)>,
) -> anyhow::Result<(f64, f64)> {
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&args.bin)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("LINKPULSE_INITIAL_API_KEY", KEY)
        .env("LINKPULSE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting linkpulse")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let Some(line) = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await??
        else {
            bail!("linkpulse ended before listening");
        };
        if let Some(rest) = line.split("address=").nth(1)
            && line.contains("linkpulse listening")
        {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let api = Api::new(&format!("http://{addr}"), Some(KEY.to_owned()))?;
    let healthy = loop {
        if let Ok(mut conn) = Conn::open(&addr).await
            && conn.get_status("/healthz").await.ok().map(|s| s.as_u16()) == Some(200)
        {
            break started.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let serving = match code {
        Some((code, expected)) => {
            let status = api.click(code).await?.as_u16();
            let count = api.click_count(code).await?;
            if status != 302 || count != expected + 1 {
                bail!(
                    "{code}: status {status}, count {count}, expected {}",
                    expected + 1
                );
            }
            started.elapsed().as_secs_f64()
        }
        None => healthy,
    };
    let pid = child.id().context("no pid")?;
    // SAFETY: kill only sends a signal to the process we started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    if !status.success() {
        bail!("linkpulse exited with {status} after SIGTERM");
    }
    Ok((healthy, serving))
}

pub async fn restart(_common: &Common, args: RestartArgs) -> anyhow::Result<bool> {
    println!(
        "mode: restart ({} rounds; each starts an empty store, then the seeded one)",
        args.rounds
    );
    println!(
        "{:>6} {:>14} {:>14} {:>14} {:>8}",
        "round", "empty healthz", "seeded healthz", "seeded 302", "ratio"
    );
    let first = format!("s{:07}", 1);
    for (round, expected) in (1..=args.rounds).zip(args.per_code..) {
        let empty = tempfile_dir()?;
        let (empty_up, _) = one_start(&args, &empty, None).await?;
        let _ = std::fs::remove_dir_all(&empty);
        let (up, serving) = one_start(&args, &args.data_dir, Some((&first, expected))).await?;
        println!(
            "{round:>6} {:>12.0}ms {:>12.0}ms {:>12.0}ms {:>8.2}",
            empty_up * 1000.0,
            up * 1000.0,
            serving * 1000.0,
            up / empty_up
        );
    }
    Ok(true)
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "linkpulse-restart-{}-{}",
        std::process::id(),
        now_ms()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
