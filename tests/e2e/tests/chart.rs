//! The Helm chart against the harness's real apiserver: lint, schema, server-side validation of
//! every certificate mode, install/upgrade/uninstall leaving nothing behind, and auto mode with
//! the webhook binary running on the host with exactly the arguments the chart gives it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use podsftp_contract::{keys, scrape, sidecar};
use podsftp_e2e::helm::{
    Release, TestNamespace, chart_dir, eventually, exists, helm, kubectl, kubectl_apply, kubectl_json, release_binary, repo_root,
    require_cluster, try_run,
};
use podsftp_e2e::webhook::free_port;

const WAIT: Duration = Duration::from_secs(90);

fn chart() -> String {
    chart_dir().to_str().expect("utf-8 path").to_string()
}

/// `helm template` of the chart; Err carries helm's message.
fn template(release: &str, namespace: &str, set: &[&str]) -> Result<String, String> {
    let chart = chart();
    let mut args = vec!["template", release, &chart, "-n", namespace];
    for value in set {
        args.extend(["--set", value]);
    }
    try_run("helm", &args, None)
}

#[test]
fn helm_lint_is_clean_in_every_certificate_mode() {
    let chart = chart();
    for mode in [
        &["certificates.mode=auto"][..],
        &["certificates.mode=cert-manager"],
        &["certificates.mode=secret", "certificates.secret.name=tls", "certificates.secret.caBundle=Y2E="],
    ] {
        let mut args = vec!["lint", "--strict", &chart];
        for value in mode {
            args.extend(["--set", value]);
        }
        let out = helm(&args);
        assert!(out.contains("0 chart(s) failed"), "helm lint {mode:?}: {out}");
        assert!(!out.contains("[WARNING]") && !out.contains("[ERROR]"), "helm lint {mode:?}: {out}");
    }
}

#[test]
fn values_schema_rejects_typos_and_bad_values() {
    for (bad, why) in [
        ("webhook.replicaz=3", "replicaz"),
        ("sidecar.allowPtrac=true", "allowPtrac"),
        ("certificates.mode=manual", "mode"),
        ("webhook.failurePolicy=Deny", "failurePolicy"),
        ("sidecar.serviceType=External", "serviceType"),
        ("log.format=xml", "format"),
    ] {
        let err = template("typo", "podsftp", &[bad]).expect_err(&format!("--set {bad} was accepted"));
        assert!(err.contains("values don't meet the specifications of the schema"), "{bad}: {err}");
        assert!(err.contains(why), "{bad}: the error does not name {why}: {err}");
    }
    let err = template("typo", "podsftp", &["certificates.mode=secret"]).expect_err("secret mode without a Secret");
    assert!(err.contains("is required when certificates.mode is secret"), "{err}");
}

#[test]
fn webhook_configuration_selects_per_product_contract() {
    let manifests = template("sel", "tools", &["webhook.excludeNamespaces={legacy}"]).unwrap_or_else(|e| panic!("{e}"));
    let config = document(&manifests, "kind: MutatingWebhookConfiguration").expect("a MutatingWebhookConfiguration");
    for expected in [
        "name: namespace.podsftp.io",
        "name: pod.podsftp.io",
        "failurePolicy: Ignore",
        "timeoutSeconds: 5",
        "sideEffects: None",
        "matchPolicy: Equivalent",
        "reinvocationPolicy: Never",
        "operations: [CREATE]",
        "resources: [pods]",
        "values: [disabled, enabled]",
        "- tools\n",
        "- legacy\n",
        "- kube-node-lease\n",
    ] {
        assert!(config.contains(expected), "missing {expected:?} in:\n{config}");
    }
    assert!(!config.contains("caBundle"), "auto mode must not render a caBundle (the webhook patches it):\n{config}");
    // The webhook itself must know them too, or its missed-injection check reports their pods.
    let deployment = document(&manifests, "kind: Deployment").expect("the webhook's Deployment");
    assert!(deployment.contains("- --exclude-namespace=legacy\n"), "the webhook is not told about excluded namespaces:\n{deployment}");
}

/// The document of `manifests` holding `marker` (e.g. `kind: Deployment`).
fn document<'a>(manifests: &'a str, marker: &str) -> Option<&'a str> {
    manifests.split("\n---").find(|doc| doc.contains(marker))
}

/// prometheus-operator objects only when enabled (without the CRDs they would fail the install);
/// the webhook's pods announced to annotation-based scrapers unless turned off or set by the user;
/// the dashboard's ConfigMap holds the dashboard file unchanged.
#[test]
fn prometheus_monitors_and_the_dashboard_render_only_when_enabled_and_the_webhook_pods_are_announced() {
    let defaults = template("mon", "tools", &[]).unwrap_or_else(|e| panic!("{e}"));
    assert!(!defaults.contains("monitoring.coreos.com"), "monitors rendered by default:\n{defaults}");
    let deployment = document(&defaults, "kind: Deployment").expect("a Deployment");
    for annotation in [
        format!("{}: \"true\"", scrape::SCRAPE),
        format!("{}: \"9090\"", scrape::PORT),
        format!("{}: {}", scrape::PATH, scrape::METRICS_PATH),
    ] {
        assert!(deployment.contains(&annotation), "no {annotation} on the webhook's pods:\n{deployment}");
    }
    let off = template("mon", "tools", &["metrics.podAnnotations=false"]).unwrap_or_else(|e| panic!("{e}"));
    assert!(!off.contains(scrape::PREFIX), "scrape annotations although turned off:\n{off}");
    let own = template("mon", "tools", &["webhook.podAnnotations.prometheus\\.io/path=/own"]).unwrap_or_else(|e| panic!("{e}"));
    let deployment = document(&own, "kind: Deployment").expect("a Deployment");
    assert!(deployment.contains("prometheus.io/path: /own") && !deployment.contains("path: /metrics"), "{deployment}");

    let enabled = template(
        "mon",
        "tools",
        &["metrics.serviceMonitor.enabled=true", "metrics.podMonitor.enabled=true", "metrics.podMonitor.labels.release=kps"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let service_monitor = document(&enabled, "kind: ServiceMonitor").expect("a ServiceMonitor");
    for expected in ["name: mon-podsftp", "matchNames: [tools]", "app.kubernetes.io/component: webhook", "port: metrics", "path: /metrics"]
    {
        assert!(service_monitor.contains(expected), "no {expected:?} in\n{service_monitor}");
    }
    let pod_monitor = document(&enabled, "kind: PodMonitor").expect("a PodMonitor");
    for expected in [
        format!("key: {}", keys::OWNER_LABEL),
        "operator: Exists".to_string(),
        "any: true".to_string(),
        format!("port: {}", sidecar::HEALTH_PORT_NAME),
        format!("path: {}", scrape::METRICS_PATH),
        "release: kps".to_string(),
    ] {
        assert!(pod_monitor.contains(&expected), "no {expected:?} in\n{pod_monitor}");
    }
    let dashboard = template("mon", "tools", &["metrics.dashboard.enabled=true"]).unwrap_or_else(|e| panic!("{e}"));
    let config_map = document(&dashboard, "kind: ConfigMap").expect("the dashboard's ConfigMap");
    assert!(config_map.contains("name: mon-podsftp-dashboard") && config_map.contains("grafana_dashboard: \"1\""), "{config_map}");
    let (_, block) = config_map.split_once("podsftp.json: |-\n").expect("the dashboard's key");
    let embedded: Vec<&str> = block.lines().map(|line| line.strip_prefix("    ").unwrap_or(line)).collect();
    let file = std::fs::read_to_string(chart_dir().join("dashboards/podsftp.json")).expect("the dashboard file");
    assert_eq!(embedded.join("\n").trim_end(), file.trim_end(), "the ConfigMap does not hold the dashboard file as it is");
    let err = template("mon", "tools", &["metrics.podMonitor.enable=true"]).expect_err("a misspelt key was accepted");
    assert!(err.contains("enable"), "{err}");
}

/// A minimal CRD (schema-less) of `group`, version v1, so the apiserver can validate the chart's
/// cert-manager and prometheus-operator objects without those operators.
fn stub_crd(group: &str, kind: &str) -> String {
    let singular = kind.to_lowercase();
    format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: {singular}s.{group}\n\
         \x20 labels: {{podsftp.io/test-stub: \"true\"}}\nspec:\n  group: {group}\n  scope: Namespaced\n\
         \x20 names: {{kind: {kind}, plural: {singular}s, singular: {singular}, listKind: {kind}List}}\n  versions:\n\
         \x20   - name: v1\n      served: true\n      storage: true\n\
         \x20     schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}\n"
    )
}

/// Stub CRDs of `group` for `kinds`, unless the group's operator is installed (the first kind's
/// CRD exists); removed again when dropped.
struct StubCrds(Vec<String>);

impl StubCrds {
    fn install(group: &str, kinds: &[&str]) -> StubCrds {
        if exists("crd", &format!("{}s.{group}", kinds[0].to_lowercase()), None) {
            return StubCrds(Vec::new());
        }
        kubectl_apply(&kinds.iter().map(|kind| stub_crd(group, kind)).collect::<Vec<_>>().join("---\n"));
        let names: Vec<String> = kinds.iter().map(|kind| format!("crd/{}s.{group}", kind.to_lowercase())).collect();
        let mut wait = vec!["wait", "--for=condition=Established", "--timeout=60s"];
        wait.extend(names.iter().map(String::as_str));
        kubectl(&wait);
        StubCrds(names)
    }
}

impl Drop for StubCrds {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = try_run("kubectl", &["delete", name, "--wait=false"], None);
        }
    }
}

#[test]
fn rendered_manifests_are_accepted_by_the_apiserver_in_every_certificate_mode() {
    require_cluster();
    let ns = TestNamespace::create("chart-dry-run", &[]);
    let certs = std::env::temp_dir().join(format!("podsftp-chart-certs-{}", std::process::id()));
    let out = certs.to_str().expect("utf-8 path");
    let generate = repo_root().join("certs/generate");
    let ca_bundle =
        try_run(generate.to_str().expect("utf-8 path"), &["--service", "dry-podsftp", "--namespace", &ns.name, "--out", out], None)
            .unwrap_or_else(|e| panic!("{e}"));
    let ca_bundle = ca_bundle.trim();

    let stubs = [
        StubCrds::install("cert-manager.io", &["Certificate", "Issuer"]),
        StubCrds::install("monitoring.coreos.com", &["ServiceMonitor", "PodMonitor"]),
    ];

    let secret_name = "certificates.secret.name=dry-tls".to_string();
    let secret_bundle = format!("certificates.secret.caBundle={ca_bundle}");
    let modes: [(&str, Vec<&str>); 5] = [
        ("defaults (auto)", vec![]),
        ("cert-manager, self-signed issuer", vec!["certificates.mode=cert-manager"]),
        (
            "cert-manager, cluster issuer",
            vec![
                "certificates.mode=cert-manager",
                "certificates.certManager.issuerRef.name=ca",
                "certificates.certManager.issuerRef.kind=ClusterIssuer",
            ],
        ),
        ("secret", vec!["certificates.mode=secret", &secret_name, &secret_bundle]),
        (
            "everything set",
            vec![
                "webhook.failurePolicy=Fail",
                "webhook.replicas=3",
                "webhook.priorityClassName=system-cluster-critical",
                "webhook.nodeSelector.kubernetes\\.io/os=linux",
                "webhook.tolerations[0].operator=Exists",
                "webhook.imagePullSecrets[0].name=regcred",
                "webhook.urlOverride=https://127.0.0.1:18443/mutate",
                "commonLabels.team=files",
                "commonAnnotations.owner=ops",
                "sidecar.allowPtrace=true",
                "sidecar.mode=classic",
                "sidecar.serviceType=NodePort",
                "log.format=text",
                "metrics.serviceMonitor.enabled=true",
                "metrics.serviceMonitor.interval=30s",
                "metrics.serviceMonitor.labels.release=prometheus",
                "metrics.podMonitor.enabled=true",
                "metrics.dashboard.enabled=true",
            ],
        ),
    ];
    for (what, set) in &modes {
        let manifests = template("dry", &ns.name, set).unwrap_or_else(|e| panic!("{what}: {e}"));
        let applied = try_run("kubectl", &["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"], Some(&manifests))
            .unwrap_or_else(|e| panic!("{what}: the apiserver rejected the chart: {e}"));
        for kind in ["deployment.apps/", "service/", "serviceaccount/", "clusterrole.rbac", "mutatingwebhookconfiguration"] {
            assert!(applied.contains(kind), "{what}: no {kind} in {applied}");
        }
        if what.starts_with("cert-manager") {
            assert!(applied.contains("certificate.cert-manager.io/dry-podsftp"), "{what}: {applied}");
        }
        if *what == "everything set" {
            for monitor in [
                "servicemonitor.monitoring.coreos.com/dry-podsftp",
                "podmonitor.monitoring.coreos.com/dry-podsftp-sidecars",
                "configmap/dry-podsftp-dashboard",
            ] {
                assert!(applied.contains(monitor), "{what}: no {monitor} in {applied}");
            }
        }
    }
    drop(stubs);
    let _ = std::fs::remove_dir_all(&certs);
}

/// The Deployment's single container, as stored by the apiserver.
fn webhook_container(release: &Release) -> serde_json::Value {
    let deployment = kubectl_json(&["get", "deployment", &release.fullname(), "-n", &release.namespace]);
    deployment["spec"]["template"]["spec"]["containers"][0].clone()
}

fn args_of(container: &serde_json::Value) -> Vec<String> {
    container["args"].as_array().expect("args").iter().map(|a| a.as_str().expect("string arg").to_string()).collect()
}

/// What a release may leave behind: nothing of its own in its namespace, nothing cluster-wide.
fn assert_nothing_left(release_name: &str, namespace: &str, cluster_name: &str) {
    for kind in ["mutatingwebhookconfiguration", "clusterrole", "clusterrolebinding"] {
        assert!(!exists(kind, cluster_name, None), "{kind} {cluster_name} survived helm uninstall");
    }
    let left = kubectl(&[
        "get",
        "deployments,replicasets,services,serviceaccounts,secrets,configmaps,poddisruptionbudgets,roles,rolebindings",
        "-n",
        namespace,
        "-o",
        "name",
    ]);
    let left: Vec<&str> = left.lines().filter(|name| *name != "serviceaccount/default" && *name != "configmap/kube-root-ca.crt").collect();
    assert!(left.is_empty(), "helm uninstall of {release_name} left in {namespace}: {left:?}");
}

#[test]
fn install_upgrade_and_uninstall_leave_nothing_behind() {
    require_cluster();
    // `restricted` enforcement proves the webhook's pods meet that Pod Security level: the
    // ReplicaSet controller could not create them otherwise.
    let ns = TestNamespace::create("chart-install", &[("pod-security.kubernetes.io/enforce", "restricted")]);
    let release = Release::install("files", &ns.name, &[]);
    let fullname = release.fullname();

    let container = webhook_container(&release);
    let args = args_of(&container);
    for expected in [
        "serve".to_string(),
        "--namespace=$(POD_NAMESPACE)".to_string(),
        format!("--tls-secret={fullname}-tls"),
        format!("--tls-service={fullname}"),
        format!("--webhook-configuration={}", release.cluster_name()),
        "--sidecar-image=ghcr.io/podsftp/podsftp-sidecar:0.1.0".to_string(),
        "--service-type=LoadBalancer".to_string(),
        "--log-format=json".to_string(),
    ] {
        assert!(args.contains(&expected), "webhook args lack {expected}: {args:?}");
    }
    assert_eq!(container["image"], "ghcr.io/podsftp/podsftp-webhook:0.1.0");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["capabilities"]["drop"][0], "ALL");
    // Graceful shutdown (issue 11, item 3): a pause (no shell in the image: the native handler of
    // Kubernetes >= 1.30), then the webhook answers what is in flight within the grace period.
    assert_eq!(container["lifecycle"]["preStop"]["sleep"]["seconds"], 5);
    let deployment = kubectl_json(&["get", "deployment", &fullname, "-n", &ns.name]);
    assert_eq!(deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], 30);

    let selector = format!("app.kubernetes.io/instance={},app.kubernetes.io/component=webhook", release.name);
    let (selector, namespace) = (selector.as_str(), ns.name.as_str());
    let pods = |want: usize| {
        move || {
            let names = kubectl(&["get", "pods", "-n", namespace, "-l", selector, "-o", "name"]);
            let count = names.lines().count();
            if count == want { Ok(()) } else { Err(format!("{count} webhook pods: {names}")) }
        }
    };
    eventually("2 webhook pods admitted under Pod Security restricted", WAIT, pods(2));
    assert!(exists("poddisruptionbudget", &fullname, Some(&ns.name)));
    let config = kubectl_json(&["get", "mutatingwebhookconfiguration", &release.cluster_name()]);
    assert_eq!(config["webhooks"].as_array().map(Vec::len), Some(2));

    let upgraded = release.upgrade(&["webhook.replicas=3", "webhook.failurePolicy=Fail"]);
    assert!(upgraded.contains("has been upgraded"), "{upgraded}");
    eventually("3 webhook pods after helm upgrade", WAIT, pods(3));
    let config = kubectl_json(&["get", "mutatingwebhookconfiguration", &release.cluster_name()]);
    assert_eq!(config["webhooks"][0]["failurePolicy"], "Fail");
    assert_eq!(config["webhooks"][1]["failurePolicy"], "Fail");

    let (name, namespace, cluster_name) = (release.name.clone(), release.namespace.clone(), release.cluster_name());
    release.uninstall();
    assert_nothing_left(&name, &namespace, &cluster_name);
}

/// The webhook process on the host started with the chart's own arguments, killed when dropped
/// (`podsftp_e2e::webhook::HostWebhook` builds its own arguments instead).
struct ChartArgsWebhook(Child);

impl Drop for ChartArgsWebhook {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A kubeconfig file (in `dir`) that talks to the test cluster as the release's ServiceAccount,
/// so the host-run webhook has exactly the chart's RBAC.
fn service_account_kubeconfig(release: &Release, dir: &std::path::Path) -> std::path::PathBuf {
    let admin = kubectl_json(&["config", "view", "--raw", "--minify", "--flatten"]);
    let cluster = &admin["clusters"][0]["cluster"];
    let token = kubectl(&["create", "token", &release.fullname(), "-n", &release.namespace, "--duration=1h"]);
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "test", "cluster": {"server": cluster["server"], "certificate-authority-data": cluster["certificate-authority-data"]}}],
        "users": [{"name": "sa", "user": {"token": token.trim()}}],
        "contexts": [{"name": "sa", "context": {"cluster": "test", "user": "sa"}}],
    });
    let path = dir.join("service-account.kubeconfig");
    std::fs::write(&path, config.to_string()).expect("write kubeconfig");
    path
}

/// The ClusterRole's rules as `group resource verb [name]` lines, sorted.
fn granted(rules: &serde_json::Value) -> Vec<String> {
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
    };
    let mut lines = Vec::new();
    for rule in rules.as_array().into_iter().flatten() {
        let names = strings(&rule["resourceNames"]).join(",");
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    lines.push(format!("{group} {resource} {verb} {names}").trim_end().to_string());
                }
            }
        }
    }
    lines.sort();
    lines
}

/// Creates pod NAME (the test app image) in NAMESPACE and returns it as stored.
fn create_pod(name: &str, namespace: &str, labels: &[(&str, &str)]) -> serde_json::Value {
    let _ = try_run(
        "kubectl",
        &["delete", "pod", name, "-n", namespace, "--ignore-not-found", "--wait=false", "--grace-period=0", "--force"],
        None,
    );
    eventually(&format!("old pod {namespace}/{name} gone"), WAIT, || {
        if exists("pod", name, Some(namespace)) { Err("still there".into()) } else { Ok(()) }
    });
    let labels: String = labels.iter().map(|(k, v)| format!("\n    {k}: \"{v}\"")).collect();
    kubectl_apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels:\n    test: chart{labels}\n\
         spec:\n  containers:\n    - name: app\n      image: localhost/podsftp/test-legacy:0.1.0\n      imagePullPolicy: IfNotPresent\n"
    ));
    kubectl_json(&["get", "pod", name, "-n", namespace])
}

fn injected(pod: &serde_json::Value) -> bool {
    pod["metadata"]["annotations"]["podsftp.io/status"] == "injected"
}

fn has_sidecar(pod: &serde_json::Value) -> bool {
    let named = |list: &serde_json::Value| list.as_array().is_some_and(|cs| cs.iter().any(|c| c["name"] == "podsftp"));
    named(&pod["spec"]["containers"]) || named(&pod["spec"]["initContainers"])
}

#[test]
fn auto_mode_webhook_on_the_host_creates_its_certificate_and_patches_labelled_pods() {
    require_cluster();
    let binary = release_binary("podsftp-webhook");
    let ns = TestNamespace::create("chart-auto", &[]);
    let (port, metrics_port) = (free_port(), free_port());
    let url = format!("webhook.urlOverride=https://127.0.0.1:{port}/mutate");
    // No in-cluster replica: the apiserver calls the host process only.
    let release = Release::install("auto", &ns.name, &["webhook.replicas=0", &url, "webhook.extraArgs={--tls-extra-san=127.0.0.1}"]);
    let fullname = release.fullname();

    // Exactly the chart's arguments, but listening on loopback ports of the host.
    let args: Vec<String> = args_of(&webhook_container(&release))
        .into_iter()
        .map(|arg| match arg.split_once('=') {
            Some(("--listen", _)) => format!("--listen=127.0.0.1:{port}"),
            Some(("--metrics-listen", _)) => format!("--metrics-listen=127.0.0.1:{metrics_port}"),
            _ => arg.replace("$(POD_NAMESPACE)", &ns.name),
        })
        .collect();
    assert!(args.contains(&"--tls-extra-san=127.0.0.1".to_string()), "{args:?}");

    // Least privilege (issue 11): exactly these rules, each used by the code (rbac.yaml says why);
    // the webhook below runs as the release's ServiceAccount, so a missing one fails it.
    let cluster_role = kubectl_json(&["get", "clusterrole", &release.cluster_name()]);
    let cluster_name = release.cluster_name();
    let mut expected: Vec<String> = [
        " namespaces get",
        " namespaces list",
        " namespaces watch",
        " pods list",
        " pods watch",
        " replicationcontrollers get",
        " secrets create",
        " secrets get",
        " secrets list",
        " secrets patch",
        " secrets watch",
        " services create",
        " services delete",
        " services get",
        " services list",
        " services patch",
        " services watch",
        "apps daemonsets get",
        "apps daemonsets list",
        "apps daemonsets watch",
        "apps deployments get",
        "apps deployments list",
        "apps deployments watch",
        "apps replicasets get",
        "apps replicasets list",
        "apps replicasets watch",
        "apps statefulsets get",
        "apps statefulsets list",
        "apps statefulsets watch",
        "batch cronjobs get",
        "batch cronjobs list",
        "batch cronjobs watch",
        "batch jobs get",
        "batch jobs list",
        "batch jobs watch",
        "events.k8s.io events create",
        "events.k8s.io events patch",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["get", "patch"].map(|verb| format!("admissionregistration.k8s.io mutatingwebhookconfigurations {verb} {cluster_name}")))
    .collect();
    expected.sort();
    assert_eq!(granted(&cluster_role["rules"]), expected);
    let role = kubectl_json(&["get", "role", &format!("{fullname}-tls"), "-n", &ns.name]);
    assert_eq!(granted(&role["rules"]), [format!(" secrets list {fullname}-tls"), format!(" secrets watch {fullname}-tls")]);
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = service_account_kubeconfig(&release, dir.path());

    let log_path = std::env::temp_dir().join("podsftp-chart-auto-webhook.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let _webhook = ChartArgsWebhook(
        Command::new(&binary)
            .args(&args)
            .env("KUBECONFIG", &kubeconfig)
            .stdout(Stdio::from(log.try_clone().expect("log file")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display())),
    );

    eventually("the webhook's certificate Secret", WAIT, || {
        let secret = try_run("kubectl", &["get", "secret", &format!("{fullname}-tls"), "-n", &ns.name, "-o", "json"], None)?;
        let secret: serde_json::Value = serde_json::from_str(&secret).map_err(|e| e.to_string())?;
        match secret["data"].as_object() {
            Some(data) if !data.is_empty() => Ok(()),
            _ => Err("Secret without data".into()),
        }
    });
    eventually("the caBundle in both webhooks", WAIT, || {
        let config = kubectl_json(&["get", "mutatingwebhookconfiguration", &release.cluster_name()]);
        let filled = config["webhooks"]
            .as_array()
            .is_some_and(|ws| ws.iter().all(|w| w["clientConfig"]["caBundle"].as_str().is_some_and(|b| !b.is_empty())));
        if filled { Ok(()) } else { Err(format!("{}", config["webhooks"])) }
    });

    let labelled = TestNamespace::create("chart-auto-labelled", &[("podsftp.io/injection", "enabled")]);
    let plain = TestNamespace::create("chart-auto-plain", &[]);
    let opted_out = TestNamespace::create("chart-auto-opted-out", &[("podsftp.io/injection", "disabled")]);

    // The apiserver may still hold the configuration without the caBundle for a moment: then the
    // call fails, failurePolicy Ignore lets the pod through unpatched, and we try again.
    let pod = eventually("a pod in the labelled namespace patched", WAIT, || {
        let pod = create_pod("app", &labelled.name, &[]);
        if injected(&pod) { Ok(pod) } else { Err(format!("not injected: {}", pod["metadata"])) }
    });
    assert!(has_sidecar(&pod), "injected but no podsftp container: {}", pod["spec"]);
    assert_eq!(pod["spec"]["shareProcessNamespace"], true);

    let pod = create_pod("opted-in", &plain.name, &[("sftp", "enabled")]);
    assert!(injected(&pod) && has_sidecar(&pod), "sftp=enabled pod in a plain namespace not patched: {}", pod["metadata"]);
    // The controller's paths with the chart's RBAC: owner lookup, Secret, Service, Event.
    kubectl_apply(&format!(
        r#"{{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {{"name": "files", "namespace": "{ns}"}},
            "spec": {{"replicas": 1, "selector": {{"matchLabels": {{"app": "files"}}}},
              "template": {{"metadata": {{"labels": {{"app": "files"}}, "annotations": {{"podsftp.io/service-type": "ClusterIP"}}}},
                "spec": {{"containers": [{{"name": "app", "image": "localhost/podsftp/test-legacy:0.1.0"}}]}}}}}}}}"#,
        ns = labelled.name
    ));
    eventually("Secret, Service and Created event of Deployment files", WAIT, || {
        let made = ["secret", "service"].iter().all(|kind| exists(kind, "files-sftp", Some(&labelled.name)));
        let events =
            kubectl(&["get", "events", "-n", &labelled.name, "--field-selector", "involvedObject.name=files,reason=Created", "-o", "name"]);
        if made && !events.trim().is_empty() { Ok(()) } else { Err(std::fs::read_to_string(&log_path).unwrap_or_default()) }
    });
    // Two sweeps (list of Services) have run by now.
    std::thread::sleep(Duration::from_secs(31));
    let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(!log_text.contains("forbidden"), "the chart's RBAC refused a call:\n{log_text}");
    for (name, namespace, labels) in [
        ("opted-out", &labelled.name, &[("sftp", "disabled")][..]),
        ("unlabelled", &plain.name, &[]),
        ("in-disabled-namespace", &opted_out.name, &[("sftp", "enabled")]),
        ("in-release-namespace", &ns.name, &[("sftp", "enabled")]),
    ] {
        let pod = create_pod(name, namespace, labels);
        assert!(!injected(&pod) && !has_sidecar(&pod), "{namespace}/{name} must not be patched: {}", pod["metadata"]);
    }

    // helm upgrade leaves what the webhook wrote alone: no drift, no certificate churn.
    let secret_data = || kubectl_json(&["get", "secret", &format!("{fullname}-tls"), "-n", &ns.name])["data"].clone();
    let ca_bundles = || {
        let config = kubectl_json(&["get", "mutatingwebhookconfiguration", &release.cluster_name()]);
        config["webhooks"].as_array().map(|ws| ws.iter().map(|w| w["clientConfig"]["caBundle"].clone()).collect::<Vec<_>>())
    };
    let (data_before, bundles_before) = (secret_data(), ca_bundles());
    let upgraded = release.upgrade(&["log.level=debug"]);
    assert!(upgraded.contains("has been upgraded"), "{upgraded}");
    assert_eq!(secret_data(), data_before, "helm upgrade changed the certificate Secret");
    assert_eq!(ca_bundles(), bundles_before, "helm upgrade changed the caBundle");

    let (name, namespace, cluster_name) = (release.name.clone(), release.namespace.clone(), release.cluster_name());
    release.uninstall();
    assert_nothing_left(&name, &namespace, &cluster_name);
    let pod = create_pod("after-uninstall", &labelled.name, &[]);
    assert!(!injected(&pod), "patched after helm uninstall: {}", pod["metadata"]);
}
