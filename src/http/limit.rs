//! Limits on what one client may ask for: link creations per API key and per client address
//! (keyed GCRA limiters from `governor`), and the size of request headers.

use std::{
    net::IpAddr,
    num::NonZeroU32,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use governor::{DefaultKeyedRateLimiter, Quota, clock::Clock};
use salvo::{http::StatusCode, prelude::*};

use super::ApiError;

/// Checks between two sweeps that forget keys whose allowance is full again, so the limiters
/// hold only the keys seen in about the last second (plus at most this many).
const SWEEP_EVERY: u64 = 1024;

/// The most bytes one request header (name and value) may have.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// The most bytes all request headers together may have.
pub const MAX_HEADERS_BYTES: usize = 32 * 1024;

/// Link creations allowed per API key and per client address, each `rate` per second with a
/// burst of `rate`.
pub struct CreateLimits {
    per_key: Option<DefaultKeyedRateLimiter<String>>,
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    checks: AtomicU64,
}

/// Why a creation was refused: which limit, and how long until one more is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub per_key: bool,
    pub wait: Duration,
}

impl Limited {
    /// `429` with `Retry-After` in whole seconds (at least 1).
    pub fn into_error(self) -> ApiError {
        let secs = self.wait.as_secs() + u64::from(self.wait.subsec_nanos() > 0);
        let secs = u32::try_from(secs.max(1)).unwrap_or(u32::MAX);
        let whose = if self.per_key {
            "this API key"
        } else {
            "this address"
        };
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many links created by {whose}, try again in {secs} s"),
        )
        .with_retry_after(secs)
    }
}

fn limiter<K: std::hash::Hash + Eq + Clone>(rate: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    NonZeroU32::new(rate).map(|rate| DefaultKeyedRateLimiter::keyed(Quota::per_second(rate)))
}

/// The key an address is limited by: IPv4 addresses one by one, IPv6 by /64 (what one
/// subscriber usually holds), IPv4-mapped IPv6 as IPv4.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((v6.to_bits() & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

impl CreateLimits {
    /// `0` turns a limit off.
    pub fn new(per_key: u32, per_ip: u32) -> Self {
        Self {
            per_key: limiter(per_key),
            per_ip: limiter(per_ip),
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one creation from the allowance of the client at `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Limited> {
        let Some(limiter) = &self.per_ip else {
            return Ok(());
        };
        self.sweep_now_and_then();
        limiter.check_key(&ip_key(ip)).map_err(|not_until| Limited {
            per_key: false,
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
            per_key: true,
            wait: not_until.wait_time_from(limiter.clock().now()),
        })
    }

    /// Keys tracked now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.per_key.as_ref().map_or(0, |l| l.len()) + self.per_ip.as_ref().map_or(0, |l| l.len())
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
        let mut total = 0;
        let mut too_large = false;
        for (name, value) in req.headers() {
            let size = name.as_str().len() + value.len();
            total += size;
            if size > MAX_HEADER_BYTES || total > MAX_HEADERS_BYTES {
                too_large = true;
                break;
            }
        }
        if too_large {
            ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!(
                    "request headers are too large (at most {MAX_HEADER_BYTES} bytes each, \
                     {MAX_HEADERS_BYTES} in all)"
                ),
            )
            .write(res);
            ctrl.skip_rest();
        } else {
            ctrl.call_next(req, depot, res).await;
        }
    }
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
        assert!(limited.is_some_and(|l| l.per_key && l.wait <= Duration::from_millis(200)));
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
            per_key: false,
            wait: Duration::from_millis(1),
        }
        .into_error();
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(err.retry_after, Some(1));
        assert!(err.message.contains("address"));
        let err = Limited {
            per_key: true,
            wait: Duration::from_millis(2001),
        }
        .into_error();
        assert_eq!(err.retry_after, Some(3));
    }
}
