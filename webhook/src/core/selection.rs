//! Which pods get the sidecar (PRODUCT.md "Selection").

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::keys;

const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// Namespaces the webhook never injects besides the system ones: its own, and those the operator
/// listed (the chart's `webhook.excludeNamespaces`). The chart's webhook configuration leaves them
/// out too, so admission never sees their pods; the missed-injection check must know them as well,
/// or it would report every pod of a labelled excluded namespace.
#[derive(Clone, Debug, Default)]
pub struct Excluded {
    pub own: Option<String>,
    pub listed: BTreeSet<String>,
}

/// Outcome of selection; `Skip` carries the reason for logs and metrics.
#[derive(Debug, PartialEq, Eq)]
pub enum Selection {
    Inject,
    Skip(&'static str),
}

/// Whether the webhook injects the pod with metadata `pod` (created in `namespace`).
pub fn select(namespace: &str, namespace_labels: &BTreeMap<String, String>, pod: &ObjectMeta, excluded: &Excluded) -> Selection {
    if SYSTEM_NAMESPACES.contains(&namespace) {
        return Selection::Skip("system namespace");
    }
    if excluded.own.as_deref() == Some(namespace) {
        return Selection::Skip("webhook namespace");
    }
    if excluded.listed.contains(namespace) {
        return Selection::Skip("excluded namespace");
    }
    let annotations = pod.annotations.as_ref();
    if annotations.is_some_and(|a| a.contains_key(keys::STATUS)) {
        return Selection::Skip("already injected");
    }
    let namespace_setting = namespace_labels.get(keys::NAMESPACE_INJECTION).map(String::as_str);
    let pod_setting = pod.labels.as_ref().and_then(|l| l.get(keys::POD_OPT)).map(String::as_str);
    match (namespace_setting, pod_setting) {
        (Some("disabled"), _) => Selection::Skip("namespace opted out"),
        (_, Some("disabled")) => Selection::Skip("pod opted out"),
        (Some("enabled"), _) | (_, Some("enabled")) => Selection::Inject,
        _ => Selection::Skip("not selected"),
    }
}

/// Whether a running pod (its metadata: callers leave out finished pods, which have nothing left
/// to fix) lacks the sidecar although the rules select it: it was created while the webhook was
/// unreachable (`failurePolicy: Ignore` let it through) and stays so until recreated. A
/// terminating pod does not count.
pub fn missed_injection(namespace_labels: &BTreeMap<String, String>, pod: &ObjectMeta, excluded: &Excluded) -> bool {
    let namespace = pod.namespace.as_deref().unwrap_or_default();
    pod.deletion_timestamp.is_none() && select(namespace, namespace_labels, pod, excluded) == Selection::Inject
}

/// The command that recreates `pod` (whose topmost owner is `owner_kind`/`owner_name`) so the
/// webhook injects it: a rollout restart where the owner has one, a replacement of a bare pod,
/// else deleting the pod (its Job's or other controller recreates it).
pub fn fix_command(namespace: &str, owner_kind: &str, owner_name: &str, pod: &str) -> String {
    match owner_kind {
        "Deployment" | "StatefulSet" | "DaemonSet" => {
            format!("kubectl rollout restart -n {namespace} {}/{owner_name}", owner_kind.to_ascii_lowercase())
        }
        "Pod" => format!("kubectl get pod -n {namespace} {pod} -o yaml > {pod}.yaml && kubectl replace --force -f {pod}.yaml"),
        _ => format!("kubectl delete pod -n {namespace} {pod}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn pod(pod_labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta { labels: Some(labels(pod_labels)), ..Default::default() }
    }

    fn excluding(own: &str, listed: &[&str]) -> Excluded {
        Excluded { own: Some(own.into()), listed: listed.iter().map(|n| n.to_string()).collect() }
    }

    #[test]
    fn rules() {
        let s = &excluding("podsftp", &["legacy"]);
        let enabled = labels(&[(keys::NAMESPACE_INJECTION, "enabled")]);
        let disabled = labels(&[(keys::NAMESPACE_INJECTION, "disabled")]);
        let none = labels(&[]);
        assert_eq!(select("shop", &enabled, &pod(&[]), s), Selection::Inject);
        assert_eq!(select("shop", &enabled, &pod(&[("sftp", "disabled")]), s), Selection::Skip("pod opted out"));
        assert_eq!(select("shop", &none, &pod(&[("sftp", "enabled")]), s), Selection::Inject);
        assert_eq!(select("shop", &none, &pod(&[]), s), Selection::Skip("not selected"));
        assert_eq!(select("shop", &disabled, &pod(&[("sftp", "enabled")]), s), Selection::Skip("namespace opted out"));
        assert_eq!(select("kube-system", &enabled, &pod(&[("sftp", "enabled")]), s), Selection::Skip("system namespace"));
        assert_eq!(select("podsftp", &none, &pod(&[("sftp", "enabled")]), s), Selection::Skip("webhook namespace"));
        assert_eq!(select("legacy", &enabled, &pod(&[("sftp", "enabled")]), s), Selection::Skip("excluded namespace"));
    }

    #[test]
    fn missed_injections_are_selected_running_pods_without_the_sidecar() {
        let enabled = labels(&[(keys::NAMESPACE_INJECTION, "enabled")]);
        let in_namespace =
            |namespace: &str, pod_labels: &[(&str, &str)]| ObjectMeta { namespace: Some(namespace.into()), ..pod(pod_labels) };
        let own = &excluding("podsftp", &["legacy"]);
        assert!(missed_injection(&enabled, &in_namespace("shop", &[]), own));
        assert!(!missed_injection(&enabled, &in_namespace("shop", &[(keys::POD_OPT, "disabled")]), own));
        assert!(!missed_injection(&labels(&[]), &in_namespace("shop", &[]), own));
        assert!(!missed_injection(&enabled, &in_namespace("podsftp", &[]), own), "the webhook's own namespace");
        assert!(!missed_injection(&enabled, &in_namespace("legacy", &[]), own), "a namespace the operator excluded");
        let mut injected = in_namespace("shop", &[]);
        injected.annotations = Some(labels(&[(keys::STATUS, keys::STATUS_INJECTED)]));
        assert!(!missed_injection(&enabled, &injected, own));
        let mut leaving = in_namespace("shop", &[]);
        leaving.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()));
        assert!(!missed_injection(&enabled, &leaving, own), "a terminating pod");
    }

    #[test]
    fn fixes_per_owner_kind() {
        assert_eq!(fix_command("shop", "Deployment", "web", "web-1"), "kubectl rollout restart -n shop deployment/web");
        assert_eq!(fix_command("shop", "StatefulSet", "db", "db-0"), "kubectl rollout restart -n shop statefulset/db");
        assert_eq!(fix_command("shop", "DaemonSet", "agent", "agent-x"), "kubectl rollout restart -n shop daemonset/agent");
        assert_eq!(fix_command("shop", "CronJob", "nightly", "nightly-1-x"), "kubectl delete pod -n shop nightly-1-x");
        assert!(fix_command("shop", "Pod", "lone", "lone").contains("replace --force"));
    }
}
