//! A link's inbox of clicks. Redirect handlers push clicks here and wake the actor with one
//! message only when the inbox goes from empty to not empty, so under load one actor message
//! carries a whole batch of clicks (fewer allocations and task wake-ups per click). The clicks'
//! places in the backlog are merged into one [`Permit`] that travels with the batch.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use super::click::Click;
use crate::{metrics::Metrics, store::Permit};

#[derive(Default)]
struct State {
    clicks: Vec<Click>,
    permit: Permit,
    /// A `Collect` message is on its way to the actor.
    scheduled: bool,
    /// The actor has ended: pushes are refused and go to its successor instead.
    closed: bool,
}

pub(crate) struct Inbox {
    state: Mutex<State>,
    metrics: Arc<Metrics>,
    /// The actor has subscribers or waiting questions: it declines to passivate, so the
    /// directory's CLOCK passes it by.
    busy: AtomicBool,
}

pub(crate) enum Push {
    /// Queued; the actor is already told.
    Queued,
    /// Queued; the caller must send the actor a `Collect`.
    Wake,
    /// The actor has ended; here is the click back.
    Closed(Click, Permit),
}

impl Inbox {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            state: Mutex::default(),
            metrics,
            busy: AtomicBool::new(false),
        }
    }

    pub fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Relaxed);
    }

    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed)
    }

    pub fn push(&self, click: Click, permit: Permit) -> Push {
        let Ok(mut state) = self.state.lock() else {
            return Push::Closed(click, permit);
        };
        if state.closed {
            return Push::Closed(click, permit);
        }
        state.clicks.push(click);
        state.permit.merge(permit);
        self.metrics.clicks_queued(1);
        if state.scheduled {
            Push::Queued
        } else {
            state.scheduled = true;
            Push::Wake
        }
    }

    /// Everything queued, in order; the next push wakes the actor again.
    pub fn take(&self) -> (Vec<Click>, Permit) {
        match self.state.lock() {
            Ok(mut state) => {
                state.scheduled = false;
                let clicks = std::mem::take(&mut state.clicks);
                self.metrics.clicks_taken(clicks.len());
                (clicks, std::mem::take(&mut state.permit))
            }
            Err(_) => (Vec::new(), Permit::empty()),
        }
    }

    /// Refuses further pushes and returns what the actor did not collect.
    pub fn close(&self) -> (Vec<Click>, Permit) {
        let mut state = match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        state.closed = true;
        let clicks = std::mem::take(&mut state.clicks);
        self.metrics.clicks_taken(clicks.len());
        (clicks, std::mem::take(&mut state.permit))
    }
}
