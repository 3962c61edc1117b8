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
    webhook_with(config, failure_policy, namespaces, &[])
}

/// [`webhook_for`] with extra command-line arguments.
fn webhook_with(config: &str, failure_policy: &str, namespaces: &[&str], extra_args: &[&str]) -> (HostWebhook, Registration) {
    let mut args = vec!["--service-type", "ClusterIP"];
    args.extend(extra_args);
    let webhook = HostWebhook::start(WEBHOOK_NAMESPACE, Tls::GeneratedFiles, &args);
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
    if exists(kind, name, Some(namespace)) {
        Ok(kubectl_json(&["get", kind, name, "-n", namespace]))
    } else {
        Err(format!("no {kind} {name}"))
    }
}

fn owner_annotation(pod: &Value) -> String {
    pod["metadata"]["annotations"]["podsftp.io/owner"].as_str().unwrap_or_default().to_string()
}

fn uid(kind: &str, name: &str, namespace: &str) -> String {
    kubectl(&["get", kind, name, "-n", namespace, "-o", "jsonpath={.metadata.uid}"])
}

/// Asserts the Secret and Service `<name>-sftp` exist and point at the owner.
fn assert_owner_resources(namespace: &str, name: &str, kind: &str, owner_uid: &str) -> Value {
    let secret = eventually(&format!("Secret {name}-sftp"), WAIT, || get("secret", &format!("{name}-sftp"), namespace));
    let service = eventually(&format!("Service {name}-sftp"), WAIT, || get("service", &format!("{name}-sftp"), namespace));
    for object in [&secret, &service] {
        let reference = &object["metadata"]["ownerReferences"][0];
        assert_eq!(reference["kind"], kind, "{object}");
        assert_eq!(reference["uid"], owner_uid, "{object}");
        assert_eq!(object["metadata"]["labels"]["app.kubernetes.io/managed-by"], "podsftp");
    }
    secret
}

/// A Deployment `name` of one busybox container whose pod template has `annotations` (a JSON object).
fn deployment(namespace: &str, name: &str, replicas: u32, annotations: &str) -> String {
    format!(
        r#"{{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {{"name": "{name}", "namespace": "{namespace}"}},
            "spec": {{"replicas": {replicas}, "selector": {{"matchLabels": {{"app": "{name}"}}}},
              "template": {{"metadata": {{"labels": {{"app": "{name}"}}, "annotations": {annotations}}},
                "spec": {{"containers": [{{"name": "app", "image": "busybox:1.37"}}]}}}}}}}}"#
    )
}

/// Waits for an Event with `reason` about the object `name` and returns its message.
fn event_message(namespace: &str, name: &str, reason: &str) -> String {
    eventually(&format!("a {reason} event about {name}"), WAIT, || {
        let selector = format!("involvedObject.name={name},reason={reason}");
        let events = kubectl_json(&["get", "events", "-n", namespace, "--field-selector", &selector]);
        let message =
            events["items"].as_array().and_then(|items| items.first()).map(|e| e["message"].as_str().unwrap_or_default().to_string());
        message.ok_or_else(|| format!("none; all events: {}", kubectl(&["get", "events", "-n", namespace])))
    })
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
    for key in
        ["username", "password", "authorized_keys", "id_ed25519", "id_ed25519.pub", "ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
    {
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
        let events =
            kubectl(&["get", "events", "-n", &ns.name, "--field-selector", "involvedObject.name=web,reason=Created", "-o", "name"]);
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
    assert_owner_resources(&ns.name, "backup-cronjob", "CronJob", &uid("cronjob", "backup", &ns.name));

    let db_pod = eventually("pod db-0", WAIT, || get("pod", "db-0", &ns.name));
    assert_eq!(owner_annotation(&db_pod), "StatefulSet/db");
    let sidecar = &db_pod["spec"]["initContainers"][0];
    assert_eq!(sidecar["securityContext"]["runAsUser"], 999, "sidecar mirrors the app's user");
    assert_eq!(sidecar["securityContext"]["runAsNonRoot"], true);
    assert_owner_resources(&ns.name, "db-statefulset", "StatefulSet", &uid("statefulset", "db", &ns.name));

    let tool = pod(&ns.name, "tool");
    assert_eq!(owner_annotation(&tool), "Pod/tool");
    assert_owner_resources(&ns.name, "tool-pod", "Pod", &uid("pod", "tool", &ns.name));
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
    let (webhook, _registration) = webhook_with("wh-lifecycle", "Fail", &[&ns.name], &["--service-grace-period-seconds", "20"]);
    let files = |port: u16| deployment(&ns.name, "files", 1, &format!(r#"{{"podsftp.io/service-port": "{port}"}}"#));
    let service_port = || -> Result<u64, String> {
        get("service", "files-sftp", &ns.name).map(|s| s["spec"]["ports"][0]["port"].as_u64().unwrap_or_default())
    };
    kubectl_apply(&files(2022));
    eventually("Service files-sftp on port 2022", WAIT, || {
        service_port().and_then(|p| if p == 2022 { Ok(()) } else { Err(format!("port {p}")) })
    });

    // A new template creates a new ReplicaSet whose pods carry the new annotation.
    kubectl_apply(&files(2200));
    eventually("Service files-sftp on port 2200", WAIT, || {
        service_port().and_then(|p| if p == 2200 { Ok(()) } else { Err(format!("port {p}")) })
    });

    // No injected pod left: the Service goes after the grace period (20 s here), the login stays.
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

/// While two templates' pods coexist (here a rollout that cannot finish: no pod ever turns ready,
/// so the old one stays), every reconcile of the owner takes the settings of its current template:
/// a change to the Service reconciles both templates' pods, and the old ones must not put their
/// template's port back, not even for a moment.
#[test]
fn two_templates_at_once_never_undo_the_current_templates_settings() {
    require_cluster();
    let ns = TestNamespace::create("wh-twotemplates", &injection_enabled());
    let (webhook, _registration) = webhook_for("wh-twotemplates", "Fail", &[&ns.name]);
    let files = |port: u16| {
        format!(
            r#"{{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {{"name": "files", "namespace": "{}"}},
                "spec": {{"replicas": 1, "selector": {{"matchLabels": {{"app": "files"}}}},
                  "strategy": {{"rollingUpdate": {{"maxSurge": 1, "maxUnavailable": 0}}}},
                  "template": {{"metadata": {{"labels": {{"app": "files"}}, "annotations": {{"podsftp.io/service-port": "{port}"}}}},
                    "spec": {{"containers": [{{"name": "app", "image": "busybox:1.37"}}]}}}}}}}}"#,
            ns.name
        )
    };
    let service_port = || -> Result<u64, String> {
        get("service", "files-sftp", &ns.name).map(|s| s["spec"]["ports"][0]["port"].as_u64().unwrap_or_default())
    };
    let port_is = |want: u64| {
        move || -> Result<(), String> { service_port().and_then(|p| if p == want { Ok(()) } else { Err(format!("port {p}")) }) }
    };
    kubectl_apply(&files(2022));
    eventually("Service files-sftp on port 2022", WAIT, port_is(2022));
    kubectl_apply(&files(2200));
    eventually("Service files-sftp on port 2200", WAIT, port_is(2200));
    eventually("pods of both templates", WAIT, || {
        let templates: std::collections::BTreeSet<String> = pods(&ns.name, "app=files")
            .iter()
            .filter_map(|p| p["metadata"]["labels"]["pod-template-hash"].as_str().map(String::from))
            .collect();
        if templates.len() == 2 { Ok(()) } else { Err(format!("templates {templates:?}")) }
    });

    // Every version of the Service from now on, as the apiserver's watch shows them.
    let mut watch = std::process::Command::new("kubectl")
        .args(["get", "service", "files-sftp", "-n", &ns.name, "--watch"])
        .args(["-o", "jsonpath={.spec.ports[0].port}{\"\\n\"}"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl get --watch");
    std::thread::sleep(Duration::from_secs(2));
    // Someone else's change: the owner's pods of both templates reconcile.
    kubectl(&["label", "service", "files-sftp", "-n", &ns.name, "touched-by=e2e"]);
    std::thread::sleep(Duration::from_secs(10));
    let _ = watch.kill();
    let output = watch.wait_with_output().expect("kubectl watch output");
    let ports = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(ports.lines().count() >= 2, "the watch saw no change after the label: {ports:?}");
    assert!(
        ports.lines().all(|port| port == "2200"),
        "the old template's reconcile put its port back: versions {ports:?}; webhook log:\n{}",
        webhook.log_text()
    );
    eventually("Service files-sftp still on port 2200", WAIT, port_is(2200));
}

/// Issue 11, item 13: a Secret or Service of the same name that podsftp did not create is never
/// modified or adopted; the owner gets a Conflict event instead.
#[test]
fn user_created_secret_and_service_are_left_alone_with_an_event() {
    require_cluster();
    let ns = TestNamespace::create("wh-usersecret", &injection_enabled());
    let (_webhook, _registration) = webhook_for("wh-usersecret", "Fail", &[&ns.name]);
    kubectl(&[
        "create",
        "secret",
        "generic",
        "shop-pod-sftp",
        "-n",
        &ns.name,
        "--from-literal=username=alice",
        "--from-literal=password=alice-chose-this-password",
    ]);
    kubectl(&["create", "service", "clusterip", "shop-pod-sftp", "-n", &ns.name, "--tcp=80:8080"]);
    let secret_before = kubectl_json(&["get", "secret", "shop-pod-sftp", "-n", &ns.name]);
    let service_before = kubectl_json(&["get", "service", "shop-pod-sftp", "-n", &ns.name]);
    kubectl_apply(&format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "shop", "namespace": "{}"}},
            "spec": {{"containers": [{{"name": "main", "image": "busybox:1.37"}}]}}}}"#,
        ns.name
    ));
    let message = event_message(&ns.name, "shop", "Conflict");
    assert!(message.contains("shop-pod-sftp") && message.contains("not created by podsftp"), "{message}");
    // Both reconciled objects have been looked at once the Service conflict is reported.
    eventually("Conflict events for the Secret and the Service", WAIT, || {
        let events = kubectl(&[
            "get",
            "events",
            "-n",
            &ns.name,
            "--field-selector",
            "involvedObject.name=shop,reason=Conflict",
            "-o",
            "jsonpath={.items[*].message}",
        ]);
        if events.contains("Secret shop-pod-sftp") && events.contains("Service shop-pod-sftp") { Ok(()) } else { Err(events) }
    });
    let secret_after = kubectl_json(&["get", "secret", "shop-pod-sftp", "-n", &ns.name]);
    let service_after = kubectl_json(&["get", "service", "shop-pod-sftp", "-n", &ns.name]);
    assert_eq!(
        secret_after["metadata"]["resourceVersion"], secret_before["metadata"]["resourceVersion"],
        "Secret modified: {secret_after}"
    );
    assert_eq!(
        service_after["metadata"]["resourceVersion"], service_before["metadata"]["resourceVersion"],
        "Service modified: {service_after}"
    );
    assert!(secret_after["metadata"]["ownerReferences"].is_null() && service_after["metadata"]["ownerReferences"].is_null());
}

/// Issue 11, item 13: a pod that carries podsftp's status, owner label and annotation without the
/// webhook having patched it (here: opted out, so the webhook never sees it) changes nothing; the
/// controller reports it on the pod.
#[test]
fn forged_podsftp_state_on_a_pod_changes_nothing() {
    require_cluster();
    let ns = TestNamespace::create("wh-forged", &injection_enabled());
    let (_webhook, _registration) = webhook_for("wh-forged", "Fail", &[&ns.name]);
    kubectl_apply(&deployment(&ns.name, "victim2", 1, "{}"));
    let victim_uid = uid("deployment", "victim2", &ns.name);
    assert_owner_resources(&ns.name, "victim2", "Deployment", &victim_uid);
    let before = kubectl_json(&["get", "service", "victim2-sftp", "-n", &ns.name]);
    let selector = before["spec"]["selector"]["podsftp.io/owner"].as_str().expect("selector").to_string();
    for (pod, claimed) in [("forger-pod", "Pod/victim2"), ("forger-deploy", "Deployment/victim2")] {
        kubectl_apply(&format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{pod}", "namespace": "{ns}",
                  "labels": {{"sftp": "disabled", "podsftp.io/owner": "{selector}"}},
                  "annotations": {{"podsftp.io/status": "injected", "podsftp.io/owner": "{claimed}",
                                   "podsftp.io/service-type": "LoadBalancer", "podsftp.io/load-balancer-source-ranges": "0.0.0.0/0"}}}},
                "spec": {{"containers": [{{"name": "main", "image": "busybox:1.37"}}]}}}}"#,
            ns = ns.name
        ));
        let message = event_message(&ns.name, pod, "NotVerified");
        assert!(message.contains(claimed) && message.contains("not among the pod's owners"), "{message}");
    }
    let after = kubectl_json(&["get", "service", "victim2-sftp", "-n", &ns.name]);
    assert_eq!(after["spec"]["type"], "ClusterIP", "{after}");
    assert!(after["spec"]["loadBalancerSourceRanges"].is_null(), "{after}");
    assert_eq!(after["metadata"]["ownerReferences"], before["metadata"]["ownerReferences"]);
    assert_eq!(after["spec"]["selector"], before["spec"]["selector"]);
    for forged in ["forger-pod-pod-sftp", "victim2-pod-sftp", "forger-pod-sftp"] {
        assert!(!exists("secret", forged, Some(&ns.name)), "Secret {forged} made for a forged pod");
    }
}

/// Issue 11, item 14: a bare Pod and a StatefulSet of the same name, and two bare pods of one
/// `generateName`, each get their own Secret and Service; deleting one owner leaves the others'.
#[test]
fn owners_of_different_kinds_or_generated_names_never_share_a_login() {
    require_cluster();
    let ns = TestNamespace::create("wh-share", &injection_enabled());
    let (_webhook, _registration) = webhook_for("wh-share", "Fail", &[&ns.name]);
    let container = r#"[{"name": "main", "image": "busybox:1.37", "command": ["sleep", "3600"]}]"#;
    kubectl_apply(&format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "web", "namespace": "{ns}"}}, "spec": {{"containers": {container}}}}}"#,
        ns = ns.name
    ));
    kubectl_apply(&format!(
        r#"{{"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {{"name": "web", "namespace": "{ns}"}},
            "spec": {{"serviceName": "web", "replicas": 1, "selector": {{"matchLabels": {{"app": "web"}}}},
              "template": {{"metadata": {{"labels": {{"app": "web"}}}}, "spec": {{"containers": {container}}}}}}}}}"#,
        ns = ns.name
    ));
    let pod_secret = assert_owner_resources(&ns.name, "web-pod", "Pod", &uid("pod", "web", &ns.name));
    let set_secret = assert_owner_resources(&ns.name, "web-statefulset", "StatefulSet", &uid("statefulset", "web", &ns.name));
    assert_ne!(pod_secret["data"]["password"], set_secret["data"]["password"]);

    let generated: Vec<String> = (0..2)
        .map(|_| {
            let manifest = format!(
                r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"generateName": "debug-", "namespace": "{ns}"}}, "spec": {{"containers": {container}}}}}"#,
                ns = ns.name
            );
            let created = podsftp_e2e::helm::try_run("kubectl", &["create", "-f", "-", "-o", "jsonpath={.metadata.name}"], Some(&manifest));
            created.unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let mut secrets = Vec::new();
    for name in &generated {
        let claimed = owner_annotation(&pod(&ns.name, name));
        let owner_name = claimed.strip_prefix("Pod/").unwrap_or_else(|| panic!("{name}: owner {claimed}"));
        assert!(owner_name.starts_with("debug-"), "{claimed}");
        let secret = assert_owner_resources(&ns.name, &format!("{owner_name}-pod"), "Pod", &uid("pod", name, &ns.name));
        secrets.push(secret["metadata"]["name"].clone());
    }
    assert_ne!(secrets[0], secrets[1], "two bare pods of one generateName share {:?}", secrets[0]);

    kubectl(&["delete", "pod", "web", "-n", &ns.name, "--wait=true"]);
    eventually("the bare pod's Secret garbage-collected", WAIT, || {
        if exists("secret", "web-pod-sftp", Some(&ns.name)) { Err("still there".to_string()) } else { Ok(()) }
    });
    assert!(exists("secret", "web-statefulset-sftp", Some(&ns.name)), "the StatefulSet keeps its login");
}

/// Issue 11, item 12: an ownerReference in one namespace that names the uid of a ReplicaSet in
/// another namespace neither resolves to the object of that uid nor changes what the other
/// namespace's pods resolve to.
#[test]
fn owner_resolution_is_per_namespace_and_checks_uids() {
    require_cluster();
    let a = TestNamespace::create("wh-cache-a", &injection_enabled());
    let b = TestNamespace::create("wh-cache-b", &injection_enabled());
    let (_webhook, _registration) = webhook_for("wh-cache", "Fail", &[&a.name, &b.name]);
    let replica_set = |namespace: &str, name: &str, replicas: u32| {
        format!(
            r#"{{"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {{"name": "{name}", "namespace": "{namespace}"}},
                "spec": {{"replicas": {replicas}, "selector": {{"matchLabels": {{"app": "{name}"}}}},
                  "template": {{"metadata": {{"labels": {{"app": "{name}"}}}}, "spec": {{"containers": [{{"name": "main", "image": "busybox:1.37"}}]}}}}}}}}"#
        )
    };
    kubectl_apply(&replica_set(&b.name, "shop", 0));
    kubectl_apply(&replica_set(&a.name, "evil-rs", 0));
    let shop_uid = uid("replicaset", "shop", &b.name);
    // A pod in A whose controller reference names A's evil-rs with the uid of B's shop.
    kubectl_apply(&format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "poison", "namespace": "{ns}",
              "ownerReferences": [{{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "evil-rs", "uid": "{shop_uid}", "controller": true}}]}},
            "spec": {{"containers": [{{"name": "main", "image": "busybox:1.37"}}]}}}}"#,
        ns = a.name
    ));
    kubectl(&["scale", "replicaset", "shop", "-n", &b.name, "--replicas=1"]);
    let shop_pod = eventually("the pod of ReplicaSet shop", WAIT, || {
        pods(&b.name, "app=shop").into_iter().next().ok_or_else(|| "no pod yet".to_string())
    });
    assert_eq!(owner_annotation(&shop_pod), "ReplicaSet/shop", "B's pod resolved through A's reference");
    assert_owner_resources(&b.name, "shop-replicaset", "ReplicaSet", &shop_uid);
}

/// Issue 11, item 15: a Service stays while its owner has no pod for less than the grace period
/// (a Recreate rollout, a restarting single-replica StatefulSet), and keeps its uid (and with it
/// a load balancer's address).
#[test]
fn service_outlives_a_short_gap_without_pods() {
    require_cluster();
    let ns = TestNamespace::create("wh-gap", &injection_enabled());
    let (_webhook, _registration) = webhook_for("wh-gap", "Fail", &[&ns.name]);
    kubectl_apply(&deployment(&ns.name, "gap", 1, "{}"));
    let service = eventually("Service gap-sftp", WAIT, || get("service", "gap-sftp", &ns.name));
    let service_uid = service["metadata"]["uid"].clone();
    // Older than the 60 s the previous sweep waited for, so only the grace period protects it.
    std::thread::sleep(Duration::from_secs(62));
    kubectl(&["scale", "deployment", "gap", "-n", &ns.name, "--replicas=0"]);
    eventually("no pod of gap", WAIT, || if pods(&ns.name, "app=gap").is_empty() { Ok(()) } else { Err("pods left".to_string()) });
    // Three sweeps (every 15 s) without a pod.
    std::thread::sleep(Duration::from_secs(45));
    let kept = get("service", "gap-sftp", &ns.name).expect("the Service survives a short gap");
    assert_eq!(kept["metadata"]["uid"], service_uid);
    kubectl(&["scale", "deployment", "gap", "-n", &ns.name, "--replicas=1"]);
    eventually("a pod of gap again", WAIT, || pods(&ns.name, "app=gap").first().cloned().ok_or_else(|| "none".to_string()));
    assert_eq!(get("service", "gap-sftp", &ns.name).expect("Service")["metadata"]["uid"], service_uid);
}

/// Issue 11, item 17: an invalid `podsftp.io/load-balancer-source-ranges` is reported in a short
/// Event on the owner, and no Service is made (dropping the ranges would open it to everyone).
#[test]
fn invalid_source_ranges_are_reported_in_a_short_event() {
    require_cluster();
    let ns = TestNamespace::create("wh-ranges", &injection_enabled());
    let (_webhook, _registration) = webhook_for("wh-ranges", "Fail", &[&ns.name]);
    let ranges = format!("10.0.0.0/8,{}", "not-a-cidr-".repeat(200));
    let annotations = format!(r#"{{"podsftp.io/service-type": "LoadBalancer", "podsftp.io/load-balancer-source-ranges": "{ranges}"}}"#);
    kubectl_apply(&deployment(&ns.name, "ranges", 1, &annotations));
    let message = event_message(&ns.name, "ranges", "Refused");
    assert!(message.len() <= 1024, "{} bytes", message.len());
    assert!(message.contains("podsftp.io/load-balancer-source-ranges") && message.contains("ranges-sftp"), "{message}");
    assert!(!exists("service", "ranges-sftp", Some(&ns.name)));
    assert!(exists("secret", "ranges-sftp", Some(&ns.name)), "the login is made all the same");
}
