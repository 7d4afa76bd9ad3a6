//! `--click-retention-days`: a thread that now and then deletes the raw clicks older than the
//! retention, through the writer (so the totals record stays exact), in chunks. Counts and
//! aggregates stay: only clicks a link's stored aggregates cover are deleted, and never a
//! link's last click, whose number is the link's count.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tracing::{info, warn};

use super::Store;
use crate::domain::now_ms;
use crate::store::WriterHandle;

/// Clicks deleted per group commit.
const CHUNK: usize = 10_000;

/// The running expiry thread; told to stop when dropped (it ends at its next chunk or sleep;
/// the stop does not wait for a scan in progress).
pub struct Retention {
    stop: Arc<AtomicBool>,
}

impl Retention {
    /// Deletes clicks older than `keep` every `every` (first after `every`).
    pub fn start(store: Store, writer: WriterHandle, keep: Duration, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let started = thread::Builder::new()
            .name("linkpulse-retention".into())
            .spawn(move || {
                let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
                while sleep_unless_stopped(&flag, every) {
                    let started = Instant::now();
                    let cutoff = now_ms().saturating_sub(keep_ms);
                    let result = store.expirable(cutoff, CHUNK, |keys| {
                        !flag.load(Ordering::Acquire) && writer.expire_blocking(keys).is_ok()
                    });
                    match result {
                        Ok(0) => {}
                        Ok(expired) => info!(
                            expired,
                            took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(0),
                            "expired raw clicks past the retention (counts and aggregates stay)"
                        ),
                        Err(e) => warn!(cause = %e, "looking for expired clicks failed"),
                    }
                }
            });
        if let Err(e) = started {
            warn!(cause = %e, "cannot start the click retention thread; no clicks expire");
        }
        Self { stop }
    }
}

/// Sleeps `total` in short steps; false once stopped.
fn sleep_unless_stopped(stop: &AtomicBool, total: Duration) -> bool {
    let until = Instant::now() + total;
    while Instant::now() < until {
        if stop.load(Ordering::Acquire) {
            return false;
        }
        thread::sleep(Duration::from_millis(50).min(total));
    }
    !stop.load(Ordering::Acquire)
}

impl Drop for Retention {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}
