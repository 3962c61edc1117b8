//! `kubectl sftp status`: which owners have the sidecar, how many of their pods have it ready,
//! and which pods should have it but do not (created while the webhook was unreachable: its
//! `failurePolicy: Ignore` lets them through), with the command that fixes each. Pure: pods and
//! namespace labels in, a report out; the webhook's own selection rules decide "should".

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use podsftp_contract::{keys, sidecar};
use podsftp_webhook::core::selection::{Excluded, missed_injection};
use serde::Serialize;

/// An owner with injected pods.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerStatus {
    pub namespace: String,
    /// `<Kind>/<name>`, as the webhook's owner annotation has it.
    pub owner: String,
    pub pods: usize,
    pub ready_sidecars: usize,
    /// `host:port`, or why there is none.
    pub address: String,
}

/// A running pod the webhook's rules select that has no sidecar.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MissedPod {
    pub namespace: String,
    pub pod: String,
    /// `<Kind>/<name>` of its topmost owner (the pod itself when it has none).
    pub owner: String,
    pub fix: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub owners: Vec<OwnerStatus>,
    pub missed: Vec<MissedPod>,
}

fn sidecar_ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    let statuses =
        status.and_then(|s| s.init_container_statuses.as_ref()).into_iter().chain(status.and_then(|s| s.container_statuses.as_ref()));
    statuses.flatten().any(|s| s.name == sidecar::CONTAINER_NAME && s.ready)
}

fn finished(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// Injected pods counted per (namespace, owner annotation): (pods, ready sidecars).
pub fn injected_owners(pods: &[Pod]) -> BTreeMap<(String, String), (usize, usize)> {
    let mut owners = BTreeMap::new();
    for pod in pods.iter().filter(|p| !finished(p)) {
        let annotations = pod.metadata.annotations.as_ref();
        let Some(owner) = annotations.filter(|a| a.contains_key(keys::STATUS)).and_then(|a| a.get(keys::OWNER_REF_ANNOTATION)) else {
            continue;
        };
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let counts: &mut (usize, usize) = owners.entry((namespace, owner.clone())).or_default();
        counts.0 += 1;
        counts.1 += usize::from(sidecar_ready(pod));
    }
    owners
}

/// Running pods the webhook would inject now (namespace or pod opted in, not yet injected), in
/// namespaces it is not kept out of (`excluded`, see [`excluded_namespaces`]).
pub fn missed_pods<'a>(
    pods: &'a [Pod],
    namespace_labels: &BTreeMap<String, BTreeMap<String, String>>,
    excluded: &Excluded,
) -> Vec<&'a Pod> {
    let no_labels = BTreeMap::new();
    pods.iter()
        .filter(|pod| {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
            let labels = namespace_labels.get(namespace).unwrap_or(&no_labels);
            !finished(pod) && missed_injection(labels, &pod.metadata, excluded)
        })
        .collect()
}

/// The chart names its webhooks `namespace.podsftp.io` and `pod.podsftp.io`.
const WEBHOOK_NAME_SUFFIX: &str = ".podsftp.io";
/// The label Kubernetes gives every namespace (its name); the chart's webhooks leave namespaces out
/// with `NotIn` on it.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The namespaces podsftp's webhooks (named `*.podsftp.io` in `configurations`) never see: those
/// they run in (a Service's namespace; a webhook reached by URL has none) and those their
/// namespace selector leaves out by name (the chart's release namespace and
/// `webhook.excludeNamespaces`).
pub fn excluded_namespaces(configurations: &[MutatingWebhookConfiguration]) -> Excluded {
    let webhooks = configurations.iter().flat_map(|c| c.webhooks.iter().flatten()).filter(|w| w.name.ends_with(WEBHOOK_NAME_SUFFIX));
    let mut listed = BTreeSet::new();
    for webhook in webhooks {
        listed.extend(webhook.client_config.service.as_ref().map(|s| s.namespace.clone()));
        let expressions = webhook.namespace_selector.iter().flat_map(|s| s.match_expressions.iter().flatten());
        for expression in expressions.filter(|e| e.key == NAMESPACE_NAME_LABEL && e.operator == "NotIn") {
            listed.extend(expression.values.iter().flatten().cloned());
        }
    }
    Excluded { own: None, listed }
}

/// Columns padded to their widest cell, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..columns).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut text = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

impl Report {
    pub fn to_text(&self) -> String {
        let mut text = if self.owners.is_empty() {
            "No workload has the podsftp sidecar.\n".to_string()
        } else {
            let mut rows = vec![["NAMESPACE", "OWNER", "READY", "ADDRESS"].map(String::from).to_vec()];
            rows.extend(
                self.owners
                    .iter()
                    .map(|o| vec![o.namespace.clone(), o.owner.clone(), format!("{}/{}", o.ready_sidecars, o.pods), o.address.clone()]),
            );
            table(&rows)
        };
        if !self.missed.is_empty() {
            text.push_str(&format!(
                "\n{} pod(s) should have the sidecar but do not (created while the webhook was unreachable?):\n",
                self.missed.len()
            ));
            let mut rows = vec![["NAMESPACE", "POD", "OWNER", "FIX"].map(String::from).to_vec()];
            rows.extend(self.missed.iter().map(|m| vec![m.namespace.clone(), m.pod.clone(), m.owner.clone(), m.fix.clone()]));
            text.push_str(&table(&rows));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ContainerStatus, PodStatus};

    use super::*;

    fn pod(namespace: &str, name: &str, annotations: &[(&str, &str)], labels: &[(&str, &str)], sidecar_ready: bool) -> Pod {
        let map = |pairs: &[(&str, &str)]| Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        let mut pod = Pod::default();
        pod.metadata.namespace = Some(namespace.into());
        pod.metadata.name = Some(name.into());
        pod.metadata.annotations = map(annotations);
        pod.metadata.labels = map(labels);
        let sidecar = ContainerStatus { name: sidecar::CONTAINER_NAME.into(), ready: sidecar_ready, ..Default::default() };
        pod.status = Some(PodStatus { phase: Some("Running".into()), init_container_statuses: Some(vec![sidecar]), ..Default::default() });
        pod
    }

    #[test]
    fn owners_count_pods_and_ready_sidecars() {
        let injected = [(keys::STATUS, keys::STATUS_INJECTED), (keys::OWNER_REF_ANNOTATION, "Deployment/web")];
        let mut done = pod("shop", "job-1", &[(keys::STATUS, "injected"), (keys::OWNER_REF_ANNOTATION, "Job/x")], &[], false);
        if let Some(status) = done.status.as_mut() {
            status.phase = Some("Succeeded".into());
        }
        let pods = [
            pod("shop", "web-1", &injected, &[], true),
            pod("shop", "web-2", &injected, &[], false),
            pod("shop", "plain", &[], &[], false),
            done,
        ];
        let owners = injected_owners(&pods);
        assert_eq!(owners, BTreeMap::from([(("shop".to_string(), "Deployment/web".to_string()), (2, 1))]));
    }

    /// Bare pods created with `generateName` each get their own owner at admission (the stem
    /// and a token of the request): the owner annotation, not the pod name, groups them.
    #[test]
    fn generated_bare_pods_are_grouped_by_their_owner_annotation() {
        let owner = |name: &'static str| [(keys::STATUS, keys::STATUS_INJECTED), (keys::OWNER_REF_ANNOTATION, name)];
        let pods = [
            pod("shop", "debug-x7k2p", &owner("Pod/debug-1f0c9a2e"), &[], true),
            pod("shop", "debug-q9w4z", &owner("Pod/debug-77aa00bb"), &[], false),
        ];
        let owners = injected_owners(&pods);
        assert_eq!(
            owners,
            BTreeMap::from([
                (("shop".to_string(), "Pod/debug-1f0c9a2e".to_string()), (1, 1)),
                (("shop".to_string(), "Pod/debug-77aa00bb".to_string()), (1, 0)),
            ])
        );
    }

    #[test]
    fn missed_pods_follow_the_webhook_rules() {
        let labels =
            BTreeMap::from([("shop".to_string(), BTreeMap::from([(keys::NAMESPACE_INJECTION.to_string(), "enabled".to_string())]))]);
        let injected = [(keys::STATUS, keys::STATUS_INJECTED), (keys::OWNER_REF_ANNOTATION, "Deployment/web")];
        let pods = [
            pod("shop", "missed", &[], &[], false),
            pod("shop", "opted-out", &[], &[(keys::POD_OPT, "disabled")], false),
            pod("shop", "injected", &injected, &[], true),
            pod("other", "pod-opted-in", &[], &[(keys::POD_OPT, "enabled")], false),
            pod("other", "not-selected", &[], &[], false),
            pod("kube-system", "system", &[], &[(keys::POD_OPT, "enabled")], false),
        ];
        let webhook = Excluded { own: None, listed: BTreeSet::from(["podsftp".to_string()]) };
        let names: Vec<_> = missed_pods(&pods, &labels, &webhook).iter().filter_map(|p| p.metadata.name.as_deref()).collect();
        assert_eq!(names, ["missed", "pod-opted-in"]);
    }

    /// A pod opted in by its label in the webhook's namespace, or in a namespace the chart's
    /// `webhook.excludeNamespaces` lists, is never injected: not a missed pod, wherever the
    /// webhook was installed.
    #[test]
    fn namespaces_the_webhooks_never_see_are_found_and_never_count() {
        let configuration: MutatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "podsftp-tools"},
            "webhooks": [
                {"name": "namespace.podsftp.io", "clientConfig": {"service": {"name": "podsftp", "namespace": "tools"}},
                 "namespaceSelector": {"matchExpressions": [
                     {"key": "podsftp.io/injection", "operator": "In", "values": ["enabled"]},
                     {"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": ["kube-system", "tools", "legacy"]}]},
                 "admissionReviewVersions": ["v1"], "sideEffects": "None"},
                {"name": "pod.podsftp.io", "clientConfig": {"url": "https://example.com/mutate"},
                 "admissionReviewVersions": ["v1"], "sideEffects": "None"},
                {"name": "other.example.com", "clientConfig": {"service": {"name": "x", "namespace": "elsewhere"}},
                 "namespaceSelector": {"matchExpressions": [{"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": ["theirs"]}]},
                 "admissionReviewVersions": ["v1"], "sideEffects": "None"}
            ]
        }))
        .expect("configuration");
        let found = excluded_namespaces(&[configuration]);
        assert_eq!(found.listed, BTreeSet::from(["kube-system", "legacy", "tools"].map(String::from)));
        let enabled =
            BTreeMap::from([("legacy".to_string(), BTreeMap::from([(keys::NAMESPACE_INJECTION.to_string(), "enabled".to_string())]))]);
        let pods = [pod("tools", "opted-in", &[], &[(keys::POD_OPT, "enabled")], false), pod("legacy", "labelled", &[], &[], false)];
        assert!(missed_pods(&pods, &enabled, &found).is_empty());
        assert_eq!(missed_pods(&pods, &enabled, &Excluded::default()).len(), 2);
        let chart = include_str!("../../charts/podsftp/templates/mutatingwebhookconfiguration.yaml");
        assert!(chart.contains(&format!("- name: {{{{ $webhook }}}}{WEBHOOK_NAME_SUFFIX}\n")), "the chart's webhook names");
        assert!(chart.contains(&format!("- key: {NAMESPACE_NAME_LABEL}\n          operator: NotIn\n")), "the chart's exclusions");
    }

    #[test]
    fn report_text_aligns_columns_and_lists_fixes() {
        let report = Report {
            owners: vec![OwnerStatus {
                namespace: "shop".into(),
                owner: "Deployment/web".into(),
                pods: 2,
                ready_sidecars: 2,
                address: "10.0.0.1:2222".into(),
            }],
            missed: vec![MissedPod {
                namespace: "shop".into(),
                pod: "api-1".into(),
                owner: "Deployment/api".into(),
                fix: "kubectl rollout restart -n shop deployment/api".into(),
            }],
        };
        let text = report.to_text();
        assert!(text.starts_with("NAMESPACE  OWNER           READY  ADDRESS\nshop       Deployment/web  2/2    10.0.0.1:2222\n"), "{text}");
        assert!(text.contains("1 pod(s) should have the sidecar"), "{text}");
        assert!(text.contains("shop       api-1  Deployment/api  kubectl rollout restart -n shop deployment/api\n"), "{text}");
        assert_eq!(Report::default().to_text(), "No workload has the podsftp sidecar.\n");
    }
}
