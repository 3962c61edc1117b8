//! `kubectl sftp status`: which owners have the sidecar, how many of their pods have it ready,
//! and which pods should have it but do not (created while the webhook was unreachable: its
//! `failurePolicy: Ignore` lets them through), with the command that fixes each. Pure: pods and
//! namespace labels in, a report out; the webhook's own selection rules decide "should".

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use podsftp_contract::{keys, sidecar};
use podsftp_webhook::core::selection::{Selection, select};
use podsftp_webhook::core::settings::Settings;
use serde::Serialize;

use crate::workload::Kind;

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

/// Running pods the webhook would inject now (namespace or pod opted in, not yet injected).
pub fn missed_pods<'a>(pods: &'a [Pod], namespace_labels: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<&'a Pod> {
    // `select` reads only the webhook's own namespace from the settings, which the plugin does
    // not know; that namespace is never labelled for injection by the chart.
    let settings = Settings { own_namespace: None, ..Settings::example() };
    let no_labels = BTreeMap::new();
    pods.iter()
        .filter(|pod| !finished(pod) && pod.metadata.deletion_timestamp.is_none())
        .filter(|pod| {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
            let labels = namespace_labels.get(namespace).unwrap_or(&no_labels);
            select(namespace, labels, pod, &settings) == Selection::Inject
        })
        .collect()
}

/// The command that gets `pod` (of `owner_kind`/`owner_name`) recreated with the sidecar.
pub fn fix_command(namespace: &str, owner_kind: &str, owner_name: &str, pod: &str) -> String {
    match Kind::from_api(owner_kind) {
        Some(kind @ (Kind::Deployment | Kind::StatefulSet | Kind::DaemonSet)) => {
            format!("kubectl rollout restart -n {namespace} {}/{owner_name}", kind.resource())
        }
        Some(Kind::Pod) => format!("kubectl get pod -n {namespace} {pod} -o yaml > {pod}.yaml && kubectl replace --force -f {pod}.yaml"),
        // A Job's or CronJob's pod (or another controller's) is recreated by its controller.
        _ => format!("kubectl delete pod -n {namespace} {pod}"),
    }
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
        let names: Vec<_> = missed_pods(&pods, &labels).iter().filter_map(|p| p.metadata.name.as_deref()).collect();
        assert_eq!(names, ["missed", "pod-opted-in"]);
    }

    #[test]
    fn fixes_per_owner_kind() {
        assert_eq!(fix_command("shop", "Deployment", "web", "web-1"), "kubectl rollout restart -n shop deployment/web");
        assert_eq!(fix_command("shop", "StatefulSet", "db", "db-0"), "kubectl rollout restart -n shop statefulset/db");
        assert_eq!(fix_command("shop", "CronJob", "nightly", "nightly-1-x"), "kubectl delete pod -n shop nightly-1-x");
        assert!(fix_command("shop", "Pod", "lone", "lone").contains("replace --force"));
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
