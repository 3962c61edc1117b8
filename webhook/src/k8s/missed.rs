//! Pods the webhook should have injected but did not: created while it was unreachable (its
//! `failurePolicy: Ignore` lets them through), they run without the sidecar until recreated. A
//! metadata-only watch of the running pods without podsftp's owner label (every injected pod has
//! it) is checked every [`CHECK_EVERY`] with the webhook's own rules
//! (`core::selection::missed_injection`): a gauge per namespace, and one Warning Event on each
//! such pod's topmost owner with the command that fixes it. An outage thus shows on a dashboard
//! and in `kubectl describe` of the workload, not only when a customer cannot log in.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

use super::cluster::KubeCluster;
use super::without_managed_fields;
use crate::admission::ClusterView;
use crate::core::selection::{Excluded, fix_command, missed_injection};
use crate::core::{controller_of, keys};
use crate::error_chain;
use crate::metrics::Metrics;

/// How often the watched pods are checked (and the gauge updated).
pub const CHECK_EVERY: Duration = Duration::from_secs(15);

type PodMeta = PartialObjectMeta<Pod>;

/// Watches and checks until the process ends; `excluded` namespaces are never injected.
pub async fn run(cluster: Arc<KubeCluster>, metrics: Arc<Metrics>, excluded: Excluded) {
    let client = cluster.client().clone();
    // Finished pods have nothing left to fix; injected pods carry the owner label.
    let config =
        watcher::Config::default().labels(&format!("!{}", keys::OWNER_LABEL)).fields("status.phase!=Succeeded,status.phase!=Failed");
    let (pods, writer) = reflector::store::<PodMeta>();
    let watch = reflector::reflector(writer, without_managed_fields(watcher(Api::<PodMeta>::all(client.clone()), config)))
        .default_backoff()
        .touched_objects();
    tokio::spawn(watch.for_each(|event| async move {
        if let Err(error) = event {
            tracing::warn!(error = %error_chain(&error), "watch error (pods without the sidecar)");
        }
    }));
    if pods.wait_until_ready().await.is_err() {
        tracing::error!("pod watch cache dropped before it was ready; missed injections are not reported");
        return;
    }
    let recorder = Recorder::new(client, Reporter { controller: "podsftp-webhook".into(), instance: std::env::var("HOSTNAME").ok() });
    let mut counted = BTreeMap::new();
    let mut warned = HashSet::new();
    let mut every = tokio::time::interval(CHECK_EVERY);
    loop {
        every.tick().await;
        let missed = missed_pods(&cluster, &pods, &excluded).await;
        let mut now: BTreeMap<String, i64> = BTreeMap::new();
        for pod in &missed {
            *now.entry(pod.metadata.namespace.clone().unwrap_or_default()).or_default() += 1;
        }
        metrics.set_missed_injections(&now, &counted);
        counted = now;
        warned = warn_owners(&cluster, &recorder, &missed, &warned).await;
    }
}

async fn missed_pods(cluster: &KubeCluster, pods: &Store<PodMeta>, excluded: &Excluded) -> Vec<Arc<PodMeta>> {
    let mut missed = Vec::new();
    for pod in pods.state() {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        if missed_injection(&cluster.namespace_labels(namespace).await, &pod.metadata, excluded) {
            missed.push(pod);
        }
    }
    missed
}

/// The topmost owner of `pod` as the object an Event is about: a verified owner, else its
/// controller (unresolved), else the pod itself.
async fn owner_of(cluster: &KubeCluster, pod: &PodMeta) -> ObjectReference {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let Some(controller) = controller_of(&pod.metadata) else {
        return ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: pod.metadata.name.clone(),
            namespace: Some(namespace),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        };
    };
    let (owner, name, uid) = match cluster.topmost(&namespace, controller).await {
        Ok(top) => (top.owner, top.object_name, top.uid),
        Err(error) => {
            tracing::debug!(error = %error_chain(&error), "owner of a pod without the sidecar not resolved; the Event names its controller");
            let owner = crate::core::Owner {
                api_version: controller.api_version.clone(),
                kind: controller.kind.clone(),
                name: controller.name.clone(),
            };
            (owner, controller.name.clone(), controller.uid.clone())
        }
    };
    ObjectReference {
        api_version: Some(owner.api_version),
        kind: Some(owner.kind),
        name: Some(name),
        namespace: Some(namespace),
        uid: Some(uid),
        ..Default::default()
    }
}

/// One Warning Event per owner while it has missed pods (again once it had none in between);
/// returns the owners (uids) warned about now.
async fn warn_owners(cluster: &KubeCluster, recorder: &Recorder, missed: &[Arc<PodMeta>], warned: &HashSet<String>) -> HashSet<String> {
    let mut now = HashSet::new();
    // Pods of one controller share its topmost owner: resolved once, not once per replica.
    let mut controllers = HashSet::new();
    for pod in missed {
        let controller = controller_of(&pod.metadata).map(|c| &c.uid).or(pod.metadata.uid.as_ref());
        if !controllers.insert(controller) {
            continue;
        }
        let owner = owner_of(cluster, pod).await;
        let uid = owner.uid.clone().unwrap_or_default();
        if !now.insert(uid.clone()) || warned.contains(&uid) {
            continue;
        }
        let (namespace, pod_name) = (owner.namespace.clone().unwrap_or_default(), pod.metadata.name.clone().unwrap_or_default());
        let (kind, name) = (owner.kind.clone().unwrap_or_default(), owner.name.clone().unwrap_or_default());
        let note = format!(
            "podsftp: pod {pod_name} runs without the SFTP sidecar although the podsftp webhook's rules select it (created while \
             the webhook was unreachable; failurePolicy Ignore let it through). Recreate it: {}",
            fix_command(&namespace, &kind, &name, &pod_name)
        );
        let event = Event {
            type_: EventType::Warning,
            reason: "MissedInjection".into(),
            note: Some(note),
            action: "Check".into(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, &owner).await {
            tracing::warn!(error = %error_chain(&error), owner = %format!("{kind}/{name}"), "cannot publish event");
        }
    }
    now
}
