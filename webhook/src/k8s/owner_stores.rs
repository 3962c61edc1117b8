//! Metadata-only watch caches of the built-in controller kinds (apps/v1 ReplicaSet, Deployment,
//! StatefulSet, DaemonSet; batch/v1 Job, CronJob), so that admission and the controller follow a
//! pod's owner chain without asking the apiserver: the first pod of a new ReplicaSet or Job costs
//! no GET during admission, whatever the cluster's size. Each object keeps only what a chain link
//! needs (name, namespace, uid, owner references): managed fields, labels and annotations are
//! dropped as they arrive, to keep the webhook small in a cluster of thousands of owners.
//!
//! An answer is only ever the object the reference names in the pod's own namespace with the uid
//! it claims; anything else (a kind not cached here, a cache not synced yet, an owner not seen yet)
//! is `None` and the caller reads the API as before.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

/// How long a lookup waits for an owner its synced cache has not seen yet: the ReplicaSet and Job
/// controllers create pods right after creating the owner, so the owner's watch event may arrive
/// just after its first pod's admission review.
const UNSEEN_OWNER_WAIT: Duration = Duration::from_millis(500);

/// One kind's cache.
struct Watched<K: Resource<DynamicType = ()> + 'static> {
    store: Store<PartialObjectMeta<K>>,
    /// Set once the first complete list is in the store.
    synced: Arc<AtomicBool>,
    /// Woken after every change to the store.
    changed: Arc<Notify>,
}

impl<K> Watched<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    fn start(client: &Client) -> Self {
        let (store, writer) = reflector::store();
        let (synced, changed) = (Arc::new(AtomicBool::new(false)), Arc::new(Notify::new()));
        // `Api<PartialObjectMeta<_>>`: metadata-only lists and watches.
        let events = watcher(Api::<PartialObjectMeta<K>>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .modify(keep_chain_fields)
            .reflect(writer);
        let (on_sync, on_change) = (synced.clone(), changed.clone());
        tokio::spawn(events.for_each(move |event| {
            match event {
                Ok(watcher::Event::InitDone) => on_sync.store(true, Ordering::Release),
                Ok(_) => {}
                Err(error) => tracing::warn!(kind = %K::kind(&()), %error, "owner watch error; owners of this kind are read from the API"),
            }
            on_change.notify_waiters();
            std::future::ready(())
        }));
        Watched { store, synced, changed }
    }

    /// The owner `reference` names in `namespace`, if this cache holds it with the claimed uid;
    /// waits up to [`UNSEEN_OWNER_WAIT`] for one the synced cache has not seen (yet).
    async fn find(&self, namespace: &str, reference: &OwnerReference) -> Option<ObjectMeta> {
        if !self.synced.load(Ordering::Acquire) {
            return None;
        }
        let key = ObjectRef::new(&reference.name).within(namespace);
        let deadline = tokio::time::Instant::now() + UNSEEN_OWNER_WAIT;
        loop {
            // Registered before looking, so a change between the look and the wait is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let found = self.store.get(&key).filter(|owner| {
                owner.metadata.uid.as_deref() == Some(reference.uid.as_str()) && owner.metadata.namespace.as_deref() == Some(namespace)
            });
            if let Some(owner) = found {
                return Some(owner.metadata.clone());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }
}

/// Drops what an owner chain does not need (the bulk of an object's metadata).
fn keep_chain_fields<K>(owner: &mut PartialObjectMeta<K>) {
    let metadata = &mut owner.metadata;
    metadata.managed_fields = None;
    metadata.labels = None;
    metadata.annotations = None;
}

/// The caches of the built-in controller kinds.
pub struct OwnerStores {
    replica_sets: Watched<ReplicaSet>,
    deployments: Watched<Deployment>,
    stateful_sets: Watched<StatefulSet>,
    daemon_sets: Watched<DaemonSet>,
    jobs: Watched<Job>,
    cron_jobs: Watched<CronJob>,
}

impl OwnerStores {
    /// Starts one metadata-only watch per kind (list and watch, cluster-wide).
    pub fn start(client: &Client) -> Self {
        OwnerStores {
            replica_sets: Watched::start(client),
            deployments: Watched::start(client),
            stateful_sets: Watched::start(client),
            daemon_sets: Watched::start(client),
            jobs: Watched::start(client),
            cron_jobs: Watched::start(client),
        }
    }

    /// The metadata of the owner `reference` names, as seen from a pod in `namespace`: `Some` only
    /// when a cache holds that very object (same name, uid and namespace).
    pub async fn find(&self, namespace: &str, reference: &OwnerReference) -> Option<ObjectMeta> {
        match (reference.api_version.as_str(), reference.kind.as_str()) {
            ("apps/v1", "ReplicaSet") => self.replica_sets.find(namespace, reference).await,
            ("apps/v1", "Deployment") => self.deployments.find(namespace, reference).await,
            ("apps/v1", "StatefulSet") => self.stateful_sets.find(namespace, reference).await,
            ("apps/v1", "DaemonSet") => self.daemon_sets.find(namespace, reference).await,
            ("batch/v1", "Job") => self.jobs.find(namespace, reference).await,
            ("batch/v1", "CronJob") => self.cron_jobs.find(namespace, reference).await,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::core::PartialObjectMetaExt;
    use kube::runtime::reflector::store::Writer;

    use super::*;

    fn replica_set(namespace: &str, uid: &str) -> PartialObjectMeta<ReplicaSet> {
        ObjectMeta {
            name: Some("web-5d8f".into()),
            namespace: Some(namespace.into()),
            uid: Some(uid.into()),
            managed_fields: Some(vec![Default::default()]),
            annotations: Some([("deployment.kubernetes.io/revision".to_string(), "1".to_string())].into()),
            ..Default::default()
        }
        .into_response_partial()
    }

    fn reference(uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "web-5d8f".into(),
            uid: uid.into(),
            controller: Some(true),
            ..Default::default()
        }
    }

    /// A synced cache of ReplicaSets holding `objects`, and its writer.
    fn synced(objects: Vec<PartialObjectMeta<ReplicaSet>>) -> (Watched<ReplicaSet>, Writer<PartialObjectMeta<ReplicaSet>>) {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for mut object in objects {
            keep_chain_fields(&mut object);
            writer.apply_watcher_event(&watcher::Event::InitApply(object));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        (Watched { store, synced: Arc::new(AtomicBool::new(true)), changed: Arc::new(Notify::new()) }, writer)
    }

    #[tokio::test]
    async fn an_owner_is_found_only_with_the_claimed_uid_in_the_pods_namespace() {
        let (cache, _writer) = synced(vec![replica_set("shop", "u1")]);
        let found = cache.find("shop", &reference("u1")).await.expect("cached");
        assert_eq!((found.uid.as_deref(), found.managed_fields, found.annotations), (Some("u1"), None, None));
        assert_eq!(cache.find("shop", &reference("u2")).await, None, "another uid: a recreated or forged owner");
        assert_eq!(cache.find("other", &reference("u1")).await, None, "another namespace's owner of that name and uid");
    }

    #[tokio::test]
    async fn an_owner_created_a_moment_ago_is_waited_for() {
        let (cache, mut writer) = synced(Vec::new());
        let changed = cache.changed.clone();
        let created = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            writer.apply_watcher_event(&watcher::Event::Apply(replica_set("shop", "u1")));
            changed.notify_waiters();
        });
        let started = tokio::time::Instant::now();
        assert!(cache.find("shop", &reference("u1")).await.is_some());
        assert!(started.elapsed() < UNSEEN_OWNER_WAIT, "{:?}", started.elapsed());
        created.await.expect("writer task");
    }

    #[tokio::test]
    async fn an_unsynced_cache_answers_nothing_at_once() {
        let (mut cache, _writer) = synced(vec![replica_set("shop", "u1")]);
        cache.synced = Arc::new(AtomicBool::new(false));
        let started = tokio::time::Instant::now();
        assert_eq!(cache.find("shop", &reference("u1")).await, None);
        assert!(started.elapsed() < UNSEEN_OWNER_WAIT);
    }
}
