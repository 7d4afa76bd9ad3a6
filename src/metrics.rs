//! Counters, gauges and histograms the service keeps about itself, shown by `GET /metrics` in
//! the Prometheus text format (0.0.4) through `prometheus-client`. Each [`Metrics`] owns its
//! registry (no process-global one), so every test's app has its own.
//!
//! The hot path stays cheap: a counter is one relaxed atomic add, and a histogram here is a
//! [`Buckets`], one atomic add per bucket count and one for the sum: no lock per observation
//! (prometheus-client's own `Histogram` takes a mutex).

use std::{
    iter,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet, prometheus_text},
    metrics::{MetricType, TypedMetric, counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::domain::{ClickEvent, now_ms};

/// Why a click was not counted (the `reason` label of `linkpulse_clicks_dropped_total`).
/// Its value indexes the counters, in the order of [`DropReason::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The backlog of uncommitted clicks was full (the disk is slow or stalled).
    Backlog,
    /// The store has failed; nothing is committed any more.
    StoreFailed,
    /// The code's actor could not start and is backing off.
    ActorUnavailable,
    /// A stopping actor's successor did not take the click in time.
    Timeout,
    /// The service was stopping.
    ShuttingDown,
    /// The link was deleted while the click was on its way.
    LinkDeleted,
}

impl DropReason {
    const ALL: [DropReason; 6] = [
        DropReason::Backlog,
        DropReason::StoreFailed,
        DropReason::ActorUnavailable,
        DropReason::Timeout,
        DropReason::ShuttingDown,
        DropReason::LinkDeleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Backlog => "backlog",
            DropReason::StoreFailed => "store_failed",
            DropReason::ActorUnavailable => "actor_unavailable",
            DropReason::Timeout => "timeout",
            DropReason::ShuttingDown => "shutting_down",
            DropReason::LinkDeleted => "link_deleted",
        }
    }
}

/// Nanoseconds in a second: duration histograms count in ns and show seconds.
const NS: f64 = 1e9;
const MS: u64 = 1_000_000;
const US: u64 = 1_000;

/// `linkpulse_redirect_duration_seconds`: a redirect takes tens of µs (a cached link, a cast);
/// the upper buckets catch a link read from disk and strict durability's wait for an fsync.
const REDIRECT_BUCKETS: &[u64] = &[
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
const COMMIT_CLICK_BUCKETS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];
/// `linkpulse_commit_duration_seconds`: a commit handed to the OS takes about 100 µs to a few ms;
/// one with an fsync, a few ms on an SSD to tens of ms on a disk; a stalling disk, seconds.
const COMMIT_DURATION_BUCKETS: &[u64] = &[
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
const CLICK_TO_FRAME_BUCKETS: &[u64] = &[
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
    fn new(bounds: &'static [u64], scale: f64) -> Self {
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

    fn observe_duration(&self, took: Duration) {
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

type U64Gauge = Gauge<u64, AtomicU64>;

/// Gauges read from the rest of the service at each scrape (see `http::health`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Scraped {
    pub active_actors: u64,
    pub writer_queue: u64,
    pub backlog_clicks: u64,
    pub backlog_limit: u64,
    pub store_failed: bool,
    pub clicks_not_committed: u64,
    pub connections: u64,
}

#[derive(Debug, Clone, Default)]
struct ScrapedGauges {
    active_actors: U64Gauge,
    writer_queue: U64Gauge,
    backlog_clicks: U64Gauge,
    backlog_limit: U64Gauge,
    store_failed: U64Gauge,
    clicks_not_committed: U64Gauge,
    connections: U64Gauge,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    clicks: Counter,
    /// Indexed like [`DropReason::ALL`]; each shares its value with its labelled series.
    dropped: [Counter; DropReason::ALL.len()],
    actor_start_failures: Counter,
    actors_started: Counter,
    actors_stopped: Counter,
    subscribers: U64Gauge,
    subscribers_refused: Counter,
    /// Clicks waiting in actors' inboxes.
    queued_clicks: U64Gauge,
    scraped: ScrapedGauges,
    redirect_duration: Buckets,
    commit_clicks: Buckets,
    commit_duration: Buckets,
    click_to_frame: Buckets,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The metrics and their registry. Names and help texts are what dashboards read: keep
    /// them. A counter's name is registered without `_total`, which the encoder adds; a help
    /// text without its final period, which the encoder adds too.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let counter = Counter::default();
            registry.register(name, help, counter.clone());
            counter
        };
        let clicks = counter(&mut registry, "linkpulse_clicks", "Clicks counted");
        let actors_started = counter(
            &mut registry,
            "linkpulse_actors_started",
            "Link actors started",
        );
        let actors_stopped = counter(
            &mut registry,
            "linkpulse_actors_stopped",
            "Link actors stopped",
        );
        let subscribers_refused = counter(
            &mut registry,
            "linkpulse_subscribers_refused",
            "Stream requests refused for the total subscriber limit",
        );
        let actor_start_failures = counter(
            &mut registry,
            "linkpulse_actor_start_failures",
            "Link actors that failed to start (their code backs off before the next try)",
        );
        let family = Family::<[(&'static str, &'static str); 1], Counter>::default();
        // Every reason is shown from the start, at 0.
        let dropped =
            DropReason::ALL.map(|r| family.get_or_create(&[("reason", r.as_str())]).clone());
        registry.register(
            "linkpulse_clicks_dropped",
            "Redirects answered whose click was not counted, by reason",
            family,
        );

        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let gauge = U64Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let subscribers = gauge(
            &mut registry,
            "linkpulse_subscribers",
            "Live SSE subscribers",
        );
        let queued_clicks = gauge(
            &mut registry,
            "linkpulse_inbox_clicks",
            "Clicks waiting in link actors' inboxes (their mailboxes hold one message per batch)",
        );
        let scraped = ScrapedGauges {
            active_actors: gauge(
                &mut registry,
                "linkpulse_active_actors",
                "Link actors alive now",
            ),
            writer_queue: gauge(
                &mut registry,
                "linkpulse_writer_queue",
                "Items waiting for the group-commit writer",
            ),
            backlog_clicks: gauge(
                &mut registry,
                "linkpulse_backlog_clicks",
                "Clicks taken and not yet committed (inboxes, mailboxes, the writer's queue)",
            ),
            backlog_limit: gauge(
                &mut registry,
                "linkpulse_backlog_limit",
                "The most clicks that may wait to be committed (--click-backlog)",
            ),
            store_failed: gauge(
                &mut registry,
                "linkpulse_store_failed",
                "1 once a commit or fsync has failed (nothing is committed after that)",
            ),
            clicks_not_committed: gauge(
                &mut registry,
                "linkpulse_clicks_not_committed",
                "Clicks counted that the writer could not commit because the store had failed",
            ),
            connections: gauge(
                &mut registry,
                "linkpulse_connections",
                "Open client connections",
            ),
        };

        let histogram = |registry: &mut Registry, name: &str, help: &str, bounds, scale| {
            let histogram = Buckets::new(bounds, scale);
            registry.register(name, help, histogram.clone());
            histogram
        };
        let redirect_duration = histogram(
            &mut registry,
            "linkpulse_redirect_duration_seconds",
            "Time in the redirect handler, from the request's routing to its answer",
            REDIRECT_BUCKETS,
            NS,
        );
        let commit_clicks = histogram(
            &mut registry,
            "linkpulse_commit_clicks",
            "Clicks per group commit (groups holding clicks)",
            COMMIT_CLICK_BUCKETS,
            1.0,
        );
        let commit_duration = histogram(
            &mut registry,
            "linkpulse_commit_duration_seconds",
            "Time to write a group commit holding clicks, its fsync included when it has one",
            COMMIT_DURATION_BUCKETS,
            NS,
        );
        let click_to_frame = histogram(
            &mut registry,
            "linkpulse_click_to_frame_seconds",
            "From a click to the moment the live frame carrying it is handed to subscribers",
            CLICK_TO_FRAME_BUCKETS,
            NS,
        );
        Self {
            registry,
            clicks,
            dropped,
            actor_start_failures,
            actors_started,
            actors_stopped,
            subscribers,
            subscribers_refused,
            queued_clicks,
            scraped,
            redirect_duration,
            commit_clicks,
            commit_duration,
            click_to_frame,
        }
    }

    pub fn click(&self) {
        self.clicks.inc();
    }

    pub fn actor_started(&self) {
        self.actors_started.inc();
    }

    pub fn clicks_dropped(&self, reason: DropReason, n: usize) {
        self.dropped[reason as usize].inc_by(n as u64);
    }

    /// Clicks dropped for `reason` so far.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].get()
    }

    pub fn actor_start_failed(&self) {
        self.actor_start_failures.inc();
    }

    pub fn actor_stopped(&self) {
        self.actors_stopped.inc();
    }

    pub fn clicks_queued(&self, n: usize) {
        self.queued_clicks.inc_by(n as u64);
    }

    pub fn clicks_taken(&self, n: usize) {
        self.queued_clicks.dec_by(n as u64);
    }

    pub fn subscribers(&self) -> usize {
        self.subscribers.get() as usize
    }

    /// Takes one of `max` subscriber places; `None` when all are taken. The place is given back
    /// when the guard is dropped.
    pub fn take_subscriber_place(self: &Arc<Self>, max: usize) -> Option<SubscriberPlace> {
        let taken =
            self.subscribers
                .inner()
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max as u64).then_some(n + 1)
                });
        if taken.is_ok() {
            Some(SubscriberPlace(self.clone()))
        } else {
            self.subscribers_refused.inc();
            None
        }
    }

    /// A redirect was answered `took` after it was routed.
    pub fn redirect_took(&self, took: Duration) {
        self.redirect_duration.observe_duration(took);
    }

    /// The writer committed a group of `clicks` clicks in `took` (its fsync included, if any).
    /// Groups without clicks (links, barriers, snapshots only) are not observed.
    pub fn group_committed(&self, clicks: usize, took: Duration) {
        if clicks > 0 {
            self.commit_clicks.observe(clicks as u64);
            self.commit_duration.observe_duration(took);
        }
    }

    /// A frame carrying `last` (the newest committed click) is handed to subscribers now.
    pub fn click_framed(&self, last: Option<&ClickEvent>) {
        if let Some(last) = last {
            let delay_ms = u64::try_from(now_ms().saturating_sub(last.at)).unwrap_or(0);
            self.click_to_frame.observe(delay_ms.saturating_mul(MS));
        }
    }

    /// The redirect-duration histogram (benches and tests read its count).
    pub fn redirect_durations(&self) -> &Buckets {
        &self.redirect_duration
    }

    /// The Prometheus text exposition of these metrics, with the gauges read at this scrape.
    pub fn render(&self, scraped: &Scraped) -> String {
        let g = &self.scraped;
        g.active_actors.set(scraped.active_actors);
        g.writer_queue.set(scraped.writer_queue);
        g.backlog_clicks.set(scraped.backlog_clicks);
        g.backlog_limit.set(scraped.backlog_limit);
        g.store_failed.set(u64::from(scraped.store_failed));
        g.clicks_not_committed.set(scraped.clicks_not_committed);
        g.connections.set(scraped.connections);
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// One taken subscriber place.
#[derive(Debug)]
pub struct SubscriberPlace(Arc<Metrics>);

impl Drop for SubscriberPlace {
    fn drop(&mut self) {
        self.0.subscribers.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_keeps_every_name_and_shows_histograms_in_seconds() {
        let metrics = Metrics::new();
        metrics.click();
        metrics.clicks_dropped(DropReason::Backlog, 3);
        metrics.redirect_took(Duration::from_micros(60));
        metrics.group_committed(5, Duration::from_millis(2));
        metrics.group_committed(0, Duration::from_millis(2));
        let text = metrics.render(&Scraped {
            backlog_limit: 7,
            store_failed: true,
            ..Scraped::default()
        });
        for line in [
            "linkpulse_clicks_total 1",
            "# TYPE linkpulse_clicks_total counter",
            "# HELP linkpulse_clicks_total Clicks counted.",
            "linkpulse_clicks_dropped_total{reason=\"backlog\"} 3",
            "linkpulse_clicks_dropped_total{reason=\"shutting_down\"} 0",
            "linkpulse_backlog_limit 7",
            "linkpulse_store_failed 1",
            "linkpulse_subscribers 0",
            "linkpulse_redirect_duration_seconds_bucket{le=\"5e-05\"} 0",
            "linkpulse_redirect_duration_seconds_bucket{le=\"0.0001\"} 1",
            "linkpulse_redirect_duration_seconds_count 1",
            "linkpulse_commit_clicks_bucket{le=\"4\"} 0",
            "linkpulse_commit_clicks_bucket{le=\"8\"} 1",
            "linkpulse_commit_clicks_count 1",
            "linkpulse_commit_clicks_sum 5.0",
            "linkpulse_commit_duration_seconds_count 1",
            "linkpulse_click_to_frame_seconds_count 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
        assert!(!text.contains("_total_total"), "{text}");
    }

    #[test]
    fn a_subscriber_place_is_given_back() {
        let metrics = Arc::new(Metrics::new());
        let first = metrics.take_subscriber_place(1).expect("a place");
        assert!(metrics.take_subscriber_place(1).is_none());
        drop(first);
        assert_eq!(metrics.subscribers(), 0);
        assert!(metrics.take_subscriber_place(1).is_some());
    }
}
