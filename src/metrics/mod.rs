//! Counters, gauges and histograms the service keeps about itself, shown by `GET /metrics` in
//! the Prometheus text format (0.0.4) through `prometheus-client`. Each [`Metrics`] owns its
//! registry (no process-global one), so every test's app has its own.
//!
//! The hot path stays cheap: a counter is one relaxed atomic add, and a histogram here is a
//! [`Buckets`], one atomic add per bucket count and one for the sum: no lock per observation
//! (prometheus-client's own `Histogram` takes a mutex).

mod buckets;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use prometheus_client::{
    encoding::prometheus_text,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

pub use buckets::Buckets;
use buckets::{
    CLICK_TO_FRAME_BUCKETS, COMMIT_CLICK_BUCKETS, COMMIT_DURATION_BUCKETS, MS, NS, REDIRECT_BUCKETS,
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
    /// Served certificates that end within 7 days.
    pub certificates_expiring: u64,
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
    certificates_expiring: U64Gauge,
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
    link_cache_hits: Counter,
    link_cache_misses: Counter,
    /// Clicks waiting in actors' inboxes.
    queued_clicks: U64Gauge,
    scraped: ScrapedGauges,
    redirect_duration: Buckets,
    commit_clicks: Buckets,
    commit_duration: Buckets,
    click_to_frame: Buckets,
    webhook_messages: Counter,
    webhook_clicks: Counter,
    webhook_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The metrics and their registry. Names and help texts are what dashboards read: keep
    /// them. A counter's name is registered without `_total`, which the encoder adds; a help
    /// text without its final period, which the encoder adds too. The exposition lists them
    /// in the order they are registered here.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let r = &mut registry;
        let clicks = counter(r, "linkpulse_clicks", "Clicks counted");
        let actors_started = counter(r, "linkpulse_actors_started", "Link actors started");
        let actors_stopped = counter(r, "linkpulse_actors_stopped", "Link actors stopped");
        let subscribers_refused = counter(
            r,
            "linkpulse_subscribers_refused",
            "Stream requests refused for the total subscriber limit",
        );
        let actor_start_failures = counter(
            r,
            "linkpulse_actor_start_failures",
            "Link actors that failed to start (their code backs off before the next try)",
        );
        let dropped = dropped_counters(r);
        let link_cache_hits = counter(
            r,
            "linkpulse_link_cache_hits",
            "Link lookups answered by the link cache (--link-cache)",
        );
        let link_cache_misses = counter(
            r,
            "linkpulse_link_cache_misses",
            "Link lookups the link cache could not answer, read from the store",
        );
        let subscribers = gauge(r, "linkpulse_subscribers", "Live SSE subscribers");
        let queued_clicks = gauge(
            r,
            "linkpulse_inbox_clicks",
            "Clicks waiting in link actors' inboxes (their mailboxes hold one message per batch)",
        );
        let scraped = ScrapedGauges::register(r);
        let redirect_duration = histogram(
            r,
            "linkpulse_redirect_duration_seconds",
            "Time in the redirect handler, from the request's routing to its answer",
            REDIRECT_BUCKETS,
            NS,
        );
        let commit_clicks = histogram(
            r,
            "linkpulse_commit_clicks",
            "Clicks per group commit (groups holding clicks)",
            COMMIT_CLICK_BUCKETS,
            1.0,
        );
        let commit_duration = histogram(
            r,
            "linkpulse_commit_duration_seconds",
            "Time to write a group commit holding clicks, its fsync included when it has one",
            COMMIT_DURATION_BUCKETS,
            NS,
        );
        let click_to_frame = histogram(
            r,
            "linkpulse_click_to_frame_seconds",
            "From a click to the moment the live frame carrying it is handed to subscribers",
            CLICK_TO_FRAME_BUCKETS,
            NS,
        );
        let webhook_messages = counter(
            &mut registry,
            "linkpulse_webhook_messages",
            "Webhook messages this node delivered (answered 2xx)",
        );
        let webhook_clicks = counter(
            &mut registry,
            "linkpulse_webhook_clicks",
            "Clicks this node delivered to webhooks",
        );
        let webhook_failures = counter(
            &mut registry,
            "linkpulse_webhook_failures",
            "Webhook delivery attempts that failed (no answer, or not 2xx)",
        );
        Self {
            webhook_messages,
            webhook_clicks,
            webhook_failures,
            registry,
            clicks,
            dropped,
            actor_start_failures,
            actors_started,
            actors_stopped,
            subscribers,
            subscribers_refused,
            link_cache_hits,
            link_cache_misses,
            queued_clicks,
            scraped,
            redirect_duration,
            commit_clicks,
            commit_duration,
            click_to_frame,
        }
    }

    /// A webhook message carrying `clicks` clicks was delivered.
    pub fn webhook_delivered(&self, clicks: u64) {
        self.webhook_messages.inc();
        self.webhook_clicks.inc_by(clicks);
    }

    pub fn webhook_failed(&self) {
        self.webhook_failures.inc();
    }

    pub fn click(&self) {
        self.clicks.inc();
    }

    /// A link lookup the link cache answered (`true`) or sent to the store.
    pub fn link_cache(&self, hit: bool) {
        if hit {
            self.link_cache_hits.inc();
        } else {
            self.link_cache_misses.inc();
        }
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
        g.certificates_expiring.set(scraped.certificates_expiring);
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

/// A counter registered in `registry`.
fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let counter = Counter::default();
    registry.register(name, help, counter.clone());
    counter
}

/// A gauge registered in `registry`.
fn gauge(registry: &mut Registry, name: &str, help: &str) -> U64Gauge {
    let gauge = U64Gauge::default();
    registry.register(name, help, gauge.clone());
    gauge
}

/// A histogram of `bounds` (shown divided by `scale`) registered in `registry`.
fn histogram(
    registry: &mut Registry,
    name: &str,
    help: &str,
    bounds: &'static [u64],
    scale: f64,
) -> Buckets {
    let histogram = Buckets::new(bounds, scale);
    registry.register(name, help, histogram.clone());
    histogram
}

/// `linkpulse_clicks_dropped`, one series per [`DropReason`], indexed like
/// [`DropReason::ALL`].
fn dropped_counters(registry: &mut Registry) -> [Counter; DropReason::ALL.len()] {
    let family = Family::<[(&'static str, &'static str); 1], Counter>::default();
    // Every reason is shown from the start, at 0.
    let dropped = DropReason::ALL.map(|r| family.get_or_create(&[("reason", r.as_str())]).clone());
    registry.register(
        "linkpulse_clicks_dropped",
        "Redirects answered whose click was not counted, by reason",
        family,
    );
    dropped
}

impl ScrapedGauges {
    /// The gauges read at each scrape, registered in `registry`.
    fn register(r: &mut Registry) -> Self {
        Self {
            active_actors: gauge(r, "linkpulse_active_actors", "Link actors alive now"),
            writer_queue: gauge(
                r,
                "linkpulse_writer_queue",
                "Items waiting for the group-commit writer",
            ),
            backlog_clicks: gauge(
                r,
                "linkpulse_backlog_clicks",
                "Clicks taken and not yet committed (inboxes, mailboxes, the writer's queue)",
            ),
            backlog_limit: gauge(
                r,
                "linkpulse_backlog_limit",
                "The most clicks that may wait to be committed (--click-backlog)",
            ),
            store_failed: gauge(
                r,
                "linkpulse_store_failed",
                "1 once a commit or fsync has failed (nothing is committed after that)",
            ),
            clicks_not_committed: gauge(
                r,
                "linkpulse_clicks_not_committed",
                "Clicks counted that the writer could not commit because the store had failed",
            ),
            connections: gauge(r, "linkpulse_connections", "Open client connections"),
            certificates_expiring: gauge(
                r,
                "linkpulse_certificates_expiring",
                "Certificates ordered by ACME that end within 7 days (their domains are named by /healthz)",
            ),
        }
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
