//! Counters and gauges the service keeps about itself, shown by `GET /metrics` in the
//! Prometheus text format.

use std::{
    fmt::Write,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

#[derive(Debug, Default)]
pub struct Metrics {
    clicks: AtomicU64,
    actors_started: AtomicU64,
    actors_stopped: AtomicU64,
    subscribers: AtomicUsize,
    subscribers_refused: AtomicU64,
    /// Clicks waiting in actors' inboxes.
    queued_clicks: AtomicUsize,
}

impl Metrics {
    pub fn click(&self) {
        self.clicks.fetch_add(1, Ordering::Relaxed);
    }

    pub fn actor_started(&self) {
        self.actors_started.fetch_add(1, Ordering::Relaxed);
    }

    pub fn actor_stopped(&self) {
        self.actors_stopped.fetch_add(1, Ordering::Relaxed);
    }

    pub fn clicks_queued(&self, n: usize) {
        self.queued_clicks.fetch_add(n, Ordering::Relaxed);
    }

    pub fn clicks_taken(&self, n: usize) {
        self.queued_clicks.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    /// Takes one of `max` subscriber places; `None` when all are taken. The place is given back
    /// when the guard is dropped.
    pub fn take_subscriber_place(self: &Arc<Self>, max: usize) -> Option<SubscriberPlace> {
        let taken = self
            .subscribers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        if taken.is_ok() {
            Some(SubscriberPlace(self.clone()))
        } else {
            self.subscribers_refused.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// The Prometheus text exposition of these metrics plus the gauges passed in.
    pub fn render(&self, gauges: &[(&str, &str, u64)]) -> String {
        let mut out = String::new();
        let counters = [
            ("linkpulse_clicks_total", "Clicks counted.", &self.clicks),
            (
                "linkpulse_actors_started_total",
                "Link actors started.",
                &self.actors_started,
            ),
            (
                "linkpulse_actors_stopped_total",
                "Link actors stopped.",
                &self.actors_stopped,
            ),
            (
                "linkpulse_subscribers_refused_total",
                "Stream requests refused for the total subscriber limit.",
                &self.subscribers_refused,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let subscribers = self.subscribers() as u64;
        let own = [
            (
                "linkpulse_subscribers",
                "Live SSE subscribers.",
                subscribers,
            ),
            (
                "linkpulse_inbox_clicks",
                "Clicks waiting in link actors' inboxes (their mailboxes hold one message per batch).",
                self.queued_clicks.load(Ordering::Relaxed) as u64,
            ),
        ];
        for (name, help, value) in own.iter().chain(gauges) {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}

/// One taken subscriber place.
#[derive(Debug)]
pub struct SubscriberPlace(Arc<Metrics>);

impl Drop for SubscriberPlace {
    fn drop(&mut self) {
        self.0.subscribers.fetch_sub(1, Ordering::AcqRel);
    }
}
