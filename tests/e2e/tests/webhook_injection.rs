//! The webhook run on the host and registered with a `url` client config against the real
//! kube-apiserver: pods created by the real controllers come out patched, the per-owner Secret and
//! Service appear with owner references and go with the real garbage collector, selection labels
//! work, and a stopped webhook with `failurePolicy: Ignore` does not block pod creation.
//! Pods stay Pending without a node; nothing here waits for Running.

use std::time::Duration;

use podsftp_e2e::helm::{TestNamespace, eventually, exists, kubectl, kubectl_apply, kubectl_json, repo_root, require_cluster, run};
use podsftp_e2e::webhook::{HostWebhook, Registration, Tls, is_injected, metric_value};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
/// The webhook's "own" namespace in these tests (never injected); it need not exist.
const WEBHOOK_NAMESPACE: &str = "podsftp-e2e-webhook";

fn injection_enabled() -> [(&'static str, &'static str); 1] {
    [("podsftp.io/injection", "enabled")]
}

/// Starts the webhook (certificate files) and registers it for `namespaces`.
fn webhook_for(config: &str, failure_policy: &str, namespaces: &[&str]) -> (HostWebhook, Registration) {
    let webhook = HostWebhook::start(WEBHOOK_NAMESPACE, Tls::GeneratedFiles, &["--service-type", "ClusterIP"]);
    let registration = Registration::create(config, &webhook.url(), webhook.ca_pem.as_deref(), failure_policy, namespaces);
    (webhook, registration)
}

fn pods(namespace: &str, selector: &str) -> Vec<Value> {
    kubectl_json(&["get", "pods", "-n", namespace, "-l", selector])["items"].as_array().cloned().unwrap_or_default()
}

fn pod(namespace: &str, name: &str) -> Value {
    kubectl_json(&["get", "pod", name, "-n", namespace])
}

fn get(kind: &str, name: &str, namespace: &str) -> Result<Value, String> {
    if exists(kind, name, Some(namespace)) { Ok(kubectl_json(&["get", kind, name, "-n", namespace])) } else { Err(format!("no {kind} {name}")) }
}

fn owner_annotation(pod: &Value) -> String {
    pod["metadata"]["annotations"]["podsftp.io/owner"].as_str().unwrap_or_default().to_string()
}

fn uid(kind: &str, name: &str, namespace: &str) -> String {
    kubectl(&["get", kind, name, "-n", namespace, "-o", "jsonpath={.metadata.uid}"])
}

/// Asserts the Secret and Service `<name>-sftp` exist and point at the owner.
fn assert_owner_resources(namespace: &str, name: &str, kind: &str, owner_uid: &str) {
    let secret = eventually(&format!("Secret {name}-sftp"), WAIT, || get("secret", &format!("{name}-sftp"), namespace));
    let service = eventually(&format!("Service {name}-sftp"), WAIT, || get("service", &format!("{name}-sftp"), namespace));
    for object in [&secret, &service] {
        let reference = &object["metadata"]["ownerReferences"][0];
        assert_eq!(reference["kind"], kind, "{object}");
        assert_eq!(reference["uid"], owner_uid, "{object}");
        assert_eq!(object["metadata"]["labels"]["app.kubernetes.io/managed-by"], "podsftp");
    }
}

#[test]
fn cluster_runs_the_pinned_kubernetes_and_helm_works() {
    require_cluster();
    let versions = std::fs::read_to_string(repo_root().join("tests/cluster/versions")).expect("versions file");
    let pinned = versions
        .lines()
        .find_map(|l| l.strip_prefix("KUBERNETES_VERSION="))
        .and_then(|v| v.split_whitespace().next())
        .expect("KUBERNETES_VERSION");
    let version = kubectl_json(&["version"]);
    assert_eq!(version["serverVersion"]["gitVersion"], pinned);
    assert!(run("helm", &["version", "--short"]).starts_with("v3."));
}

#[test]
fn deployment_pods_are_patched_and_owner_resources_are_garbage_collected() {
    require_cluster();
    let ns = TestNamespace::create("wh-deploy", &injection_enabled());
    let (webhook, _registration) = webhook_for("wh-deploy", "Fail", &[&ns.name]);
    kubectl_apply(&format!(
        r#"{{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {{"name": "web", "namespace": "{ns}"}},
            "spec": {{"replicas": 2, "selector": {{"matchLabels": {{"app": "web"}}}},
              "template": {{"metadata": {{"labels": {{"app": "web"}}, "annotations": {{"podsftp.io/service-port": "2022"}}}},
                "spec": {{"containers": [{{"name": "app", "image": "nginx:1.27"}}]}}}}}}}}"#,
        ns = ns.name
    ));
    let web_pods = eventually("2 pods of Deployment web", WAIT, || {
        let found = pods(&ns.name, "app=web");
        if found.len() == 2 { Ok(found) } else { Err(format!("{} pods", found.len())) }
    });
    for pod in &web_pods {
        assert!(is_injected(pod), "{pod}");
        let spec = &pod["spec"];
        assert_eq!(spec["shareProcessNamespace"], true);
        let sidecar = &spec["initContainers"].as_array().expect("initContainers")[0];
        assert_eq!(sidecar["name"], "podsftp");
        assert_eq!(sidecar["restartPolicy"], "Always", "native sidecar on 1.34");
        assert_eq!(sidecar["securityContext"]["allowPrivilegeEscalation"], false);
        let volume = spec["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "podsftp-credentials").expect("volume");
        assert_eq!(volume["secret"]["secretName"], "web-sftp");
        let env = spec["containers"][0]["env"].as_array().expect("env");
        assert!(env.iter().any(|e| e["name"] == "PODSFTP_CONTAINER" && e["value"] == "app"));
        assert_eq!(owner_annotation(pod), "Deployment/web");
        assert!(pod["metadata"]["labels"]["podsftp.io/owner"].as_str().is_some_and(|l| l.starts_with("web-")));
    }
    let deployment_uid = uid("deployment", "web", &ns.name);
    assert_owner_resources(&ns.name, "web", "Deployment", &deployment_uid);

    let secret = kubectl_json(&["get", "secret", "web-sftp", "-n", &ns.name]);
    for key in ["username", "password", "authorized_keys", "id_ed25519", "id_ed25519.pub", "ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"] {
        assert!(secret["data"][key].is_string(), "Secret key {key} missing: {secret}");
    }
    let password = kubectl(&["get", "secret", "web-sftp", "-n", &ns.name, "-o", "jsonpath={.data.password}"]);
    assert!(password.len() >= 32, "password of at least 24 characters (base64: {})", password.len());
    let service = kubectl_json(&["get", "service", "web-sftp", "-n", &ns.name]);
    assert_eq!(service["spec"]["type"], "ClusterIP");
    assert_eq!(service["spec"]["ports"][0]["port"], 2022);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], 2222, "the number: an app port named sftp must not capture it");
    assert_eq!(service["spec"]["sessionAffinity"], "ClientIP");
    assert_eq!(service["spec"]["selector"]["podsftp.io/owner"], web_pods[0]["metadata"]["labels"]["podsftp.io/owner"]);
    eventually("a Created event on the Deployment", WAIT, || {
        let events = kubectl(&["get", "events", "-n", &ns.name, "--field-selector", "involvedObject.name=web,reason=Created", "-o", "name"]);
        if events.trim().is_empty() { Err("no event".to_string()) } else { Ok(()) }
    });
    assert!(metric_value(&webhook.metrics_text(), "podsftp_webhook_admissions_total{outcome=\"injected\"}") >= 2.0);

    kubectl(&["delete", "deployment", "web", "-n", &ns.name]);
    eventually("the garbage collector to remove Secret and Service", WAIT, || {
        let left: Vec<&str> = [("secret", "web-sftp"), ("service", "web-sftp")]
            .into_iter()
            .filter(|(kind, name)| exists(kind, name, Some(&ns.name)))
            .map(|(kind, _)| kind)
            .collect();
        if left.is_empty() { Ok(()) } else { Err(format!("still there: {left:?}")) }
    });
}

#[test]
fn owners_resolve_to_cronjob_statefulset_and_bare_pod() {
    require_cluster();
    let ns = TestNamespace::create("wh-owners", &injection_enabled());
    let (_webhook, _registration) = webhook_for("wh-owners", "Fail", &[&ns.name]);
    let container = r#"[{"name": "main", "image": "busybox:1.37", "command": ["sleep", "3600"]}]"#;
    kubectl_apply(&format!(
        r#"{{"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {{"name": "backup", "namespace": "{ns}"}},
            "spec": {{"schedule": "0 0 1 1 *", "jobTemplate": {{"spec": {{"template": {{"spec": {{"restartPolicy": "Never", "containers": {container}}}}}}}}}}}}}"#,
        ns = ns.name
    ));
    kubectl(&["create", "job", "backup-now", "--from=cronjob/backup", "-n", &ns.name]);
    kubectl_apply(&format!(
        r#"{{"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {{"name": "db", "namespace": "{ns}"}},
            "spec": {{"serviceName": "db", "replicas": 1, "selector": {{"matchLabels": {{"app": "db"}}}},
              "template": {{"metadata": {{"labels": {{"app": "db"}}}},
                "spec": {{"securityContext": {{"runAsUser": 999, "runAsGroup": 999}}, "containers": {container}}}}}}}}}"#,
        ns = ns.name
    ));
    kubectl_apply(&format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "tool", "namespace": "{ns}"}}, "spec": {{"containers": {container}}}}}"#,
        ns = ns.name
    ));

    let job_pod = eventually("the pod of Job backup-now", WAIT, || {
        pods(&ns.name, "job-name=backup-now").into_iter().next().ok_or_else(|| "no pod yet".to_string())
    });
    assert!(is_injected(&job_pod));
    assert_eq!(owner_annotation(&job_pod), "CronJob/backup");
    assert_owner_resources(&ns.name, "backup", "CronJob", &uid("cronjob", "backup", &ns.name));

    let db_pod = eventually("pod db-0", WAIT, || get("pod", "db-0", &ns.name));
    assert_eq!(owner_annotation(&db_pod), "StatefulSet/db");
    let sidecar = &db_pod["spec"]["initContainers"][0];
    assert_eq!(sidecar["securityContext"]["runAsUser"], 999, "sidecar mirrors the app's user");
    assert_eq!(sidecar["securityContext"]["runAsNonRoot"], true);
    assert_owner_resources(&ns.name, "db", "StatefulSet", &uid("statefulset", "db", &ns.name));

    let tool = pod(&ns.name, "tool");
    assert_eq!(owner_annotation(&tool), "Pod/tool");
    assert_owner_resources(&ns.name, "tool", "Pod", &uid("pod", "tool", &ns.name));
}

#[test]
fn selection_by_pod_label_opt_out_and_system_namespaces() {
    require_cluster();
    let plain = TestNamespace::create("wh-plain", &[]);
    let enabled = TestNamespace::create("wh-optout", &injection_enabled());
    // kube-system is in scope of this registration on purpose: the webhook itself must decline it.
    let (webhook, _registration) = webhook_for("wh-selection", "Fail", &[&plain.name, &enabled.name, "kube-system"]);
    let container = r#"[{"name": "main", "image": "busybox:1.37"}]"#;
    let create_pod = |namespace: &str, name: &str, labels: &str| {
        kubectl_apply(&format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}", "namespace": "{namespace}", "labels": {labels}}},
                "spec": {{"containers": {container}}}}}"#
        ));
        pod(namespace, name)
    };
    assert!(is_injected(&create_pod(&plain.name, "opted-in", r#"{"sftp": "enabled"}"#)), "pod label opts in");
    assert!(!is_injected(&create_pod(&plain.name, "unlabelled", "{}")), "unlabelled pod in unlabelled namespace");
    assert!(!is_injected(&create_pod(&enabled.name, "opted-out", r#"{"sftp": "disabled"}"#)), "pod label opts out");
    let skipped = r#"podsftp_webhook_admissions_total{outcome="skipped"}"#;
    let skipped_before = metric_value(&webhook.metrics_text(), skipped);
    // A leftover of an interrupted run would be "unchanged" by apply and never reach the webhook.
    kubectl(&["delete", "pod", "wh-e2e-untouched", "-n", "kube-system", "--ignore-not-found", "--grace-period=0", "--force"]);
    let system_pod = create_pod("kube-system", "wh-e2e-untouched", r#"{"sftp": "enabled"}"#);
    kubectl(&["delete", "pod", "wh-e2e-untouched", "-n", "kube-system", "--wait=false"]);
    assert!(!is_injected(&system_pod), "kube-system is never injected");
    assert_eq!(system_pod["spec"]["shareProcessNamespace"], Value::Null);
    assert!(metric_value(&webhook.metrics_text(), skipped) > skipped_before, "the webhook saw and declined the kube-system pod");
}

#[test]
fn stopped_webhook_with_failure_policy_ignore_lets_pods_through_unchanged() {
    require_cluster();
    let ns = TestNamespace::create("wh-down", &injection_enabled());
    let (mut webhook, _registration) = webhook_for("wh-down", "Ignore", &[&ns.name]);
    webhook.stop();
    kubectl_apply(&format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "app", "namespace": "{}"}},
            "spec": {{"containers": [{{"name": "main", "image": "busybox:1.37"}}]}}}}"#,
        ns.name
    ));
    let created = pod(&ns.name, "app");
    assert!(!is_injected(&created));
    assert_eq!(created["spec"]["containers"].as_array().unwrap().len(), 1);
    assert!(created["spec"]["initContainers"].is_null());
}

#[test]
fn service_follows_template_annotations_and_goes_when_no_injected_pod_remains() {
    require_cluster();
    let ns = TestNamespace::create("wh-lifecycle", &injection_enabled());
    let (webhook, _registration) = webhook_for("wh-lifecycle", "Fail", &[&ns.name]);
    let deployment = |port: u16| {
        format!(
            r#"{{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {{"name": "files", "namespace": "{ns}"}},
                "spec": {{"replicas": 1, "selector": {{"matchLabels": {{"app": "files"}}}},
                  "template": {{"metadata": {{"labels": {{"app": "files"}}, "annotations": {{"podsftp.io/service-port": "{port}"}}}},
                    "spec": {{"containers": [{{"name": "app", "image": "busybox:1.37"}}]}}}}}}}}"#,
            ns = ns.name
        )
    };
    let service_port = || -> Result<u64, String> {
        get("service", "files-sftp", &ns.name).map(|s| s["spec"]["ports"][0]["port"].as_u64().unwrap_or_default())
    };
    kubectl_apply(&deployment(2022));
    eventually("Service files-sftp on port 2022", WAIT, || service_port().and_then(|p| if p == 2022 { Ok(()) } else { Err(format!("port {p}")) }));

    // A new template creates a new ReplicaSet whose pods carry the new annotation.
    kubectl_apply(&deployment(2200));
    eventually("Service files-sftp on port 2200", WAIT, || service_port().and_then(|p| if p == 2200 { Ok(()) } else { Err(format!("port {p}")) }));

    // No injected pod left: the Service goes (after the sweep's grace period), the login stays.
    kubectl(&["scale", "deployment", "files", "-n", &ns.name, "--replicas=0"]);
    eventually("Service files-sftp to be removed", Duration::from_secs(150), || {
        if !exists("service", "files-sftp", Some(&ns.name)) {
            return Ok(());
        }
        let left = kubectl(&["get", "pods", "-n", &ns.name, "-o", "name"]);
        Err(format!("still there; pods: {left:?}; webhook log:\n{}", webhook.log_text()))
    });
    assert!(exists("secret", "files-sftp", Some(&ns.name)), "the Secret survives so the login stays the same");
}

#[test]
fn user_created_secret_keeps_its_values_and_only_gains_missing_keys() {
    require_cluster();
    let ns = TestNamespace::create("wh-usersecret", &injection_enabled());
    let (_webhook, _registration) = webhook_for("wh-usersecret", "Fail", &[&ns.name]);
    kubectl(&["create", "secret", "generic", "shop-sftp", "-n", &ns.name, "--from-literal=username=alice", "--from-literal=password=alice-chose-this-password"]);
    kubectl_apply(&format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "shop", "namespace": "{}"}},
            "spec": {{"containers": [{{"name": "main", "image": "busybox:1.37"}}]}}}}"#,
        ns.name
    ));
    let secret = eventually("missing keys added to the user's Secret", WAIT, || {
        let secret = get("secret", "shop-sftp", &ns.name)?;
        if secret["data"]["ssh_host_ed25519_key"].is_string() { Ok(secret) } else { Err(format!("{secret}")) }
    });
    let decode = |key: &str| {
        kubectl(&["get", "secret", "shop-sftp", "-n", &ns.name, "-o", &format!("go-template={{{{index .data \"{key}\" | base64decode}}}}")])
    };
    assert_eq!(decode("username"), "alice");
    assert_eq!(decode("password"), "alice-chose-this-password");
    for key in ["authorized_keys", "id_ed25519", "id_ed25519.pub", "ssh_host_ed25519_key.pub"] {
        assert!(secret["data"][key].is_string(), "{key} added");
    }
    assert!(secret["metadata"]["ownerReferences"].is_null(), "a user's Secret is not handed to the garbage collector");
}
