//! Reporting: aligned `key: value` summaries, latency histograms and the server's memory.

use std::{fmt::Display, time::Duration};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

/// Lines of `key: value`, printed with the values aligned.
#[derive(Default)]
pub struct Summary(Vec<(String, String)>);

impl Summary {
    pub fn add(&mut self, key: impl Into<String>, value: impl Display) {
        self.0.push((key.into(), value.to_string()));
    }

    /// The given quantiles and the max of a histogram of microseconds, in milliseconds.
    pub fn latencies(&mut self, prefix: &str, hist: &Histogram<u64>, quantiles: &[(&str, f64)]) {
        if hist.is_empty() {
            self.add(prefix, "no samples");
            return;
        }
        for (label, q) in quantiles {
            self.add(format!("{prefix} {label}"), ms(hist.value_at_quantile(*q)));
        }
        self.add(format!("{prefix} max"), ms(hist.max()));
    }

    pub fn print(&self) {
        let width = self.0.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
        for (key, value) in &self.0 {
            println!("{:<width$} {value}", format!("{key}:"));
        }
    }
}

/// p50, p90, p99, p99.9.
pub const QUANTILES: &[(&str, f64)] =
    &[("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)];

/// A histogram of microseconds from 1 µs to 10 minutes, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that `new_with_bounds` accepts.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Microseconds of a duration, for a histogram.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Microseconds as milliseconds with 3 decimals.
pub fn ms(micros: u64) -> String {
    format!("{:.3} ms", micros as f64 / 1000.0)
}

/// Bytes in MiB (or KiB when small).
pub fn bytes(n: f64) -> String {
    if n.abs() < 1024.0 * 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{:.1} MiB", n / (1024.0 * 1024.0))
    }
}

/// A rate per second.
pub fn per_sec(n: u64, d: Duration) -> String {
    format!("{:.0}/s", n as f64 / d.as_secs_f64().max(1e-9))
}

/// The server's resident memory and its peak: `VmRSS` and `VmHWM` of /proc/<pid>/status, in bytes.
pub struct Memory {
    pub rss: u64,
    pub peak: u64,
}

pub fn memory(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> Result<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in {path}"))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("bad line in {path}: {line}"))?;
        Ok(kib * 1024)
    };
    Ok(Memory {
        rss: field("VmRSS:")?,
        peak: field("VmHWM:")?,
    })
}

/// The memory of `pid` if given; `None` (with a warning) when it cannot be read.
pub fn memory_of(pid: Option<u32>) -> Option<Memory> {
    let pid = pid?;
    match memory(pid) {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!("warning: {e:#}");
            None
        }
    }
}
