//! Answers one `AdmissionRequest`: selection, owner resolution (bounded in time), the patch. Every
//! path that does not inject allows the pod unchanged; nothing here denies a pod.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};

use crate::core::patch::mutate;
use crate::core::selection::{Selection, select};
use crate::core::settings::Settings;
use crate::core::{Owner, bare_pod_owner, controller_of};

/// How long admission waits for the topmost owner before falling back to the nearest one.
const OWNER_TIMEOUT: Duration = Duration::from_millis(1500);

/// What admission needs to know about the cluster (cached by the Kubernetes implementation).
pub trait ClusterView: Send + Sync + 'static {
    /// Why an owner was not resolved.
    type Error: std::error::Error + Send;
    /// Labels of a namespace (empty when it is unknown).
    fn namespace_labels(&self, namespace: &str) -> impl Future<Output = BTreeMap<String, String>> + Send;
    /// Follows controller owner references from `controller` to the topmost owner.
    fn topmost_owner(&self, namespace: &str, controller: &OwnerReference) -> impl Future<Output = Result<Owner, Self::Error>> + Send;
}

/// Outcome label of the admissions metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    Skipped,
    Invalid,
    Ignored,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Injected => "injected",
            Outcome::Skipped => "skipped",
            Outcome::Invalid => "not_injectable",
            Outcome::Ignored => "ignored",
        }
    }
}

pub struct Admitter<V> {
    pub settings: Arc<Settings>,
    pub cluster: Arc<V>,
}

impl<V: ClusterView> Admitter<V> {
    pub async fn admit(&self, request: &AdmissionRequest<Pod>) -> (AdmissionResponse, Outcome) {
        let allowed = AdmissionResponse::from(request);
        let is_pod_create = request.kind.kind == "Pod"
            && request.resource.resource == "pods"
            && request.sub_resource.is_none()
            && request.operation == Operation::Create;
        let Some(pod) = request.object.as_ref().filter(|_| is_pod_create) else {
            return (with_warning(allowed, "podsftp: only pod creation is handled; request allowed unchanged"), Outcome::Ignored);
        };
        let namespace = request.namespace.as_deref().or(pod.metadata.namespace.as_deref()).unwrap_or("default");
        let namespace_labels = self.cluster.namespace_labels(namespace).await;
        if let Selection::Skip(reason) = select(namespace, &namespace_labels, &pod.metadata, &self.settings.excluded) {
            tracing::debug!(namespace, reason, "pod not selected");
            return (allowed, Outcome::Skipped);
        }
        let mut warnings = Vec::new();
        let owner = match controller_of(&pod.metadata) {
            Some(controller) => {
                let resolved = tokio::time::timeout(OWNER_TIMEOUT, self.cluster.topmost_owner(namespace, controller)).await;
                match resolved {
                    Ok(Ok(owner)) => Some(owner),
                    failed => {
                        let why = match failed {
                            Ok(Err(error)) => crate::error_chain(&error),
                            _ => "timed out".to_string(),
                        };
                        warnings.push(format!(
                            "podsftp: topmost owner of {}/{} not resolved ({why}); the login and Service belong to it",
                            controller.kind, controller.name
                        ));
                        Some(Owner {
                            api_version: controller.api_version.clone(),
                            kind: controller.kind.clone(),
                            name: controller.name.clone(),
                        })
                    }
                }
            }
            None => bare_pod_owner(pod, &request.uid),
        };
        let Some(owner) = owner else {
            return (with_warning(allowed, "podsftp: not injected: the pod has neither name nor generateName"), Outcome::Invalid);
        };
        match mutate(pod, &namespace_labels, &owner, &self.settings) {
            Ok(mutation) => {
                warnings.extend(mutation.warnings);
                match allowed.clone().with_patch(mutation.patch) {
                    Ok(mut response) => {
                        tracing::info!(namespace, owner = %owner.to_annotation(), "pod injected");
                        if !warnings.is_empty() {
                            response.warnings = Some(warnings);
                        }
                        (response, Outcome::Injected)
                    }
                    Err(error) => (with_warning(allowed, &format!("podsftp: not injected: {error}")), Outcome::Invalid),
                }
            }
            Err(error) => {
                tracing::info!(namespace, owner = %owner.to_annotation(), %error, "selected pod not injected");
                (with_warning(allowed, &format!("podsftp: not injected: {error}")), Outcome::Invalid)
            }
        }
    }
}

fn with_warning(mut response: AdmissionResponse, warning: &str) -> AdmissionResponse {
    response.warnings.get_or_insert_default().push(warning.to_string());
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A cluster whose owner lookups always fail (apiserver unreachable, RBAC missing, ...).
    struct Unreachable;

    impl ClusterView for Unreachable {
        type Error = std::io::Error;

        async fn namespace_labels(&self, _namespace: &str) -> BTreeMap<String, String> {
            BTreeMap::from([("podsftp.io/injection".into(), "enabled".into())])
        }

        async fn topmost_owner(&self, _namespace: &str, _controller: &OwnerReference) -> Result<Owner, std::io::Error> {
            Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
        }
    }

    fn request(object: serde_json::Value) -> AdmissionRequest<Pod> {
        let review: kube::core::admission::AdmissionReview<Pod> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "resource": {"group": "", "version": "v1", "resource": "pods"},
                        "namespace": "shop", "operation": "CREATE", "userInfo": {}, "object": object}
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    #[tokio::test]
    async fn unresolved_owner_falls_back_to_the_nearest_one_with_a_warning() {
        let admitter = Admitter { settings: Arc::new(Settings::example()), cluster: Arc::new(Unreachable) };
        let pod = json!({"metadata": {"generateName": "web-5d8f-",
                           "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f", "uid": "u", "controller": true}]},
                         "spec": {"containers": [{"name": "app", "image": "nginx"}]}});
        let (response, outcome) = admitter.admit(&request(pod)).await;
        assert_eq!(outcome, Outcome::Injected);
        assert!(response.allowed);
        let warnings = response.warnings.unwrap_or_default();
        assert!(warnings.iter().any(|w| w.contains("ReplicaSet/web-5d8f") && w.contains("connection refused")), "{warnings:?}");
        let patch = String::from_utf8(response.patch.unwrap()).unwrap();
        assert!(patch.contains("web-5d8f-replicaset-sftp"), "the nearest owner names the Secret: {patch}");
    }
}
