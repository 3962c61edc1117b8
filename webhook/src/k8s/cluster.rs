//! The cluster as admission sees it: namespace labels from a reflector, and topmost owners resolved
//! through the dynamic API with a per-uid cache (ownership chains do not change in practice, so
//! only the first pod of a new ReplicaSet or Job costs API calls).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, discovery};

use crate::admission::ClusterView;
use crate::core::{Owner, controller_of};

/// Owner chains longer than this are cut (and treated as unresolved).
const MAX_OWNER_DEPTH: usize = 8;
const OWNER_CACHE_LIMIT: usize = 10_000;
const NAMESPACE_GET_TIMEOUT: Duration = Duration::from_millis(500);

/// The topmost owner with its uid (needed for owner references).
#[derive(Clone, Debug)]
pub struct ResolvedOwner {
    pub owner: Owner,
    pub uid: String,
    pub namespaced: bool,
}

#[derive(Clone, Debug)]
struct Kind {
    resource: ApiResource,
    namespaced: bool,
}

pub struct KubeCluster {
    client: Client,
    namespaces: Store<Namespace>,
    owners: Mutex<HashMap<String, ResolvedOwner>>,
    kinds: Mutex<HashMap<(String, String), Kind>>,
}

impl KubeCluster {
    /// Starts the namespace reflector; `ready()` resolves once it has listed every namespace.
    pub fn start(client: Client) -> Arc<Self> {
        let (reader, writer) = reflector::store();
        let stream = reflector::reflector(writer, watcher(Api::<Namespace>::all(client.clone()), watcher::Config::default()))
            .default_backoff()
            .touched_objects();
        tokio::spawn(stream.for_each(|event| async move {
            if let Err(error) = event {
                tracing::warn!(%error, "namespace watch error");
            }
        }));
        Arc::new(KubeCluster { client, namespaces: reader, owners: Mutex::default(), kinds: Mutex::default() })
    }

    pub async fn ready(&self) {
        let _ = self.namespaces.wait_until_ready().await;
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn kind(&self, api_version: &str, kind: &str) -> Result<Kind, String> {
        let key = (api_version.to_string(), kind.to_string());
        if let Some(known) = self.kinds.lock().map_err(|_| "poisoned")?.get(&key) {
            return Ok(known.clone());
        }
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, capabilities) = discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|e| format!("discovery of {api_version} {kind}: {e}"))?;
        let found = Kind { resource, namespaced: capabilities.scope == discovery::Scope::Namespaced };
        self.kinds.lock().map_err(|_| "poisoned")?.insert(key, found.clone());
        Ok(found)
    }

    /// Follows controller owner references from `controller` up to the topmost owner.
    pub async fn resolve(&self, namespace: &str, controller: &OwnerReference) -> Result<ResolvedOwner, String> {
        let mut current = controller.clone();
        let mut visited = Vec::new();
        let top = loop {
            if let Some(hit) = self.owners.lock().map_err(|_| "poisoned")?.get(&current.uid) {
                break hit.clone();
            }
            if visited.len() == MAX_OWNER_DEPTH {
                return Err("owner chain too long".into());
            }
            visited.push(current.uid.clone());
            let kind = self.kind(&current.api_version, &current.kind).await?;
            let api: Api<DynamicObject> = if kind.namespaced {
                Api::namespaced_with(self.client.clone(), namespace, &kind.resource)
            } else {
                Api::all_with(self.client.clone(), &kind.resource)
            };
            let object = api.get(&current.name).await.map_err(|e| format!("{} {}: {e}", current.kind, current.name))?;
            match controller_of(&object.metadata) {
                Some(next) => current = next.clone(),
                None => {
                    break ResolvedOwner {
                        owner: Owner {
                            api_version: current.api_version.clone(),
                            kind: current.kind.clone(),
                            name: current.name.clone(),
                        },
                        uid: current.uid.clone(),
                        namespaced: kind.namespaced,
                    };
                }
            }
        };
        let mut cache = self.owners.lock().map_err(|_| "poisoned")?;
        if cache.len() + visited.len() > OWNER_CACHE_LIMIT {
            cache.clear();
        }
        for uid in visited {
            cache.insert(uid, top.clone());
        }
        Ok(top)
    }
}

impl ClusterView for KubeCluster {
    async fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        if let Some(cached) = self.namespaces.get(&ObjectRef::new(namespace)) {
            return cached.metadata.labels.clone().unwrap_or_default();
        }
        // Created a moment ago and not yet seen by the reflector.
        let api: Api<Namespace> = Api::all(self.client.clone());
        match tokio::time::timeout(NAMESPACE_GET_TIMEOUT, api.get_opt(namespace)).await {
            Ok(Ok(Some(found))) => found.metadata.labels.unwrap_or_default(),
            _ => BTreeMap::new(),
        }
    }

    async fn topmost_owner(&self, namespace: &str, controller: &OwnerReference) -> Result<Owner, String> {
        self.resolve(namespace, controller).await.map(|resolved| resolved.owner)
    }
}
