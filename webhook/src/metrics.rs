//! Prometheus metrics: admissions by outcome, admission latency, reconciles and reconcile errors,
//! pods that should have the sidecar but do not, by namespace, owner lookups by where they were
//! answered, and the Kubernetes API requests the process sends, by verb and resource.

use std::collections::BTreeMap;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;
/// verb, resource.
type RequestLabels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    admissions: Family<Labels, Counter>,
    admission_seconds: Histogram,
    reconciles: Counter,
    reconcile_errors: Counter,
    missed_injections: Family<Vec<(&'static str, String)>, Gauge>,
    api_requests: Family<RequestLabels, Counter>,
    owner_lookups: Family<Labels, Counter>,
}

/// Where one link of an owner chain was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerSource {
    /// The metadata watch caches of the built-in controller kinds.
    Watch,
    /// A chain read from the API earlier.
    ChainCache,
    /// A GET: a kind without a watch cache (CRDs), or an owner its cache had not seen (yet).
    Api,
}

impl OwnerSource {
    fn as_str(self) -> &'static str {
        match self {
            OwnerSource::Watch => "watch",
            OwnerSource::ChainCache => "chain_cache",
            OwnerSource::Api => "api",
        }
    }
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
        let api_requests = Family::<RequestLabels, Counter>::default();
        registry.register("api_requests", "Kubernetes API requests sent, by verb and resource", api_requests.clone());
        let owner_lookups = Family::<Labels, Counter>::default();
        registry.register(
            "owner_lookups",
            "Owner chain links resolved (admission and controller), by source: watch (cache of the built-in controller kinds), \
             chain_cache (read from the API before) or api (a GET: other kinds, or an owner not yet seen by its watch)",
            owner_lookups.clone(),
        );
        Metrics { registry, admissions, admission_seconds, reconciles, reconcile_errors, missed_injections, api_requests, owner_lookups }
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

    pub fn owner_lookup(&self, source: OwnerSource) {
        self.owner_lookups.get_or_create(&vec![("source", source.as_str())]).inc();
    }

    /// Counts one Kubernetes API request (`method` and `path_and_query` of its URL).
    pub fn api_request(&self, method: &str, path_and_query: &str) {
        let (verb, resource) = api_verb_and_resource(method, path_and_query);
        self.api_requests.get_or_create(&vec![("verb", verb.to_string()), ("resource", resource)]).inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The verb and resource of a Kubernetes API request, as the apiserver's `apiserver_request_total`
/// names them (`list`/`watch`/`get` for reads, `create`, `patch`, `update`, `delete`).
fn api_verb_and_resource(method: &str, path_and_query: &str) -> (&'static str, String) {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let rest = match path.strip_prefix("/api/v1/") {
        Some(rest) => rest,
        // /apis/<group>/<version>/...
        None => path.strip_prefix("/apis/").and_then(|p| p.splitn(3, '/').nth(2)).unwrap_or(""),
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (resource, named) = match segments.as_slice() {
        ["namespaces", _, resource, name @ ..] => (*resource, !name.is_empty()),
        [resource, name @ ..] => (*resource, !name.is_empty()),
        [] => ("", false),
    };
    let watch = query.split('&').any(|pair| pair == "watch=true" || pair == "watch=1");
    let verb = match method {
        "GET" if watch => "watch",
        "GET" if named => "get",
        "GET" => "list",
        "POST" => "create",
        "PATCH" => "patch",
        "PUT" => "update",
        "DELETE" => "delete",
        _ => "other",
    };
    (verb, if resource.is_empty() { "other".to_string() } else { resource.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_named_like_the_apiservers_metric() {
        let cases = [
            ("GET", "/api/v1/pods?labelSelector=podsftp.io%2Fowner&watch=true&resourceVersion=1", ("watch", "pods")),
            ("GET", "/api/v1/secrets?labelSelector=x", ("list", "secrets")),
            ("GET", "/api/v1/namespaces/shop/secrets/web-sftp", ("get", "secrets")),
            ("PATCH", "/api/v1/namespaces/shop/services/web-sftp?fieldManager=podsftp", ("patch", "services")),
            ("POST", "/apis/events.k8s.io/v1/namespaces/shop/events", ("create", "events")),
            ("GET", "/apis/apps/v1/namespaces/shop/replicasets/web-5d8f", ("get", "replicasets")),
            ("GET", "/api/v1/namespaces/shop", ("get", "namespaces")),
            ("GET", "/version", ("list", "other")),
        ];
        for (method, path, (verb, resource)) in cases {
            assert_eq!(api_verb_and_resource(method, path), (verb, resource.to_string()), "{method} {path}");
        }
    }
}
