//! Unit tests of the limits: rates and their bursts, IPv6 by /64, sweeping, `Retry-After`,
//! failed tries, places per address.

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
        limited
            .is_some_and(|l| l.rate == Rate::CreatesPerKey && l.wait <= Duration::from_millis(200))
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
            failures.wait(&a, start),
            None,
            "failure {i} is within the burst"
        );
        failures.failed(a, start);
    }
    // Four failures at once: the allowance comes back one failure per 250 ms.
    assert_eq!(failures.wait(&a, start), Some(Duration::from_millis(250)));
    assert_eq!(
        failures.wait(&b, start),
        None,
        "another address is not held back"
    );
    let later = start + Duration::from_millis(250);
    assert_eq!(failures.wait(&a, later), None, "one more try after 250 ms");
    failures.failed(a, later);
    assert_eq!(failures.wait(&a, later), Some(Duration::from_millis(250)));
    failures.sweep(later + Duration::from_secs(1));
    assert_eq!(failures.tracked(), 0, "a whole allowance is forgotten");
    assert!(
        Failures::<std::net::IpAddr>::new(0, Duration::from_secs(1)).is_none(),
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
