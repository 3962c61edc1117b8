//! The per-owner controller: for every injected pod, its topmost owner gets a Secret `<owner>-sftp`
//! (created once, gaps filled, never overwritten) and a Service `<owner>-sftp` (server-side apply,
//! so every replica may reconcile). Services of owners without injected pods are removed by a
//! periodic sweep; the Secret stays so the login survives re-enabling.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use super::cluster::{KubeCluster, ResolvedOwner};
use crate::core::credentials::{LoginRequest, missing_entries};
use crate::core::{Owner, controller_of, keys, names};
use crate::metrics::Metrics;

pub const FIELD_MANAGER: &str = "podsftp";
const RESYNC: Duration = Duration::from_secs(600);
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// A Service younger than this is never swept: another replica may have just created it for a pod
/// this replica has not seen yet.
const SWEEP_MIN_AGE_SECONDS: i64 = 60;
const SERVICE_TYPES: [&str; 3] = ["LoadBalancer", "NodePort", "ClusterIP"];

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("topmost owner not resolved: {0}")]
    Owner(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("credentials: {0}")]
    Credentials(#[from] crate::core::credentials::CredentialsError),
}

pub struct Context {
    pub client: Client,
    pub cluster: Arc<KubeCluster>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub default_service_type: String,
}

impl Context {
    pub fn new(cluster: Arc<KubeCluster>, metrics: Arc<Metrics>, default_service_type: String) -> Arc<Self> {
        let client = cluster.client().clone();
        let instance = std::env::var("HOSTNAME").ok();
        let reporter = Reporter { controller: "podsftp-webhook".into(), instance };
        let recorder = Recorder::new(client.clone(), reporter);
        Arc::new(Context { client, cluster, recorder, metrics, default_service_type })
    }
}

/// Runs the controller and the Service sweep until the process ends.
pub async fn run(context: Arc<Context>) {
    let pods: Api<Pod> = Api::all(context.client.clone());
    let controller = Controller::new(pods, watcher::Config::default().labels(keys::OWNER_LABEL));
    tokio::spawn(sweep_services(controller.store(), context.clone()));
    controller
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "controller event");
            }
        })
        .await;
}

/// Where the owner of an injected pod is, as recorded by the webhook at admission.
struct OwnerTarget {
    owner_name: String,
    owner_label: String,
    reference: OwnerReference,
    object: ObjectReference,
}

async fn owner_target(pod: &Pod, context: &Context) -> Result<Option<OwnerTarget>, ReconcileError> {
    let annotations = pod.annotations();
    let Some((kind, name)) = annotations.get(keys::OWNER_REF_ANNOTATION).and_then(|a| Owner::kind_and_name_from_annotation(a))
    else {
        return Ok(None);
    };
    let Some(owner_label) = pod.labels().get(keys::OWNER_LABEL).cloned() else { return Ok(None) };
    let namespace = pod.namespace().unwrap_or_default();
    let resolved = match controller_of(&pod.metadata) {
        _ if kind == "Pod" => ResolvedOwner {
            owner: Owner { api_version: "v1".into(), kind: "Pod".into(), name: pod.name_any() },
            uid: pod.uid().unwrap_or_default(),
            namespaced: true,
        },
        Some(controller) => context.cluster.resolve(&namespace, controller).await.map_err(ReconcileError::Owner)?,
        None => return Err(ReconcileError::Owner(format!("{kind}/{name} has no controller reference on the pod"))),
    };
    let reference = OwnerReference {
        api_version: resolved.owner.api_version.clone(),
        kind: resolved.owner.kind.clone(),
        name: resolved.owner.name.clone(),
        uid: resolved.uid.clone(),
        controller: Some(true),
        // No finalizer rights are needed for blockOwnerDeletion=false.
        block_owner_deletion: Some(false),
    };
    let object = ObjectReference {
        api_version: Some(resolved.owner.api_version),
        kind: Some(resolved.owner.kind),
        name: Some(resolved.owner.name),
        namespace: resolved.namespaced.then(|| namespace.clone()),
        uid: Some(resolved.uid),
        ..Default::default()
    };
    Ok(Some(OwnerTarget { owner_name: name.to_string(), owner_label, reference, object }))
}

async fn reconcile(pod: Arc<Pod>, context: Arc<Context>) -> Result<Action, ReconcileError> {
    let result = reconcile_pod(&pod, &context).await;
    context.metrics.reconcile(result.is_ok());
    result
}

async fn reconcile_pod(pod: &Pod, context: &Context) -> Result<Action, ReconcileError> {
    if pod.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(target) = owner_target(pod, context).await? else { return Ok(Action::await_change()) };
    let namespace = pod.namespace().unwrap_or_default();
    let outcome = async {
        let secret_created = ensure_secret(pod, &namespace, &target, context).await?;
        let service_created = apply_service(pod, &namespace, &target, context).await?;
        Ok::<_, ReconcileError>((secret_created, service_created))
    }
    .await;
    match outcome {
        Ok((secret_created, service_created)) => {
            for (created, what, name) in [
                (secret_created, "Secret", names::secret_name(&target.owner_name)),
                (service_created, "Service", names::service_name(&target.owner_name)),
            ] {
                if created {
                    tracing::info!(namespace, owner = %target.owner_name, what, name, "created");
                    publish(context, &target, EventType::Normal, "Created", format!("podsftp created {what} {name}")).await;
                }
            }
            Ok(Action::requeue(RESYNC))
        }
        Err(error) => {
            publish(context, &target, EventType::Warning, "Failed", format!("podsftp: {error}")).await;
            Err(error)
        }
    }
}

async fn publish(context: &Context, target: &OwnerTarget, type_: EventType, reason: &str, note: String) {
    let event = Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
    if let Err(error) = context.recorder.publish(&event, &target.object).await {
        tracing::warn!(%error, "cannot publish event");
    }
}

fn managed_labels(owner_label: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (keys::MANAGED_BY.to_string(), keys::MANAGED_BY_VALUE.to_string()),
        (keys::OWNER_LABEL.to_string(), owner_label.to_string()),
    ])
}

fn decoded(secret: &Secret) -> BTreeMap<String, String> {
    let mut values: BTreeMap<String, String> = secret.string_data.clone().unwrap_or_default();
    for (key, ByteString(bytes)) in secret.data.iter().flatten() {
        values.insert(key.clone(), String::from_utf8_lossy(bytes).into_owned());
    }
    values
}

fn secret_data(entries: BTreeMap<String, String>) -> BTreeMap<String, ByteString> {
    entries.into_iter().map(|(key, value)| (key, ByteString(value.into_bytes()))).collect()
}

/// Creates the Secret when missing (another replica may win the race: 409 → fill gaps of the
/// winner's), otherwise adds only missing keys. Returns whether this call created it.
async fn ensure_secret(pod: &Pod, namespace: &str, target: &OwnerTarget, context: &Context) -> Result<bool, ReconcileError> {
    let api: Api<Secret> = Api::namespaced(context.client.clone(), namespace);
    let name = names::secret_name(&target.owner_name);
    let annotations = pod.annotations();
    let login = LoginRequest {
        username: annotations.get(keys::USERNAME).map(String::as_str).filter(|u| !u.is_empty()).unwrap_or(&target.owner_name),
        extra_authorized_keys: annotations.get(keys::AUTHORIZED_KEYS).map(String::as_str),
    };
    let existing = match api.get_opt(&name).await? {
        Some(existing) => existing,
        None => {
            let data = missing_entries(&BTreeMap::new(), &login)?;
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(namespace.to_string()),
                    labels: Some(managed_labels(&target.owner_label)),
                    owner_references: Some(vec![target.reference.clone()]),
                    ..Default::default()
                },
                type_: Some("Opaque".into()),
                data: Some(secret_data(data)),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &secret).await {
                Ok(_) => return Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => api.get(&name).await?,
                Err(error) => return Err(error.into()),
            }
        }
    };
    let missing = missing_entries(&decoded(&existing), &login)?;
    if !missing.is_empty() {
        let data = secret_data(missing);
        // The resourceVersion makes this a compare-and-swap: a concurrent writer's keys are never lost.
        let patch = json!({"metadata": {"resourceVersion": existing.resource_version()}, "data": data});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    }
    Ok(false)
}

/// The desired Service, from the pod (template) annotations.
fn desired_service(pod: &Pod, namespace: &str, target: &OwnerTarget, default_type: &str) -> serde_json::Value {
    let annotations = pod.annotations();
    let service_type = annotations
        .get(keys::SERVICE_TYPE)
        .and_then(|t| SERVICE_TYPES.iter().find(|known| known.eq_ignore_ascii_case(t)))
        .copied()
        .unwrap_or(default_type);
    let port = annotations.get(keys::SERVICE_PORT).and_then(|p| p.trim().parse::<u16>().ok()).filter(|p| *p > 0).unwrap_or(22);
    let mut spec = json!({
        "type": service_type,
        "selector": {keys::OWNER_LABEL: target.owner_label},
        // The port number, not a name: kube resolves a named target in the app containers first.
        "ports": [{"name": "sftp", "port": port, "targetPort": keys::SIDECAR_PORT, "protocol": "TCP"}],
        "sessionAffinity": "ClientIP",
    });
    let ranges: Vec<&str> = annotations
        .get(keys::LOAD_BALANCER_SOURCE_RANGES)
        .map(|r| r.split(',').map(str::trim).filter(|r| !r.is_empty()).collect())
        .unwrap_or_default();
    if service_type == "LoadBalancer" && !ranges.is_empty() {
        spec["loadBalancerSourceRanges"] = json!(ranges);
    }
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": names::service_name(&target.owner_name), "namespace": namespace,
            "labels": managed_labels(&target.owner_label),
            "ownerReferences": [target.reference],
        },
        "spec": spec,
    })
}

/// Server-side applies the Service; returns whether it did not exist before.
async fn apply_service(pod: &Pod, namespace: &str, target: &OwnerTarget, context: &Context) -> Result<bool, ReconcileError> {
    let api: Api<Service> = Api::namespaced(context.client.clone(), namespace);
    let name = names::service_name(&target.owner_name);
    let existed = api.get_opt(&name).await?.is_some();
    let desired = desired_service(pod, namespace, target, &context.default_service_type);
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&desired)).await?;
    Ok(!existed)
}

fn error_policy(_pod: Arc<Pod>, error: &ReconcileError, _context: Arc<Context>) -> Action {
    tracing::warn!(%error, "reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

/// Deletes managed Services whose owner has no injected pod left.
async fn sweep_services(pods: Store<Pod>, context: Arc<Context>) {
    // The store's readiness signal wakes only its most recent waiter (the controller's runner), so
    // poll it again every second instead of waiting once.
    loop {
        match tokio::time::timeout(Duration::from_secs(1), pods.wait_until_ready()).await {
            Ok(Ok(())) => break,
            Ok(Err(_)) => {
                tracing::warn!("pod cache never became ready; Services of removed owners are not swept");
                return;
            }
            Err(_) => continue,
        }
    }
    tracing::debug!("pod cache ready; sweeping Services of owners without injected pods");
    let services: Api<Service> = Api::all(context.client.clone());
    let selector = format!("{}={}", keys::MANAGED_BY, keys::MANAGED_BY_VALUE);
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let list = match services.list(&ListParams::default().labels(&selector)).await {
            Ok(list) => list,
            Err(error) => {
                tracing::warn!(%error, "cannot list podsftp Services");
                continue;
            }
        };
        let now = k8s_openapi::jiff::Timestamp::now();
        // (namespace, owner label) of every injected pod, once per sweep.
        let owners_with_pods: HashSet<(String, String)> = pods
            .state()
            .iter()
            .filter_map(|pod| Some((pod.namespace()?, pod.labels().get(keys::OWNER_LABEL)?.clone())))
            .collect();
        for service in list {
            let namespace = service.namespace().unwrap_or_default();
            let Some(owner_label) = service.labels().get(keys::OWNER_LABEL).cloned() else { continue };
            let old_enough = service
                .metadata
                .creation_timestamp
                .as_ref()
                .is_some_and(|created| now.as_second() - created.0.as_second() >= SWEEP_MIN_AGE_SECONDS);
            let has_pods = owners_with_pods.contains(&(namespace.clone(), owner_label));
            tracing::debug!(namespace, service = %service.name_any(), old_enough, has_pods, "sweep");
            if old_enough && !has_pods {
                let name = service.name_any();
                let api: Api<Service> = Api::namespaced(context.client.clone(), &namespace);
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => tracing::info!(namespace, name, "removed Service of an owner without injected pods"),
                    Err(error) => tracing::warn!(namespace, name, %error, "cannot remove Service"),
                }
            }
        }
    }
}
