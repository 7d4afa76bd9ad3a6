//! Limits on what one client may ask for: link creations per `links`-scope API key and per
//! client address (keyed GCRA limiters from `governor`; admin keys are not limited), failed
//! authentications per client address ([`Failures`]), open streams and open connections per
//! client address ([`Places`]), and the size of request headers.

use std::{
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use dashmap::{DashMap, mapref::entry::Entry};
use governor::{DefaultKeyedRateLimiter, Quota, clock::Clock};
use salvo::{http::StatusCode, prelude::*};
use tracing::warn;

use super::ApiError;

/// Checks between two sweeps that forget keys whose allowance is full again, so the limiters
/// hold only the keys seen in about the last second (plus at most this many).
const SWEEP_EVERY: u64 = 1024;

/// The most bytes one request header (name and value) may have.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// The most bytes all request headers together may have.
pub const MAX_HEADERS_BYTES: usize = 32 * 1024;

/// What one client may take: link creations per API key and per client address, each `rate`
/// per second with a burst of `rate`; failed authentications per client address; and open
/// streams and open connections per client address, each capped by its flag (passed where a
/// place is taken).
pub struct ClientLimits {
    per_key: Option<DefaultKeyedRateLimiter<String>>,
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    auth_failures: Option<Failures>,
    /// Password tries of protected links per client address (`--password-tries-per-minute`).
    password_failures: Option<Failures>,
    checks: AtomicU64,
    /// Open streams per client address (`--sse-max-per-client`), on both stream transports.
    pub streams: Places,
    /// Open connections per client address (`--max-connections-per-client`), taken in the
    /// accept loop.
    pub connections: Places,
}

/// The name the limits were first given, when they held only creation rates.
pub type CreateLimits = ClientLimits;

/// Which rate a request went past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// Link creations of one API key.
    CreatesPerKey,
    /// Link creations from one client address.
    CreatesPerAddress,
    /// Failed authentications from one client address.
    AuthFailures,
    /// Password tries of protected links from one client address.
    PasswordFailures,
}

/// Why a request was refused: which limit, and how long until one more is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub rate: Rate,
    pub wait: Duration,
}

impl Limited {
    /// `429` with `Retry-After` in whole seconds (at least 1), the same number in the message.
    pub fn into_error(self) -> ApiError {
        let secs = self.wait.as_secs() + u64::from(self.wait.subsec_nanos() > 0);
        let secs = u32::try_from(secs.max(1)).unwrap_or(u32::MAX);
        let what = match self.rate {
            Rate::CreatesPerKey => "too many links created by this API key",
            Rate::CreatesPerAddress => "too many links created by this address",
            Rate::AuthFailures => "too many failed authentications from this address",
            Rate::PasswordFailures => "too many password tries from this address",
        };
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{what}, try again in {secs} s"),
        )
        .with_retry_after(secs)
    }
}

/// Failed authentications per client address: a GCRA of `rate` per second with a burst of
/// `rate`, kept by hand because an address past it is refused *before* its key is checked
/// (governor's limiters answer only by taking from the allowance, and a refused request must
/// take nothing: it was not a failure, and a right key must not extend the wait).
struct Failures {
    /// What one failure takes from the allowance: 1 s / rate.
    interval: Duration,
    /// The allowance less one failure: an address owing more than this is refused.
    tolerance: Duration,
    /// Per address key, when its allowance is whole again.
    whole_at: DashMap<IpAddr, Instant>,
}

impl Failures {
    /// `rate` failures per `per`, also the burst; `None` when `rate` is 0 (no limit).
    fn new(rate: u32, per: Duration) -> Option<Self> {
        let rate = NonZeroU32::new(rate)?;
        let interval = per / rate.get();
        Some(Self {
            interval,
            tolerance: interval * (rate.get() - 1),
            whole_at: DashMap::new(),
        })
    }

    /// How long the address must still wait, if it is past its allowance.
    fn wait(&self, key: IpAddr, now: Instant) -> Option<Duration> {
        let owed = self.whole_at.get(&key)?.saturating_duration_since(now);
        (owed > self.tolerance).then(|| owed - self.tolerance)
    }

    /// Takes one from the allowance if the address is within it, atomically (tries that
    /// race each see the others'); otherwise how long it must wait.
    fn take(&self, key: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut whole_at = self.whole_at.entry(key).or_insert(now);
        let owed = whole_at.saturating_duration_since(now);
        if owed > self.tolerance {
            return Err(owed - self.tolerance);
        }
        *whole_at = (*whole_at).max(now) + self.interval;
        Ok(())
    }

    fn failed(&self, key: IpAddr, now: Instant) {
        let mut whole_at = self.whole_at.entry(key).or_insert(now);
        *whole_at = (*whole_at).max(now) + self.interval;
    }

    /// Forgets the addresses whose allowance is whole again.
    fn sweep(&self, now: Instant) {
        self.whole_at.retain(|_, whole_at| *whole_at > now);
        self.whole_at.shrink_to_fit();
    }
}

fn limiter<K: std::hash::Hash + Eq + Clone>(rate: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    NonZeroU32::new(rate).map(|rate| DefaultKeyedRateLimiter::keyed(Quota::per_second(rate)))
}

/// The key an address is limited by: IPv4 addresses one by one, IPv6 by /64 (what one
/// subscriber usually holds), IPv4-mapped IPv6 as IPv4.
pub(crate) fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((v6.to_bits() & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

impl ClientLimits {
    /// Creation rates per second; `0` turns a limit off.
    pub fn new(per_key: u32, per_ip: u32) -> Self {
        Self {
            per_key: limiter(per_key),
            per_ip: limiter(per_ip),
            auth_failures: None,
            password_failures: None,
            checks: AtomicU64::new(0),
            streams: Places::new("streams", "--sse-max-per-client"),
            connections: Places::new("connections", "--max-connections-per-client"),
        }
    }

    /// Failed authentications allowed per client address and second, also the burst; `0` (the
    /// value [`ClientLimits::new`] starts with) turns the limit off.
    #[must_use]
    pub fn with_auth_failures(mut self, per_ip: u32) -> Self {
        self.auth_failures = Failures::new(per_ip, Duration::from_secs(1));
        self
    }

    /// Password tries allowed per client address and minute, also the burst; `0` turns the
    /// limit off.
    #[must_use]
    pub fn with_password_tries(mut self, per_minute: u32) -> Self {
        self.password_failures = Failures::new(per_minute, Duration::from_secs(60));
        self
    }

    /// Takes one password try of the client at `ip` from its allowance, or says how long it
    /// must wait. A refused try costs no password check at all; tries that race each see
    /// the others'.
    pub fn try_password(&self, ip: IpAddr) -> Result<(), Limited> {
        let Some(tries) = &self.password_failures else {
            return Ok(());
        };
        self.sweep_now_and_then();
        tries
            .take(ip_key(ip), Instant::now())
            .map_err(|wait| Limited {
                rate: Rate::PasswordFailures,
                wait,
            })
    }

    fn check_failures(failures: Option<&Failures>, ip: IpAddr, rate: Rate) -> Result<(), Limited> {
        let Some(failures) = failures else {
            return Ok(());
        };
        match failures.wait(ip_key(ip), Instant::now()) {
            None => Ok(()),
            Some(wait) => Err(Limited { rate, wait }),
        }
    }

    /// Whether the client at `ip` may present a key now: `Err` while it is past its allowance
    /// of failed authentications. Takes nothing from the allowance.
    pub fn check_auth(&self, ip: IpAddr) -> Result<(), Limited> {
        Self::check_failures(self.auth_failures.as_ref(), ip, Rate::AuthFailures)
    }

    /// Counts one failed authentication of the client at `ip`.
    pub fn auth_failed(&self, ip: IpAddr) {
        if let Some(failures) = &self.auth_failures {
            self.sweep_now_and_then();
            failures.failed(ip_key(ip), Instant::now());
        }
    }

    /// Takes one creation from the allowance of the client at `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Limited> {
        let Some(limiter) = &self.per_ip else {
            return Ok(());
        };
        self.sweep_now_and_then();
        limiter.check_key(&ip_key(ip)).map_err(|not_until| Limited {
            rate: Rate::CreatesPerAddress,
            wait: not_until.wait_time_from(limiter.clock().now()),
        })
    }

    /// Takes one creation from the allowance of the API key `key_id`.
    pub fn check_key(&self, key_id: &String) -> Result<(), Limited> {
        let Some(limiter) = &self.per_key else {
            return Ok(());
        };
        self.sweep_now_and_then();
        limiter.check_key(key_id).map_err(|not_until| Limited {
            rate: Rate::CreatesPerKey,
            wait: not_until.wait_time_from(limiter.clock().now()),
        })
    }

    /// Keys tracked now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.per_key.as_ref().map_or(0, |l| l.len())
            + self.per_ip.as_ref().map_or(0, |l| l.len())
            + self.auth_failures.as_ref().map_or(0, |f| f.whole_at.len())
            + self
                .password_failures
                .as_ref()
                .map_or(0, |f| f.whole_at.len())
    }

    /// Forgets the keys whose allowance is full again, every [`SWEEP_EVERY`] checks.
    fn sweep_now_and_then(&self) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep();
        }
    }

    pub fn sweep(&self) {
        if let Some(l) = &self.per_key {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.per_ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
        for f in [&self.auth_failures, &self.password_failures]
            .into_iter()
            .flatten()
        {
            f.sweep(Instant::now());
        }
    }
}

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
    fn new(kind: &'static str, flag: &'static str) -> Self {
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

/// Refuses requests whose headers are larger than [`MAX_HEADER_BYTES`] one by one or
/// [`MAX_HEADERS_BYTES`] together with `431`, before any handler sees them (hyper alone takes
/// up to about 400 KiB of headers, and refuses more than 100 of them with an empty `431`).
pub struct HeaderLimit;

#[async_trait]
impl Handler for HeaderLimit {
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        ctrl: &mut FlowCtrl,
    ) {
        let sizes = req
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len());
        match check_header_sizes(sizes) {
            Ok(()) => {
                ctrl.call_next(req, depot, res).await;
            }
            Err(e) => {
                e.write(res);
                ctrl.skip_rest();
            }
        }
    }
}

/// The header size limits of [`HeaderLimit`], for each header's name and value length: shared
/// with the lean stream writer so both transports refuse the same heads.
pub fn check_header_sizes(sizes: impl IntoIterator<Item = usize>) -> Result<(), ApiError> {
    let mut total = 0;
    for size in sizes {
        total += size;
        if size > MAX_HEADER_BYTES || total > MAX_HEADERS_BYTES {
            return Err(ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!(
                    "request headers are too large (at most {MAX_HEADER_BYTES} bytes each, \
                     {MAX_HEADERS_BYTES} in all)"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_passes_and_the_next_one_waits() {
        let limits = CreateLimits::new(5, 0);
        let key = "k".to_owned();
        for _ in 0..5 {
            assert_eq!(limits.check_key(&key), Ok(()));
        }
        let limited = limits.check_key(&key).err();
        assert!(
            limited.is_some_and(
                |l| l.rate == Rate::CreatesPerKey && l.wait <= Duration::from_millis(200)
            )
        );
        assert_eq!(limits.check_key(&"other".to_owned()), Ok(()));
        let ip: IpAddr = [192, 0, 2, 1].into();
        for _ in 0..100 {
            assert_eq!(limits.check_ip(ip), Ok(()), "per address is off");
        }
    }

    #[test]
    fn ipv6_addresses_are_limited_by_slash_64() {
        let limits = CreateLimits::new(0, 2);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let c: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert_eq!(limits.check_ip(a), Ok(()));
        assert_eq!(limits.check_ip(b), Ok(()));
        assert!(limits.check_ip(a).is_err(), "same /64");
        assert_eq!(limits.check_ip(c), Ok(()), "another /64");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(ip_key(mapped), IpAddr::from([192, 0, 2, 7]));
    }

    #[test]
    fn sweeping_forgets_keys_whose_allowance_is_full() {
        let limits = CreateLimits::new(1000, 1000);
        for i in 0..100u32 {
            let _ = limits.check_key(&i.to_string());
            let _ = limits.check_ip(IpAddr::from(i.to_be_bytes()));
        }
        assert_eq!(limits.tracked(), 200);
        // A rate of 1000/s with a burst of 1000: one creation is given back after 1 ms.
        std::thread::sleep(Duration::from_millis(20));
        limits.sweep();
        assert_eq!(limits.tracked(), 0);
    }

    #[test]
    fn retry_after_is_whole_seconds_at_least_one() {
        let err = Limited {
            rate: Rate::CreatesPerAddress,
            wait: Duration::from_millis(1),
        }
        .into_error();
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(err.retry_after, Some(1));
        assert_eq!(
            err.message,
            "too many links created by this address, try again in 1 s"
        );
        let err = Limited {
            rate: Rate::AuthFailures,
            wait: Duration::from_millis(2001),
        }
        .into_error();
        assert_eq!(err.retry_after, Some(3));
        assert_eq!(
            err.message,
            "too many failed authentications from this address, try again in 3 s"
        );
    }

    #[test]
    fn failed_authentications_past_the_burst_refuse_the_address_for_a_while() {
        let failures = Failures::new(4, Duration::from_secs(1)).expect("a rate of 4");
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let start = Instant::now();
        for i in 0..4 {
            assert_eq!(
                failures.wait(a, start),
                None,
                "failure {i} is within the burst"
            );
            failures.failed(a, start);
        }
        // Four failures at once: the allowance comes back one failure per 250 ms.
        assert_eq!(failures.wait(a, start), Some(Duration::from_millis(250)));
        assert_eq!(
            failures.wait(b, start),
            None,
            "another address is not held back"
        );
        let later = start + Duration::from_millis(250);
        assert_eq!(failures.wait(a, later), None, "one more try after 250 ms");
        failures.failed(a, later);
        assert_eq!(failures.wait(a, later), Some(Duration::from_millis(250)));
        failures.sweep(later + Duration::from_secs(1));
        assert_eq!(failures.whole_at.len(), 0, "a whole allowance is forgotten");
        assert!(
            Failures::new(0, Duration::from_secs(1)).is_none(),
            "0 is no limit"
        );
    }

    #[test]
    fn places_are_capped_per_address_and_given_back() {
        let limits = ClientLimits::new(0, 0);
        let places = &limits.streams;
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let first = places.take(Some(a), 2);
        let second = places.take(Some(a), 2);
        assert!(first.is_ok() && second.is_ok());
        let full = places.take(Some(a), 2).err();
        assert_eq!(
            full,
            Some(Full {
                kind: "streams",
                limit: 2
            })
        );
        let other = places.take(Some(b), 2);
        assert!(other.is_ok(), "another address has its own places");
        assert_eq!((places.held(a), places.held(b)), (2, 1));
        drop(first);
        assert_eq!(places.held(a), 1);
        let again = places.take(Some(a), 2);
        assert!(again.is_ok(), "a place given back is taken again");
        drop((second, again, other));
        assert_eq!(
            places.clients(),
            0,
            "an address holding nothing is forgotten"
        );
    }

    #[test]
    fn ipv6_places_are_shared_by_a_slash_64_and_zero_is_no_limit() {
        let limits = ClientLimits::new(0, 0);
        let places = &limits.connections;
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        let c: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let held = places.take(Some(a), 1);
        assert!(held.is_ok());
        assert!(places.take(Some(b), 1).is_err(), "same /64");
        assert!(places.take(Some(c), 1).is_ok(), "another /64");
        let unlimited: Vec<_> = (0..100).map(|_| places.take(Some(b), 0)).collect();
        assert!(unlimited.iter().all(Result::is_ok));
        assert_eq!(places.held(a), 1, "a limit of 0 counts nothing");
        assert!(
            places.take(None, 1).is_ok(),
            "no address: nothing to count by"
        );
    }

    #[test]
    fn a_full_address_is_told_429_with_retry_after() {
        let err = Full {
            kind: "connections",
            limit: 3,
        }
        .into_error();
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(err.retry_after, Some(PLACE_RETRY_AFTER));
        assert_eq!(
            err.message,
            "too many open connections from this address (at most 3), try again later"
        );
    }
}
