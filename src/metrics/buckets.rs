//! [`Buckets`]: a histogram of fixed buckets kept in atomics (one atomic add per bucket count
//! and one for the sum, no lock per observation), and the bucket bounds of each histogram.

use std::{
    iter,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, TypedMetric},
};

/// Nanoseconds in a second: duration histograms count in ns and show seconds.
pub(super) const NS: f64 = 1e9;
pub(super) const MS: u64 = 1_000_000;
pub(super) const US: u64 = 1_000;

/// `linkpulse_redirect_duration_seconds`: a redirect takes tens of µs (a cached link, a cast);
/// the upper buckets catch a link read from disk and strict durability's wait for an fsync.
pub(super) const REDIRECT_BUCKETS: &[u64] = &[
    25 * US,
    50 * US,
    100 * US,
    250 * US,
    500 * US,
    MS,
    5 * MS / 2,
    5 * MS,
    10 * MS,
    25 * MS,
    50 * MS,
    100 * MS,
    250 * MS,
    1000 * MS,
];
/// `linkpulse_commit_clicks`: powers of two up to the default `--commit-max` (4096).
pub(super) const COMMIT_CLICK_BUCKETS: &[u64] =
    &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];
/// `linkpulse_commit_duration_seconds`: a commit handed to the OS takes about 100 µs to a few ms;
/// one with an fsync, a few ms on an SSD to tens of ms on a disk; a stalling disk, seconds.
pub(super) const COMMIT_DURATION_BUCKETS: &[u64] = &[
    100 * US,
    250 * US,
    500 * US,
    MS,
    5 * MS / 2,
    5 * MS,
    10 * MS,
    25 * MS,
    50 * MS,
    100 * MS,
    250 * MS,
    1000 * MS,
    2500 * MS,
];
/// `linkpulse_click_to_frame_seconds`: the group commit (2 ms) plus the frame interval
/// (`--sse-min-interval`, 20 ms) is the usual; the upper buckets show conflation under load.
/// The click's time is in epoch milliseconds, so nothing finer than 5 ms is told apart.
pub(super) const CLICK_TO_FRAME_BUCKETS: &[u64] = &[
    5 * MS,
    10 * MS,
    25 * MS,
    50 * MS,
    100 * MS,
    250 * MS,
    500 * MS,
    1000 * MS,
    2500 * MS,
    5000 * MS,
    10_000 * MS,
];

/// A histogram of fixed buckets kept in atomics. Bounds and the sum are integers in the unit
/// observed (ns, clicks) and divided by `scale` when shown.
#[derive(Debug, Clone)]
pub struct Buckets(Arc<BucketsInner>);

#[derive(Debug)]
struct BucketsInner {
    /// Upper bounds, ascending.
    bounds: &'static [u64],
    /// One count per bound (not cumulative), then the `+Inf` bucket.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
    scale: f64,
}

impl Buckets {
    pub(super) fn new(bounds: &'static [u64], scale: f64) -> Self {
        debug_assert!(bounds.is_sorted());
        Self(Arc::new(BucketsInner {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            scale,
        }))
    }

    pub fn observe(&self, value: u64) {
        let inner = &self.0;
        let i = inner.bounds.partition_point(|&bound| bound < value);
        inner.counts[i].fetch_add(1, Ordering::Relaxed);
        inner.sum.fetch_add(value, Ordering::Relaxed);
    }

    pub(super) fn observe_duration(&self, took: Duration) {
        self.observe(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for Buckets {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Buckets {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &self.0;
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .map(|&bound| bound as f64 / inner.scale)
            .chain(iter::once(f64::INFINITY))
            .zip(inner.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        // The count is the buckets' sum, so the exposition is consistent even mid-update.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = inner.sum.load(Ordering::Relaxed) as f64 / inner.scale;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}
