//! `create`: makes the links `<prefix>0000001` ... `<prefix>N` and nothing else, for load tools
//! that only click (wrk with `wrk-codes.lua`). Existing codes are left as they are.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering::Relaxed},
};

use anyhow::{Result, bail};
use tokio::time::Instant;

use crate::{
    Common,
    http::{Api, Created, code, parallel},
    report::{self, Summary},
};

/// The links `create` makes and `counts` reads.
#[derive(clap::Args)]
pub struct Args {
    /// How many links: <prefix>0000001 ... <prefix>N.
    #[arg(long, default_value_t = 10_000)]
    pub codes: usize,
    /// Requests in flight at once (each on a keep-alive connection of a pool).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Codes are <prefix>0000001, <prefix>0000002, ...
    #[arg(long, default_value = "c")]
    pub prefix: String,
}

pub async fn run(common: &Common, args: Args) -> Result<bool> {
    if args.codes == 0 || args.concurrency == 0 {
        bail!("--codes and --concurrency must be at least 1");
    }
    let api = Api::new(&common.base_url, common.key.clone())?;
    let (created, existing) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let prefix = Arc::new(args.prefix);
    let start = Instant::now();
    let (c, e) = (created.clone(), existing.clone());
    parallel(args.codes, args.concurrency, move |i| {
        let (api, c, e, prefix) = (api.clone(), c.clone(), e.clone(), prefix.clone());
        async move {
            match api.create_link(&code(&prefix, i)).await? {
                Created::New => c.fetch_add(1, Relaxed),
                Created::Existing => e.fetch_add(1, Relaxed),
            };
            Ok(())
        }
    })
    .await?;
    let time = start.elapsed();

    let mut s = Summary::default();
    s.add("mode", "create");
    s.add(
        "codes",
        format!(
            "{} made, {} already there",
            created.load(Relaxed),
            existing.load(Relaxed)
        ),
    );
    s.add(
        "create time",
        format!(
            "{:.3} s ({})",
            time.as_secs_f64(),
            report::per_sec(args.codes as u64, time)
        ),
    );
    s.print();
    Ok(true)
}
