//! `*_config_info{hash="…"} 1`: which configuration a process runs (the hash of
//! [`crate::config::Fingerprint`]), so a fleet's dashboards show which agents run the same
//! one, and a reload moves the series to the new hash.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HashLabel {
    pub hash: String,
}

/// The metric; register its `family` as `config_info`.
#[derive(Debug, Clone, Default)]
pub struct ConfigInfo {
    pub family: Family<HashLabel, Gauge>,
}

impl ConfigInfo {
    /// The configuration with `hash` is in force (in place of `old`, after a reload).
    pub fn in_force(&self, old: Option<&str>, hash: &str) {
        if let Some(old) = old.filter(|o| *o != hash) {
            self.family.remove(&HashLabel {
                hash: old.to_owned(),
            });
        }
        self.family
            .get_or_create(&HashLabel {
                hash: hash.to_owned(),
            })
            .set(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_series_follows_the_configuration_in_force() {
        let info = ConfigInfo::default();
        let mut r = prometheus_client::registry::Registry::default();
        r.register("config_info", "help", info.family.clone());
        info.in_force(None, "aaaa");
        info.in_force(Some("aaaa"), "bbbb");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).expect("encode");
        assert!(text.contains("config_info{hash=\"bbbb\"} 1"), "{text}");
        assert!(!text.contains("aaaa"), "{text}");
    }
}
