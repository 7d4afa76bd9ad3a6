//! Counters and gauges the service keeps about itself, shown by `GET /metrics` in the
//! Prometheus text format.

use std::{
    fmt::Write,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

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

#[derive(Debug, Default)]
pub struct Metrics {
    clicks: AtomicU64,
    /// Indexed like [`DropReason::ALL`].
    dropped: [AtomicU64; 5],
    actor_start_failures: AtomicU64,
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

    pub fn clicks_dropped(&self, reason: DropReason, n: usize) {
        self.dropped[reason as usize].fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Clicks dropped for `reason` so far.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    pub fn actor_start_failed(&self) {
        self.actor_start_failures.fetch_add(1, Ordering::Relaxed);
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
            (
                "linkpulse_actor_start_failures_total",
                "Link actors that failed to start (their code backs off before the next try).",
                &self.actor_start_failures,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let name = "linkpulse_clicks_dropped_total";
        let _ = writeln!(
            out,
            "# HELP {name} Redirects answered whose click was not counted, by reason.\n# TYPE {name} counter"
        );
        for (reason, value) in DropReason::ALL.iter().zip(&self.dropped) {
            let _ = writeln!(
                out,
                "{name}{{reason=\"{}\"}} {}",
                reason.as_str(),
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
