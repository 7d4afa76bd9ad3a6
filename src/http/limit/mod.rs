//! Limits on what one client may ask for: link creations per `links`-scope API key and per
//! client address (keyed GCRA limiters from `governor`; admin keys are not limited), failed
//! authentications per client address ([`Failures`]), open streams and open connections per
//! client address ([`Places`]), and the size of request headers.

pub mod failures;
mod headers;
mod places;

use std::{
    net::IpAddr,
    num::NonZeroU32,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use governor::{DefaultKeyedRateLimiter, Quota, clock::Clock};
use salvo::http::StatusCode;

use super::ApiError;
pub use failures::Failures;
pub use headers::{HeaderLimit, MAX_HEADER_BYTES, MAX_HEADERS_BYTES, check_header_sizes};
pub use places::{Full, PLACE_RETRY_AFTER, Place, Places};

/// Checks between two sweeps that forget keys whose allowance is full again, so the limiters
/// hold only the keys seen in about the last second (plus at most this many).
const SWEEP_EVERY: u64 = 1024;

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
        match failures.wait(&ip_key(ip), Instant::now()) {
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
            + self.auth_failures.as_ref().map_or(0, Failures::tracked)
            + self.password_failures.as_ref().map_or(0, Failures::tracked)
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

#[cfg(test)]
mod tests;
