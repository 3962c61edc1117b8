//! Prometheus metrics: admissions by outcome, admission latency, reconciles and reconcile errors,
//! and pods that should have the sidecar but do not, by namespace.

use std::collections::BTreeMap;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

pub struct Metrics {
    registry: Registry,
    admissions: Family<Labels, Counter>,
    admission_seconds: Histogram,
    reconciles: Counter,
    reconcile_errors: Counter,
    missed_injections: Family<Vec<(&'static str, String)>, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("podsftp_webhook");
        let admissions = Family::<Labels, Counter>::default();
        registry.register("admissions", "Admission reviews answered, by outcome", admissions.clone());
        let admission_seconds = Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        registry.register("admission_duration_seconds", "Time to answer an admission review", admission_seconds.clone());
        let reconciles = Counter::default();
        registry.register("reconciles", "Owner reconciliations", reconciles.clone());
        let reconcile_errors = Counter::default();
        registry.register("reconcile_errors", "Owner reconciliations that failed", reconcile_errors.clone());
        let missed_injections = Family::<Vec<(&'static str, String)>, Gauge>::default();
        registry.register(
            "missed_injections",
            "Running pods the webhook's rules select that have no sidecar (created while the webhook was unreachable), by namespace",
            missed_injections.clone(),
        );
        Metrics { registry, admissions, admission_seconds, reconciles, reconcile_errors, missed_injections }
    }
}

impl Metrics {
    pub fn admission(&self, outcome: &'static str, seconds: f64) {
        self.admissions.get_or_create(&vec![("outcome", outcome)]).inc();
        self.admission_seconds.observe(seconds);
    }

    pub fn reconcile(&self, ok: bool) {
        self.reconciles.inc();
        if !ok {
            self.reconcile_errors.inc();
        }
    }

    /// The missed pods per namespace `now`; namespaces that had some `before` and have none now
    /// are dropped from the family (set first, then dropped: a scrape never sees a gap).
    pub fn set_missed_injections(&self, now: &BTreeMap<String, i64>, before: &BTreeMap<String, i64>) {
        for (namespace, count) in now {
            self.missed_injections.get_or_create(&vec![("namespace", namespace.clone())]).set(*count);
        }
        for namespace in before.keys().filter(|n| !now.contains_key(*n)) {
            self.missed_injections.remove(&vec![("namespace", namespace.clone())]);
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
