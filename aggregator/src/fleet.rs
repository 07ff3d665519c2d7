//! The fleet as the aggregator sees it: when each host last sent lines and how many, exported
//! as `aggregator_host_last_seen_timestamp_seconds{host}` and `aggregator_host_lines_total{host}`,
//! so "a host stopped sending" can be alerted on
//! (`time() - aggregator_host_last_seen_timestamp_seconds > 600`). Bounded: a host silent
//! for [`FORGET_AFTER`] loses its series, and at most [`MAX_HOSTS`] hosts have series (past
//! it the tenth seen longest ago go at once, so a stream of new hosts costs O(1) each).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Hosts with series at most.
pub const MAX_HOSTS: usize = 10_000;
/// A host silent this long loses its series.
pub const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabel {
    pub host: String,
}

#[derive(Debug, Default)]
pub struct Fleet {
    seen: Mutex<HashMap<String, Instant>>,
    last_seen: Family<HostLabel, Gauge<f64, AtomicU64>>,
    lines: Family<HostLabel, Counter>,
}

impl Fleet {
    pub fn new(r: &mut Registry) -> Self {
        let f = Fleet::default();
        r.register(
            "host_last_seen_timestamp_seconds",
            "When each host last sent lines, as a Unix time (hosts seen in the last 24 h, at most 10,000)",
            f.last_seen.clone(),
        );
        r.register(
            "host_lines",
            "Lines received from each host (resends included) since it was last given a series",
            f.lines.clone(),
        );
        f
    }

    /// `host` sent `lines` now.
    pub fn saw(&self, host: &str, lines: u64) {
        let now = Instant::now();
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if !seen.contains_key(host) && seen.len() >= MAX_HOSTS {
                self.evict_oldest_tenth(&mut seen);
            }
            match seen.get_mut(host) {
                Some(at) => *at = now,
                None => {
                    seen.insert(host.to_owned(), now);
                }
            }
        }
        let label = HostLabel {
            host: host.to_owned(),
        };
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_seen.get_or_create(&label).set(unix);
        self.lines.get_or_create(&label).inc_by(lines);
    }

    fn evict_oldest_tenth(&self, seen: &mut HashMap<String, Instant>) {
        let mut ages: Vec<Instant> = seen.values().copied().collect();
        let k = (ages.len() / 10).max(1);
        let (_, cutoff, _) = ages.select_nth_unstable(k - 1);
        let cutoff = *cutoff;
        seen.retain(|host, at| {
            let keep = *at > cutoff;
            if !keep {
                self.forget(host);
            }
            keep
        });
    }

    fn forget(&self, host: &str) {
        let label = HostLabel {
            host: host.to_owned(),
        };
        self.last_seen.remove(&label);
        self.lines.remove(&label);
    }

    /// Drops the series of hosts silent for [`FORGET_AFTER`] (called before each scrape).
    pub fn prune(&self) {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.retain(|host, at| {
            let keep = now.duration_since(*at) < FORGET_AFTER;
            if !keep {
                self.forget(host);
            }
            keep
        });
    }

    /// Hosts with series now.
    pub fn hosts(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exported(r: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, r).expect("encode");
        out
    }

    #[test]
    fn each_host_gets_its_last_seen_time_and_lines_and_the_series_stay_bounded() {
        let mut r = Registry::default();
        let fleet = Fleet::new(&mut r);
        fleet.saw("web-1", 10);
        fleet.saw("web-1", 5);
        fleet.saw("db-1", 1);
        let text = exported(&r);
        assert!(
            text.contains("host_lines_total{host=\"web-1\"} 15"),
            "{text}"
        );
        assert!(
            text.contains("host_last_seen_timestamp_seconds{host=\"db-1\"}"),
            "{text}"
        );
        for i in 0..MAX_HOSTS + 500 {
            fleet.saw(&format!("h{i}"), 1);
        }
        assert!(fleet.hosts() <= MAX_HOSTS, "{} hosts", fleet.hosts());
        let series = exported(&r)
            .lines()
            .filter(|l| l.starts_with("host_lines_total{"))
            .count();
        assert_eq!(
            series,
            fleet.hosts(),
            "a series per remembered host, no more"
        );
        assert!(
            exported(&r).contains(&format!("host=\"h{}\"", MAX_HOSTS + 499)),
            "the newest host has its series"
        );
    }
}
