//! Hostile and unusual pods against the real kube-apiserver (issue 11): the webhook on the host is
//! registered with `failurePolicy: Fail`, so a webhook that crashes or patches a pod into an
//! invalid one shows up as a refused pod. Every pod here is created with `--dry-run=server`
//! (mutating admission and validation run, nothing is stored).

use podsftp_e2e::helm::{TestNamespace, require_cluster, try_run};
use podsftp_e2e::webhook::{HostWebhook, Registration, Tls, is_injected};
use serde_json::{Value, json};

/// The webhook's "own" namespace in these tests (never injected); it need not exist.
const WEBHOOK_NAMESPACE: &str = "podsftp-e2e-hostile";

/// A namespace labelled for injection, and the webhook registered for it with `failurePolicy: Fail`.
fn setup(name: &str) -> (TestNamespace, HostWebhook, Registration) {
    let ns = TestNamespace::create(name, &[("podsftp.io/injection", "enabled")]);
    let webhook = HostWebhook::start(WEBHOOK_NAMESPACE, Tls::GeneratedFiles, &["--service-type", "ClusterIP"]);
    let registration = Registration::create(name, &webhook.url(), webhook.ca_pem.as_deref(), "Fail", &[&ns.name]);
    (ns, webhook, registration)
}

/// `kubectl create --dry-run=server` of `pod`: the pod as admitted, or the apiserver's refusal.
fn dry_run(namespace: &str, pod: &Value) -> Result<Value, String> {
    let out = try_run("kubectl", &["create", "--dry-run=server", "-n", namespace, "-o", "json", "-f", "-"], Some(&pod.to_string()))?;
    serde_json::from_str(&out).map_err(|e| format!("kubectl output is not JSON ({e}): {out}"))
}

/// The pod as admitted; fails with the webhook's log otherwise.
fn admitted(webhook: &HostWebhook, namespace: &str, pod: &Value) -> Value {
    dry_run(namespace, pod).unwrap_or_else(|e| panic!("{e}\nwebhook log:\n{}", webhook.log_text()))
}

fn pod(name: &str, metadata: Value, spec: Value) -> Value {
    let mut metadata = metadata;
    metadata["name"] = json!(name);
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
}

fn app() -> Value {
    json!([{"name": "app", "image": "busybox:1.37", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}])
}

/// Item 1: a multi-byte character where a name is cut crashed the webhook (`panic = "abort"`);
/// with `failurePolicy: Fail` every later pod was refused. Now the apiserver refuses only the
/// invalid name itself, and the next pod is injected.
#[test]
fn a_multi_byte_name_at_the_cut_does_not_take_the_webhook_down() {
    require_cluster();
    let (ns, webhook, _registration) = setup("wh-hostile-name");
    for name in [format!("{}é", "a".repeat(51)), format!("{}é{}", "a".repeat(236), "a".repeat(20))] {
        let refused = dry_run(&ns.name, &pod(&name, json!({}), json!({"containers": app()}))).expect_err("an invalid name");
        assert!(!refused.contains("failed calling webhook"), "the webhook failed on {name:?}: {refused}");
    }
    let web = admitted(&webhook, &ns.name, &pod("web", json!({}), json!({"containers": app()})));
    assert!(is_injected(&web), "{web}");
}

/// Item 5: an owner name that is no valid label value (an ownerReference name is not validated by
/// the apiserver) gave an invalid `podsftp.io/owner` label, and the pod was refused.
#[test]
fn owner_names_invalid_as_label_values_still_give_an_admitted_pod() {
    require_cluster();
    let (ns, webhook, _registration) = setup("wh-hostile-owner");
    for owner in ["my app:v1", "Web/Ünïcode", "x_"] {
        let reference = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner,
                                "uid": "6f1c2d3e-0000-4000-8000-000000000001", "controller": true}]);
        let web = admitted(&webhook, &ns.name, &pod("web-1", json!({"ownerReferences": reference}), json!({"containers": app()})));
        assert!(is_injected(&web), "owner {owner:?}: {web}");
    }
}

/// Item 4: with pod-level `spec.resources` the sidecar's requests pushed the containers' sum above
/// the pod's and the pod was refused; it is now admitted without the sidecar.
#[test]
fn a_pod_with_pod_level_resources_is_admitted_unchanged() {
    require_cluster();
    let (ns, webhook, _registration) = setup("wh-hostile-resources");
    let spec = json!({"resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "10m", "memory": "16Mi"}},
                      "containers": app()});
    let sized = admitted(&webhook, &ns.name, &pod("sized", json!({}), spec));
    assert!(!is_injected(&sized), "{sized}");
    assert_eq!(sized["spec"]["containers"].as_array().map(Vec::len), Some(1));
}

/// Item 10: a hostNetwork pod's sidecar would listen on the node's ports; it is left alone.
#[test]
fn a_host_network_pod_is_admitted_unchanged() {
    require_cluster();
    let (ns, webhook, _registration) = setup("wh-hostile-hostnet");
    let net = admitted(&webhook, &ns.name, &pod("net", json!({}), json!({"hostNetwork": true, "containers": app()})));
    assert!(!is_injected(&net), "{net}");
}
