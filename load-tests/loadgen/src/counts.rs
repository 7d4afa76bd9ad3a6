//! `counts`: the sum of `clickCount` over the links `<prefix>0000001` ... `<prefix>N`, for
//! checking the counting of load tools that only click (wrk with `wrk-codes.lua`): read it
//! before and after, and compare the increase with the redirects they were answered.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering::Relaxed},
};

use anyhow::{Result, bail};
use tokio::time::Instant;

use crate::{
    Common,
    http::{Api, code, parallel},
    report::Summary,
};

/// The same links as `create` makes.
pub use crate::create::Args;

pub async fn run(common: &Common, args: Args) -> Result<bool> {
    if args.codes == 0 || args.concurrency == 0 {
        bail!("--codes and --concurrency must be at least 1");
    }
    let api = Api::new(&common.base_url, common.key.clone())?;
    let sum = Arc::new(AtomicU64::new(0));
    let prefix = Arc::new(args.prefix);
    let start = Instant::now();
    let total = sum.clone();
    parallel(args.codes, args.concurrency, move |i| {
        let (api, total, prefix) = (api.clone(), total.clone(), prefix.clone());
        async move {
            total.fetch_add(api.click_count(&code(&prefix, i)).await?, Relaxed);
            Ok(())
        }
    })
    .await?;

    let mut s = Summary::default();
    s.add("mode", "counts");
    s.add("codes", args.codes);
    s.add("sum of clickCount", sum.load(Relaxed));
    s.add(
        "read time",
        format!("{:.3} s", start.elapsed().as_secs_f64()),
    );
    s.print();
    Ok(true)
}
