//! Open places of one kind (streams, connections) per client address, each given back when
//! its guard is dropped.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use dashmap::{DashMap, mapref::entry::Entry};
use salvo::http::StatusCode;
use tracing::warn;

use super::{super::ApiError, ip_key};

/// Seconds a client over a per-address cap is told to wait before trying again.
pub const PLACE_RETRY_AFTER: u32 = 5;
/// At most one log line per kind of place in this interval; it tells how many were refused.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Open places of one kind (streams, connections) per client address. A place is held by a
/// [`Place`] guard and given back when it is dropped; an address holding none is forgotten, so
/// the map holds only addresses with something open.
pub struct Places {
    kind: &'static str,
    flag: &'static str,
    open: Arc<DashMap<IpAddr, usize>>,
    log: Mutex<RefusalLog>,
}

#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    /// Refusals not logged since `last`.
    quiet: u64,
}

/// One place held by a client address; dropping it gives the place back.
#[must_use = "the place is given back when this is dropped"]
pub struct Place(Option<(Arc<DashMap<IpAddr, usize>>, IpAddr)>);

/// A client address holds as many places as it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    pub kind: &'static str,
    pub limit: usize,
}

impl Full {
    /// `429` with `Retry-After`: the client itself holds too much.
    pub fn into_error(self) -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many open {} from this address (at most {}), try again later",
                self.kind, self.limit
            ),
        )
        .with_retry_after(PLACE_RETRY_AFTER)
    }
}

impl Places {
    pub(super) fn new(kind: &'static str, flag: &'static str) -> Self {
        Self {
            kind,
            flag,
            open: Arc::default(),
            log: Mutex::default(),
        }
    }

    /// Takes a place for the client at `ip` if it holds fewer than `limit` (`0`: no limit, and
    /// nothing is counted). A refusal is logged here, at most once a second per kind, so every
    /// caller (both stream transports, the accept loop) logs it the same way.
    pub fn take(&self, ip: Option<IpAddr>, limit: usize) -> Result<Place, Full> {
        let Some(ip) = ip.filter(|_| limit > 0) else {
            return Ok(Place(None));
        };
        let key = ip_key(ip);
        match self.open.entry(key) {
            Entry::Occupied(mut held) => {
                if *held.get() >= limit {
                    drop(held);
                    self.log_refusal(key, limit);
                    return Err(Full {
                        kind: self.kind,
                        limit,
                    });
                }
                *held.get_mut() += 1;
            }
            Entry::Vacant(none) => {
                none.insert(1);
            }
        }
        Ok(Place(Some((self.open.clone(), key))))
    }

    /// Places held now by the client at `ip` (for tests).
    pub fn held(&self, ip: IpAddr) -> usize {
        self.open.get(&ip_key(ip)).map_or(0, |n| *n)
    }

    /// Client addresses holding at least one place.
    pub fn clients(&self) -> usize {
        self.open.len()
    }

    fn log_refusal(&self, key: IpAddr, limit: usize) {
        let Ok(mut log) = self.log.lock() else {
            return;
        };
        let now = Instant::now();
        if log
            .last
            .is_some_and(|last| now.duration_since(last) < LOG_EVERY)
        {
            log.quiet += 1;
            return;
        }
        let before = std::mem::take(&mut log.quiet);
        log.last = Some(now);
        drop(log);
        warn!(
            client = %key,
            limit,
            refused_before = before,
            "refused: too many open {} from one client address (raise {} to allow more)",
            self.kind,
            self.flag
        );
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some((open, key)) = self.0.take()
            && let Entry::Occupied(mut held) = open.entry(key)
        {
            if *held.get() <= 1 {
                held.remove();
            } else {
                *held.get_mut() -= 1;
            }
        }
    }
}
