//! Client address and header hygiene.

use std::net::IpAddr;

/// Anonymises an address the way common analytics tools do: the last octet of IPv4 and all
/// but the first 48 bits of IPv6 are zeroed. What remains names a network, not a person.
pub fn anonymise_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return anonymise_ip(IpAddr::V4(v4));
            }
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], 0, 0, 0, 0, 0])
        }
    }
}

/// Cuts a header value to at most `max` bytes on a character boundary, so one request cannot
/// make a stored click (or a live frame) large.
pub fn clip(value: &str, max: usize) -> String {
    if value.len() <= max {
        return value.to_owned();
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymises_v4_and_v6() {
        let v4: IpAddr = "203.0.113.77".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        assert_eq!(anonymise_ip(v4).to_string(), "203.0.113.0");
        let v6: IpAddr = "2001:db8:abcd:12:1:2:3:4".parse().unwrap_or(v4);
        assert_eq!(anonymise_ip(v6).to_string(), "2001:db8:abcd::");
        let mapped: IpAddr = "::ffff:198.51.100.9".parse().unwrap_or(v4);
        assert_eq!(anonymise_ip(mapped).to_string(), "198.51.100.0");
    }

    #[test]
    fn clips_on_char_boundaries() {
        assert_eq!(clip("abc", 10), "abc");
        assert_eq!(clip("abcdef", 3), "abc");
        assert_eq!(clip("ééé", 3), "é");
    }
}
