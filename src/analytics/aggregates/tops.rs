//! Top lists: the clicks of each dimension (referrer host, country, browser, OS, device) by
//! value, capped at `top_values` values with the rest under `(other)`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{Counts, DIRECT, OTHER, UNKNOWN};
use crate::domain::{ClickEvent, DeviceClass};

/// The clicks of one dimension by value, capped. Ten lookups per click (five lists, per day
/// and for the whole life) on short strings: foldhash, not the default SipHash (a profile of
/// 10,000 busy links showed the lookups at 4% of the process with SipHash).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TopList {
    values: HashMap<String, Counts, foldhash::fast::RandomState>,
    other: Counts,
}

impl TopList {
    fn add(&mut self, value: &str, human: bool, cap: usize) {
        if let Some(counts) = self.values.get_mut(value) {
            counts.add(human);
        } else if self.values.len() < cap {
            self.values.entry(value.to_owned()).or_default().add(human);
        } else {
            self.other.add(human);
        }
    }

    fn merge(&mut self, other: &TopList) {
        for (value, counts) in &other.values {
            self.values.entry(value.clone()).or_default().merge(counts);
        }
        self.other.merge(&other.other);
    }

    /// Values by clicks, most first (ties by value), then `(other)` if it has any.
    pub fn ranked(&self) -> Vec<(&str, Counts)> {
        let mut out: Vec<(&str, Counts)> = self
            .values
            .iter()
            .map(|(value, counts)| (value.as_str(), *counts))
            .collect();
        out.sort_unstable_by(|a, b| b.1.clicks.cmp(&a.1.clicks).then(a.0.cmp(b.0)));
        if self.other.clicks > 0 {
            out.push((OTHER, self.other));
        }
        out
    }

    pub fn sum(&self) -> Counts {
        let mut sum = self.other;
        for counts in self.values.values() {
            sum.merge(counts);
        }
        sum
    }
}

/// The five top lists.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Breakdown {
    pub referrers: TopList,
    pub countries: TopList,
    pub browsers: TopList,
    pub os: TopList,
    pub devices: TopList,
}

impl Breakdown {
    pub(super) fn add(&mut self, click: &Facets<'_>, cap: usize) {
        let human = click.human;
        self.referrers.add(&click.referrer, human, cap);
        self.countries.add(click.country, human, cap);
        self.browsers.add(click.browser, human, cap);
        self.os.add(click.os, human, cap);
        self.devices.add(click.device, human, cap);
    }

    pub(super) fn merge(&mut self, other: &Breakdown) {
        self.referrers.merge(&other.referrers);
        self.countries.merge(&other.countries);
        self.browsers.merge(&other.browsers);
        self.os.merge(&other.os);
        self.devices.merge(&other.devices);
    }

    /// Every list with its name, for checks that each sums to the count.
    pub fn lists(&self) -> [(&'static str, &TopList); 5] {
        [
            ("referrers", &self.referrers),
            ("countries", &self.countries),
            ("browsers", &self.browsers),
            ("os", &self.os),
            ("devices", &self.devices),
        ]
    }
}

/// What the top lists file one click under.
pub(super) struct Facets<'a> {
    pub(super) human: bool,
    referrer: std::borrow::Cow<'a, str>,
    country: &'a str,
    browser: &'a str,
    os: &'a str,
    device: &'a str,
}

impl<'a> Facets<'a> {
    pub(super) fn of(event: &'a ClickEvent) -> Self {
        Self {
            human: !event.bot,
            referrer: referrer_host(event.referer.as_deref()),
            country: event.country.as_deref().unwrap_or(UNKNOWN),
            browser: &event.browser,
            os: &event.os,
            device: device_name(event.device),
        }
    }
}

pub fn device_name(device: DeviceClass) -> &'static str {
    match device {
        DeviceClass::Desktop => "desktop",
        DeviceClass::Mobile => "mobile",
        DeviceClass::Tablet => "tablet",
        DeviceClass::Bot => "bot",
        DeviceClass::Other => "other",
    }
}

/// The host a referrer names, without `www.`: `(direct)` when there is none, `(unknown)`
/// when it is not a URL with a host.
pub fn referrer_host(referer: Option<&str>) -> std::borrow::Cow<'static, str> {
    let Some(referer) = referer.map(str::trim).filter(|r| !r.is_empty()) else {
        return DIRECT.into();
    };
    match url::Url::parse(referer)
        .ok()
        .and_then(|url| url.host_str().map(str::to_ascii_lowercase))
    {
        Some(host) => host.strip_prefix("www.").unwrap_or(&host).to_owned().into(),
        None => UNKNOWN.into(),
    }
}
