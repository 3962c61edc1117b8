//! The controller with many owners on fake nodes (kwok, `tests/cluster/kwok`): the pods of 50
//! Deployments run on fake nodes of the real control plane; every owner gets its Secret and Service,
//! one reconcile per owner rather than per pod, and a deleted Service and a deleted Secret come back
//! within seconds, from the watch (the controller before issue 14 repaired them only at its 10-minute
//! resync). The owner chains (ReplicaSet -> Deployment) come from the webhook's watch caches: no
//! ReplicaSet is read by name, and a Deployment only once, for its pod template's settings (before
//! issue 14 admission read both for the first pod of every ReplicaSet). A restarted webhook applies
//! none of the Services again (its caches show them as desired). The 10,000-pod run is
//! `bench/controller`, not a test.

use std::time::{Duration, Instant};

use podsftp_e2e::helm::{TestNamespace, eventually, kubectl, kubectl_apply, kubectl_json, repo_root, require_cluster, run};
use podsftp_e2e::webhook::{HostWebhook, Registration, Tls, metric_value};
use serde_json::{Value, json};

const OWNERS: usize = 50;
const REPLICAS: usize = 2;
/// "Within seconds": a watch event plus one reconcile; a resync would take minutes.
const REPAIR: Duration = Duration::from_secs(15);
const WAIT: Duration = Duration::from_secs(120);
const RECONCILES: &str = "podsftp_webhook_reconciles_total";
const SERVICE_APPLIES: &str = r#"podsftp_webhook_api_requests_total{verb="patch",resource="services"}"#;
const REPLICASET_GETS: &str = r#"podsftp_webhook_api_requests_total{verb="get",resource="replicasets"}"#;
const DEPLOYMENT_GETS: &str = r#"podsftp_webhook_api_requests_total{verb="get",resource="deployments"}"#;
const OWNER_LOOKUPS_FROM_API: &str = r#"podsftp_webhook_owner_lookups_total{source="api"}"#;

/// A Deployment whose pods go to kwok's fake nodes (and nowhere else).
fn fake_deployment(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicas": REPLICAS, "selector": {"matchLabels": {"app": name}},
          "template": {"metadata": {"labels": {"app": name}},
            "spec": {"nodeSelector": {"type": "kwok"},
                     "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
                     "containers": [{"name": "app", "image": "registry.invalid/app:1"}]}}}
    })
}

fn names(kind: &str, namespace: &str) -> Vec<String> {
    let list = kubectl_json(&["get", kind, "-n", namespace, "-l", "app.kubernetes.io/managed-by=podsftp"]);
    list["items"].as_array().into_iter().flatten().filter_map(|o| o["metadata"]["name"].as_str().map(String::from)).collect()
}

fn uid(kind: &str, name: &str, namespace: &str) -> String {
    kubectl(&["get", kind, name, "-n", namespace, "--ignore-not-found", "-o", "jsonpath={.metadata.uid}"])
}

/// Deletes `kind/name` and returns how long it took to be back under a new uid.
fn deleted_and_back(kind: &str, name: &str, namespace: &str, webhook: &HostWebhook) -> Duration {
    let before = uid(kind, name, namespace);
    assert!(!before.is_empty(), "{kind} {name} missing");
    kubectl(&["delete", kind, name, "-n", namespace, "--wait=true"]);
    let deleted = Instant::now();
    eventually(&format!("{kind} {name} recreated"), REPAIR, || {
        let now = uid(kind, name, namespace);
        if !now.is_empty() && now != before { Ok(()) } else { Err(format!("uid {now:?}; webhook log:\n{}", webhook.log_text())) }
    });
    deleted.elapsed()
}

/// The reconcile count once it stopped moving for 2 s (injected pods of other tests' namespaces may
/// still be going; they are not this test's).
fn settled(webhook: &HostWebhook) -> f64 {
    let mut last = metric_value(&webhook.metrics_text(), RECONCILES);
    eventually("the controller to settle", WAIT, || {
        std::thread::sleep(Duration::from_secs(2));
        let now = metric_value(&webhook.metrics_text(), RECONCILES);
        let previous = std::mem::replace(&mut last, now);
        if now == previous { Ok(now) } else { Err(format!("{previous} -> {now}")) }
    })
}

#[test]
fn owners_on_fake_nodes_get_their_login_and_deleted_objects_come_back_within_seconds() {
    require_cluster();
    let kwok = repo_root().join("tests/cluster/kwok");
    run(kwok.to_str().expect("utf-8 path"), &["2"]);
    let ns = TestNamespace::create("kwok-owners", &[("podsftp.io/injection", "enabled")]);
    let args = ["--service-type", "ClusterIP"];
    let mut webhook = HostWebhook::start("podsftp-e2e-webhook", Tls::GeneratedFiles, &args);
    let _registration = Registration::create("kwok-owners", &webhook.url(), webhook.ca_pem.as_deref(), "Fail", &[&ns.name]);
    let reconciles_before = settled(&webhook);
    let gets = || {
        let metrics = webhook.metrics_text();
        [REPLICASET_GETS, DEPLOYMENT_GETS, OWNER_LOOKUPS_FROM_API].map(|series| metric_value(&metrics, series))
    };
    let gets_before = gets();

    let owners: Vec<String> = (0..OWNERS).map(|i| format!("app-{i:02}")).collect();
    let list =
        json!({"apiVersion": "v1", "kind": "List", "items": owners.iter().map(|o| fake_deployment(&ns.name, o)).collect::<Vec<_>>()});
    kubectl_apply(&list.to_string());
    eventually(&format!("{} pods Running on fake nodes", OWNERS * REPLICAS), WAIT, || {
        let pods = kubectl_json(&["get", "pods", "-n", &ns.name]);
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        let running = items
            .iter()
            .filter(|p| p["status"]["phase"] == "Running" && p["spec"]["nodeName"].as_str().is_some_and(|n| n.starts_with("kwok-")))
            .count();
        if running == OWNERS * REPLICAS { Ok(()) } else { Err(format!("{running} of {} Running", items.len())) }
    });
    eventually("a Secret and a Service for every owner", WAIT, || {
        let (secrets, services) = (names("secrets", &ns.name).len(), names("services", &ns.name).len());
        if (secrets, services) == (OWNERS, OWNERS) { Ok(()) } else { Err(format!("{secrets} Secrets, {services} Services")) }
    });
    for owner in [&owners[0], &owners[OWNERS - 1]] {
        let service = kubectl_json(&["get", "service", &format!("{owner}-sftp"), "-n", &ns.name]);
        assert_eq!(service["metadata"]["ownerReferences"][0]["name"], owner.as_str(), "{service}");
    }
    let reconciles = settled(&webhook) - reconciles_before;
    let gets_after = gets();
    let [replicasets, deployments, from_api] = [0, 1, 2].map(|i| gets_after[i] - gets_before[i]);
    eprintln!("GETs during the storm: {replicasets} ReplicaSets, {deployments} Deployments; owner lookups from the API: {from_api}");
    assert_eq!(
        (replicasets, from_api),
        (0.0, 0.0),
        "owner chains must come from the watch caches, not GETs (admission of each ReplicaSet's first pod)"
    );
    assert!(deployments <= OWNERS as f64, "{deployments} GETs of {OWNERS} Deployments: one per owner (its template), none for chains");

    let service_back = deleted_and_back("service", "app-07-sftp", &ns.name, &webhook);
    let secret_back = deleted_and_back("secret", "app-13-sftp", &ns.name, &webhook);
    eprintln!("{reconciles} reconciles for {OWNERS} owners; Service back after {service_back:?}, Secret after {secret_back:?}");
    assert!(
        reconciles < (OWNERS * REPLICAS) as f64,
        "{reconciles} reconciles for {OWNERS} owners of {} pods: one per owner, not per pod or status update",
        OWNERS * REPLICAS
    );

    // A restart empties whatever the process remembered of its writes; the caches alone must show
    // that every Service is as desired (the controller before this check applied all 50 again).
    webhook.stop();
    let restarted = HostWebhook::start("podsftp-e2e-webhook", Tls::GeneratedFiles, &args);
    let reconciled = settled(&restarted);
    let applied = metric_value(&restarted.metrics_text(), SERVICE_APPLIES);
    eprintln!("after the restart: {reconciled} reconciles, {applied} Service applies");
    assert!(reconciled >= OWNERS as f64, "{reconciled} reconciles: the restarted controller did not look at every owner");
    assert_eq!(applied, 0.0, "Services applied again after a restart although none changed:\n{}", restarted.log_text());
}
