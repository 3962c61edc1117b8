//! The plugin's edge to the apiserver: finding the owner a WORKLOAD argument means, reading and
//! patching its Secret, its Service's address, and the pods `status` reports on. Everything it
//! decides is in the pure modules; this one fetches and explains what is missing.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod, Secret, Service};
use k8s_openapi::{ByteString, NamespaceResourceScope};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, Resource};
use podsftp_contract::{keys, secret};
use podsftp_webhook::core::credentials::CredentialsError;
use podsftp_webhook::core::selection::fix_command;
use podsftp_webhook::core::{Owner, controller_of, names};
use podsftp_webhook::k8s::cluster::KubeCluster;
use serde::de::DeserializeOwned;

use crate::login::{Endpoint, Login, LoginError, endpoint, node_address};
use crate::rotate::{Rotation, rotated_entries};
use crate::status::{MissedPod, OwnerStatus, Report, excluded_namespaces, injected_owners, missed_pods};
use crate::workload::{Kind, Workload};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot connect to the cluster (kubeconfig)")]
    Connect(#[source] kube::Error),
    #[error("{what}")]
    Api { what: String, source: kube::Error },
    #[error("no {} named {name:?} in namespace {namespace}", kind.resource())]
    NoSuchWorkload { kind: Kind, name: String, namespace: String },
    #[error("no workload named {name:?} in namespace {namespace} (looked for a deployment, statefulset, daemonset, cronjob, job and pod)")]
    NoWorkloadNamed { name: String, namespace: String },
    #[error("{name:?} names more than one workload in namespace {namespace} ({kinds}): say which, e.g. {example}")]
    Ambiguous { name: String, namespace: String, kinds: String, example: String },
    #[error("{owner} in namespace {namespace} has no podsftp login yet: {why}")]
    NotInjected { owner: String, namespace: String, why: String },
    #[error("Secret {secret}: the value of {key:?} is not text")]
    NotText { secret: String, key: String },
    #[error(transparent)]
    Login(#[from] LoginError),
    #[error("cannot generate new credentials")]
    Credentials(#[from] CredentialsError),
}

fn api_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Api { what, source }
}

pub struct Cluster {
    client: Client,
    owners: Arc<KubeCluster>,
}

impl Cluster {
    pub async fn connect() -> Result<Cluster, ClusterError> {
        let client = Client::try_default().await.map_err(ClusterError::Connect)?;
        let owners = KubeCluster::unwatched(client.clone());
        Ok(Cluster { client, owners })
    }

    /// The namespace of the kubeconfig's current context.
    pub fn default_namespace(&self) -> &str {
        self.client.default_namespace()
    }

    async fn exists<K>(&self, namespace: &str, name: &str) -> Result<bool, ClusterError>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let found = api.get_metadata_opt(name).await.map_err(api_error(format!("looking up {} {name}", K::kind(&()))))?;
        Ok(found.is_some())
    }

    async fn kind_exists(&self, kind: Kind, namespace: &str, name: &str) -> Result<bool, ClusterError> {
        match kind {
            Kind::Deployment => self.exists::<Deployment>(namespace, name).await,
            Kind::StatefulSet => self.exists::<StatefulSet>(namespace, name).await,
            Kind::DaemonSet => self.exists::<DaemonSet>(namespace, name).await,
            Kind::CronJob => self.exists::<CronJob>(namespace, name).await,
            Kind::Job => self.exists::<Job>(namespace, name).await,
            Kind::Pod => self.exists::<Pod>(namespace, name).await,
        }
    }

    /// The topmost owner of `pod`, as the webhook resolves it; the pod's own annotation when the
    /// webhook already wrote it.
    async fn owner_of_pod(&self, namespace: &str, pod: &Pod) -> Owner {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let annotated = pod.metadata.annotations.as_ref().and_then(|a| a.get(keys::OWNER_REF_ANNOTATION));
        if let Some((kind, name)) = annotated.and_then(|a| Owner::kind_and_name_from_annotation(a)) {
            return Owner { api_version: String::new(), kind: kind.to_string(), name: name.to_string() };
        }
        match controller_of(&pod.metadata) {
            Some(controller) => match self.owners.topmost(namespace, controller).await {
                Ok(resolved) => resolved.owner,
                // Unresolvable (deleted meanwhile, no rights): its nearest owner, as the webhook does.
                Err(_) => {
                    Owner { api_version: controller.api_version.clone(), kind: controller.kind.clone(), name: controller.name.clone() }
                }
            },
            None => Owner { api_version: "v1".into(), kind: "Pod".into(), name: pod_name },
        }
    }

    /// The owner whose Secret and Service `workload` means.
    pub async fn owner(&self, namespace: &str, workload: &Workload) -> Result<Owner, ClusterError> {
        let kind = match workload.kind {
            Some(kind) => {
                if !self.kind_exists(kind, namespace, &workload.name).await? {
                    return Err(ClusterError::NoSuchWorkload { kind, name: workload.name.clone(), namespace: namespace.into() });
                }
                kind
            }
            None => {
                let mut found = Vec::new();
                for kind in Kind::ALL {
                    if self.kind_exists(kind, namespace, &workload.name).await? {
                        found.push(kind);
                    }
                }
                match found.as_slice() {
                    [] => return Err(ClusterError::NoWorkloadNamed { name: workload.name.clone(), namespace: namespace.into() }),
                    [kind] => *kind,
                    [first, ..] => {
                        return Err(ClusterError::Ambiguous {
                            name: workload.name.clone(),
                            namespace: namespace.into(),
                            kinds: found.iter().map(|k| k.resource()).collect::<Vec<_>>().join(", "),
                            example: format!("{}/{}", first.resource(), workload.name),
                        });
                    }
                }
            }
        };
        if kind == Kind::Pod {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
            let pod = api.get(&workload.name).await.map_err(api_error(format!("reading pod {}", workload.name)))?;
            return Ok(self.owner_of_pod(namespace, &pod).await);
        }
        Ok(Owner { api_version: String::new(), kind: kind.as_str().into(), name: workload.name.clone() })
    }

    /// Why `owner` has no Secret or Service: its pods, its namespace's label, and the webhook's
    /// warning events on it.
    async fn why_not_injected(&self, namespace: &str, owner: &Owner, missing: &str) -> String {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let annotation = owner.to_annotation();
        let injected = match pods.list(&ListParams::default()).await {
            Ok(list) => list
                .items
                .iter()
                .filter(|p| p.metadata.annotations.as_ref().and_then(|a| a.get(keys::OWNER_REF_ANNOTATION)) == Some(&annotation))
                .count(),
            Err(_) => 0,
        };
        let fix = fix_command(namespace, &owner.kind, &owner.name, &owner.name);
        let mut why = if injected > 0 {
            format!(
                "{injected} pod(s) have the sidecar but {missing} does not exist: the webhook's controller creates it \
                 (is the podsftp webhook running? see its logs)"
            )
        } else {
            let labelled = match Api::<Namespace>::all(self.client.clone()).get_opt(namespace).await {
                Ok(Some(ns)) => ns.metadata.labels.as_ref().and_then(|l| l.get(keys::NAMESPACE_INJECTION)).cloned(),
                _ => None,
            };
            match labelled.as_deref() {
                Some("enabled") => format!(
                    "no pod of it has the sidecar although namespace {namespace} is labelled {}=enabled: its pods were created \
                     before the label or while the webhook was unreachable, or the pod template is labelled {}=disabled. \
                     Recreate them: {fix}",
                    keys::NAMESPACE_INJECTION,
                    keys::POD_OPT
                ),
                _ => format!(
                    "no pod of it has the sidecar: label the namespace (kubectl label namespace {namespace} {}=enabled) \
                     or its pod template ({}: enabled), then recreate its pods: {fix}",
                    keys::NAMESPACE_INJECTION,
                    keys::POD_OPT
                ),
            }
        };
        let events: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        let selector = format!("involvedObject.kind={},involvedObject.name={},type=Warning", owner.kind, owner.name);
        if let Ok(list) = events.list(&ListParams::default().fields(&selector)).await
            && let Some(last) = list.items.iter().filter_map(|e| e.message.as_deref()).rfind(|m| m.contains("podsftp"))
        {
            why.push_str(&format!(". Last warning: {last}"));
        }
        why
    }

    /// Any node's address, if nodes may be listed (NodePort Services).
    async fn node_address(&self) -> Option<String> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let list = nodes.list(&ListParams::default().limit(20)).await.ok()?;
        list.items.iter().find_map(|n| node_address(n.status.as_ref()?.addresses.as_deref()?))
    }

    async fn service_endpoint(&self, service: &Service) -> Result<Endpoint, LoginError> {
        let is_node_port = service.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("NodePort");
        let node = if is_node_port { self.node_address().await } else { None };
        endpoint(service, node.as_deref())
    }

    async fn secret_of(&self, namespace: &str, owner: &Owner) -> Result<(Secret, BTreeMap<String, String>), ClusterError> {
        let name = names::secret_name(&owner.resource_stem());
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let Some(found) = api.get_opt(&name).await.map_err(api_error(format!("reading Secret {name}")))? else {
            let why = self.why_not_injected(namespace, owner, &format!("Secret {name}")).await;
            return Err(ClusterError::NotInjected { owner: owner.to_annotation(), namespace: namespace.into(), why });
        };
        let mut data = BTreeMap::new();
        for (key, value) in found.data.iter().flatten() {
            let text = String::from_utf8(value.0.clone()).map_err(|_| ClusterError::NotText { secret: name.clone(), key: key.clone() })?;
            data.insert(key.clone(), text);
        }
        Ok((found, data))
    }

    /// The login of `owner` with its client key (for `connect`).
    pub async fn login(&self, namespace: &str, owner: &Owner) -> Result<(Login, Option<String>), ClusterError> {
        let (_, data) = self.secret_of(namespace, owner).await?;
        let service_name = names::service_name(&owner.resource_stem());
        let services: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        let Some(service) = services.get_opt(&service_name).await.map_err(api_error(format!("reading Service {service_name}")))? else {
            let why = self.why_not_injected(namespace, owner, &format!("Service {service_name}")).await;
            return Err(ClusterError::NotInjected { owner: owner.to_annotation(), namespace: namespace.into(), why });
        };
        let endpoint = self.service_endpoint(&service).await?;
        let login = Login::new(namespace, &owner.to_annotation(), &names::secret_name(&owner.resource_stem()), &data, endpoint)?;
        Ok((login, data.get(secret::CLIENT_KEY).cloned()))
    }

    /// Replaces what `rotation` names in the owner's Secret (refused if the Secret changed since
    /// it was read, so a concurrent edit is never lost).
    pub async fn rotate(&self, namespace: &str, owner: &Owner, rotation: Rotation) -> Result<(), ClusterError> {
        let (found, data) = self.secret_of(namespace, owner).await?;
        let changed = rotated_entries(&data, rotation)?;
        let encoded: BTreeMap<String, ByteString> = changed.into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect();
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": found.metadata.resource_version },
            "data": encoded,
        });
        let name = names::secret_name(&owner.resource_stem());
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(api_error(format!("updating Secret {name}")))?;
        Ok(())
    }

    /// Injected owners and missed pods in `namespace`, or in every namespace.
    pub async fn status(&self, namespace: Option<&str>) -> Result<Report, ClusterError> {
        let (pods, labels) = match namespace {
            Some(ns) => {
                let pods = Api::<Pod>::namespaced(self.client.clone(), ns).list(&ListParams::default()).await;
                let labels = match Api::<Namespace>::all(self.client.clone()).get_opt(ns).await {
                    Ok(Some(found)) => BTreeMap::from([(ns.to_string(), found.metadata.labels.unwrap_or_default())]),
                    // Without rights on namespaces only pods labelled sftp=enabled count as missed.
                    _ => BTreeMap::new(),
                };
                (pods.map_err(api_error(format!("listing pods in {ns}")))?.items, labels)
            }
            None => {
                let pods = Api::<Pod>::all(self.client.clone()).list(&ListParams::default()).await;
                let namespaces = Api::<Namespace>::all(self.client.clone()).list(&ListParams::default()).await;
                let labels = namespaces
                    .map_err(api_error("listing namespaces"))?
                    .items
                    .into_iter()
                    .map(|n| (n.metadata.name.unwrap_or_default(), n.metadata.labels.unwrap_or_default()))
                    .collect();
                (pods.map_err(api_error("listing pods"))?.items, labels)
            }
        };
        // Without rights on webhook configurations the namespaces the webhooks never see are not
        // known: a pod opted in there (never injected) would be listed as missed.
        let configurations = Api::<MutatingWebhookConfiguration>::all(self.client.clone()).list(&ListParams::default()).await;
        let excluded = configurations.map(|list| excluded_namespaces(&list.items)).unwrap_or_default();
        let mut report = Report::default();
        for ((ns, owner), (count, ready)) in injected_owners(&pods) {
            let stem = match Owner::kind_and_name_from_annotation(&owner) {
                Some((kind, name)) => Owner { api_version: String::new(), kind: kind.into(), name: name.into() }.resource_stem(),
                None => owner.clone(),
            };
            let service_name = names::service_name(&stem);
            let address = match Api::<Service>::namespaced(self.client.clone(), &ns).get_opt(&service_name).await {
                Ok(Some(service)) => match self.service_endpoint(&service).await {
                    Ok(at) => format!("{}:{}", at.host, at.port),
                    Err(_) => format!("{service_name}: no address yet"),
                },
                Ok(None) => format!("{service_name}: missing"),
                Err(error) => format!("{service_name}: {error}"),
            };
            report.owners.push(OwnerStatus { namespace: ns, owner, pods: count, ready_sidecars: ready, address });
        }
        for pod in missed_pods(&pods, &labels, &excluded) {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let owner = self.owner_of_pod(&ns, pod).await;
            let fix = fix_command(&ns, &owner.kind, &owner.name, &name);
            report.missed.push(MissedPod { namespace: ns, pod: name, owner: owner.to_annotation(), fix });
        }
        Ok(report)
    }
}
