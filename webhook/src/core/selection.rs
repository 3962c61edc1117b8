//! Which pods get the sidecar (PRODUCT.md "Selection").

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use super::keys;
use super::settings::Settings;

const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// Outcome of selection; `Skip` carries the reason for logs and metrics.
#[derive(Debug, PartialEq, Eq)]
pub enum Selection {
    Inject,
    Skip(&'static str),
}

pub fn select(namespace: &str, namespace_labels: &BTreeMap<String, String>, pod: &Pod, settings: &Settings) -> Selection {
    if SYSTEM_NAMESPACES.contains(&namespace) {
        return Selection::Skip("system namespace");
    }
    if settings.own_namespace.as_deref() == Some(namespace) {
        return Selection::Skip("webhook namespace");
    }
    let annotations = pod.metadata.annotations.as_ref();
    if annotations.is_some_and(|a| a.contains_key(keys::STATUS)) {
        return Selection::Skip("already injected");
    }
    let namespace_setting = namespace_labels.get(keys::NAMESPACE_INJECTION).map(String::as_str);
    let pod_setting = pod.metadata.labels.as_ref().and_then(|l| l.get(keys::POD_OPT)).map(String::as_str);
    match (namespace_setting, pod_setting) {
        (Some("disabled"), _) => Selection::Skip("namespace opted out"),
        (_, Some("disabled")) => Selection::Skip("pod opted out"),
        (Some("enabled"), _) | (_, Some("enabled")) => Selection::Inject,
        _ => Selection::Skip("not selected"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn pod(pod_labels: &[(&str, &str)]) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.labels = Some(labels(pod_labels));
        pod
    }

    #[test]
    fn rules() {
        let s = Settings::example();
        let enabled = labels(&[(keys::NAMESPACE_INJECTION, "enabled")]);
        let disabled = labels(&[(keys::NAMESPACE_INJECTION, "disabled")]);
        let none = labels(&[]);
        assert_eq!(select("shop", &enabled, &pod(&[]), &s), Selection::Inject);
        assert_eq!(select("shop", &enabled, &pod(&[("sftp", "disabled")]), &s), Selection::Skip("pod opted out"));
        assert_eq!(select("shop", &none, &pod(&[("sftp", "enabled")]), &s), Selection::Inject);
        assert_eq!(select("shop", &none, &pod(&[]), &s), Selection::Skip("not selected"));
        assert_eq!(select("shop", &disabled, &pod(&[("sftp", "enabled")]), &s), Selection::Skip("namespace opted out"));
        assert_eq!(select("kube-system", &enabled, &pod(&[("sftp", "enabled")]), &s), Selection::Skip("system namespace"));
        assert_eq!(select("podsftp", &none, &pod(&[("sftp", "enabled")]), &s), Selection::Skip("webhook namespace"));
    }
}
