//! The cluster as admission and the controller see it: namespace labels from a reflector, and
//! owner chains resolved from metadata-only watch caches of the built-in controller kinds
//! (`owner_stores`), or through the dynamic API for other kinds (and for an owner a cache has not
//! seen). Every owner, cached or fetched, must have the uid the reference claims (and live in the
//! pod's namespace when the kind is namespaced); the chain cache of fetched owners is keyed by
//! (namespace, uid), so a reference in one namespace can never decide what another namespace's
//! pods resolve to. Ownership chains do not change in practice, so a fetched chain is kept; an
//! owner's pod template annotations are cached per generation of the owner, which its watch cache
//! keeps current, so pods of every template the owner has running get the settings of its current
//! one (per revision of the pods for kinds without a watch cache). Both caches are bounded in size
//! and age, so churn does not grow them.
//!
//! The plugin, a one-shot command, uses [`KubeCluster::unwatched`]: no watches, every lookup read
//! from the API.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, discovery};

use super::owner_stores::OwnerStores;
use crate::admission::ClusterView;
use crate::core::bounded::BoundedCache;
use crate::core::claim::VerifiedOwner;
use crate::core::{Owner, controller_of};
use crate::metrics::{Metrics, OwnerSource};

/// Owner chains longer than this are cut (and treated as unresolved).
const MAX_OWNER_DEPTH: usize = 8;
/// Entries of each owner cache: owner chains of kinds without a watch cache (CRDs) and ~1,000
/// settings for a cluster of 10,000 pods of 1,000 Deployments.
const OWNER_CACHE_LIMIT: usize = 20_000;
/// Deleted owners leave their entries behind; they go after this long at the latest.
const OWNER_CACHE_TTL: Duration = Duration::from_secs(3600);
const NAMESPACE_GET_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("owner chain longer than {MAX_OWNER_DEPTH}")]
    TooLong,
    #[error("discovery of {api_version} {kind}")]
    Discovery { api_version: String, kind: String, source: kube::Error },
    #[error("reading {kind} {name}")]
    Fetch { kind: String, name: String, source: kube::Error },
    #[error("{kind} {name} has uid {found}, not the {claimed} the owner reference names")]
    UidMismatch { kind: String, name: String, claimed: String, found: String },
    #[error("{kind} {name} is not in namespace {namespace}")]
    NamespaceMismatch { kind: String, name: String, namespace: String },
}

#[derive(Clone, Debug)]
struct Kind {
    resource: ApiResource,
    namespaced: bool,
}

/// An owner chain from one owner up to the topmost, nearest first.
type Chain = Vec<VerifiedOwner>;

/// Which template of an owner cached settings were read from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum TemplateVersion {
    /// The owner's `metadata.generation` (every change to its template changes it).
    Generation(i64),
    /// The revision of the pods that asked: for an owner without a watch cache.
    Revision(String),
}

/// (namespace of the pod, uid of the owner, template version) → the owner's pod template
/// annotations (`None`: the owner kind has no pod template).
type SettingsKey = (String, String, TemplateVersion);

/// The webhook's watch caches.
struct Watches {
    namespaces: Store<Namespace>,
    owners: OwnerStores,
    /// Counts where owner lookups were answered from.
    metrics: Arc<Metrics>,
}

pub struct KubeCluster {
    client: Client,
    /// `None` for [`KubeCluster::unwatched`].
    watches: Option<Watches>,
    /// (namespace of the pod, uid of an owner) → that owner's chain, for owners read from the API.
    owners: Mutex<BoundedCache<(String, String), Chain>>,
    settings: Mutex<BoundedCache<SettingsKey, Option<BTreeMap<String, String>>>>,
    /// Discovered kinds: a handful per cluster, never expire.
    kinds: Mutex<HashMap<(String, String), Kind>>,
}

impl KubeCluster {
    /// Starts the namespace reflector and the owner watch caches; `ready()` resolves once the
    /// namespaces are listed (until the owner caches are, owners are read from the API).
    pub fn start(client: Client, metrics: Arc<Metrics>) -> Arc<Self> {
        let (reader, writer) = reflector::store();
        let stream = reflector::reflector(writer, watcher(Api::<Namespace>::all(client.clone()), watcher::Config::default()))
            .default_backoff()
            .touched_objects();
        tokio::spawn(stream.for_each(|event| async move {
            if let Err(error) = event {
                tracing::warn!(%error, "namespace watch error");
            }
        }));
        let owners = OwnerStores::start(&client);
        Self::with(client, Some(Watches { namespaces: reader, owners, metrics }))
    }

    /// Without watch caches: namespaces and owners are read from the API when asked.
    pub fn unwatched(client: Client) -> Arc<Self> {
        Self::with(client, None)
    }

    fn with(client: Client, watches: Option<Watches>) -> Arc<Self> {
        Arc::new(KubeCluster {
            client,
            watches,
            owners: Mutex::new(BoundedCache::new(OWNER_CACHE_LIMIT, OWNER_CACHE_TTL)),
            settings: Mutex::new(BoundedCache::new(OWNER_CACHE_LIMIT, OWNER_CACHE_TTL)),
            kinds: Mutex::default(),
        })
    }

    pub async fn ready(&self) {
        if let Some(watches) = &self.watches {
            let _ = watches.namespaces.wait_until_ready().await;
        }
    }

    fn count(&self, source: OwnerSource) {
        if let Some(watches) = &self.watches {
            watches.metrics.owner_lookup(source);
        }
    }

    /// The metadata of the owner `reference` names, from a watch cache (same name, uid and
    /// namespace as the reference claims), if one holds it.
    async fn cached_owner(&self, namespace: &str, reference: &OwnerReference) -> Option<ObjectMeta> {
        self.watches.as_ref()?.owners.find(namespace, reference).await
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn kind(&self, api_version: &str, kind: &str) -> Result<Kind, ResolveError> {
        let key = (api_version.to_string(), kind.to_string());
        if let Some(known) = self.kinds.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return Ok(known.clone());
        }
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, capabilities) = discovery::pinned_kind(&self.client, &gvk).await.map_err(|source| ResolveError::Discovery {
            api_version: api_version.into(),
            kind: kind.into(),
            source,
        })?;
        let found = Kind { resource, namespaced: capabilities.scope == discovery::Scope::Namespaced };
        self.kinds.lock().unwrap_or_else(PoisonError::into_inner).insert(key, found.clone());
        Ok(found)
    }

    /// Fetches the object `reference` names, as seen from `namespace`, and checks that it is the
    /// object the reference means (same uid, same namespace).
    pub async fn fetch(&self, namespace: &str, reference: &OwnerReference) -> Result<(DynamicObject, bool), ResolveError> {
        let kind = self.kind(&reference.api_version, &reference.kind).await?;
        let api: Api<DynamicObject> = if kind.namespaced {
            Api::namespaced_with(self.client.clone(), namespace, &kind.resource)
        } else {
            Api::all_with(self.client.clone(), &kind.resource)
        };
        let object = api.get(&reference.name).await.map_err(|source| ResolveError::Fetch {
            kind: reference.kind.clone(),
            name: reference.name.clone(),
            source,
        })?;
        let found = object.metadata.uid.clone().unwrap_or_default();
        if found != reference.uid {
            return Err(ResolveError::UidMismatch {
                kind: reference.kind.clone(),
                name: reference.name.clone(),
                claimed: reference.uid.clone(),
                found,
            });
        }
        if kind.namespaced && object.metadata.namespace.as_deref() != Some(namespace) {
            return Err(ResolveError::NamespaceMismatch {
                kind: reference.kind.clone(),
                name: reference.name.clone(),
                namespace: namespace.into(),
            });
        }
        Ok((object, kind.namespaced))
    }

    /// Follows controller owner references from `controller` (of a pod in `namespace`) up to the
    /// topmost owner; every link verified.
    pub async fn chain(&self, namespace: &str, controller: &OwnerReference) -> Result<Chain, ResolveError> {
        let mut current = controller.clone();
        let mut resolved: Chain = Vec::new();
        // Positions in `resolved` of the links read from the API: their chains are cached.
        let mut fetched = Vec::new();
        let chain = loop {
            let key = (namespace.to_string(), current.uid.clone());
            if let Some(cached) = self.owners.lock().unwrap_or_else(PoisonError::into_inner).get(&key, Instant::now()) {
                self.count(OwnerSource::ChainCache);
                break resolved.iter().cloned().chain(cached.iter().cloned()).collect::<Chain>();
            }
            if resolved.len() == MAX_OWNER_DEPTH {
                return Err(ResolveError::TooLong);
            }
            let (metadata, namespaced) = match self.cached_owner(namespace, &current).await {
                Some(metadata) => {
                    self.count(OwnerSource::Watch);
                    // Only namespaced kinds are watched.
                    (metadata, true)
                }
                None => {
                    self.count(OwnerSource::Api);
                    fetched.push(resolved.len());
                    let (object, namespaced) = self.fetch(namespace, &current).await?;
                    (object.metadata, namespaced)
                }
            };
            resolved.push(VerifiedOwner {
                owner: Owner { api_version: current.api_version.clone(), kind: current.kind.clone(), name: current.name.clone() },
                object_name: current.name.clone(),
                uid: current.uid.clone(),
                namespaced,
            });
            match controller_of(&metadata) {
                Some(next) => current = next.clone(),
                None => break resolved,
            }
        };
        let mut cache = self.owners.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        for index in fetched {
            if let (Some(link), Some(rest)) = (chain.get(index), chain.get(index..)) {
                cache.insert((namespace.to_string(), link.uid.clone()), rest.to_vec(), now);
            }
        }
        Ok(chain)
    }

    /// The topmost owner of the chain from `controller`.
    pub async fn topmost(&self, namespace: &str, controller: &OwnerReference) -> Result<VerifiedOwner, ResolveError> {
        self.chain(namespace, controller).await?.pop().ok_or(ResolveError::TooLong)
    }

    /// The pod template annotations of the owner `reference` names (`spec.template`, or a
    /// CronJob's `spec.jobTemplate.spec.template`; `None` for a kind without a pod template): of
    /// its current template, read once per generation of the owner. Pods of an older template
    /// (a rollout under way, a StatefulSet partition) get the current settings too, so their
    /// reconciles never undo the new template's. For a kind without a watch cache: as of the
    /// pods' `revision`, read once per revision.
    pub async fn template_annotations(
        &self,
        namespace: &str,
        reference: &OwnerReference,
        revision: &str,
    ) -> Result<Option<BTreeMap<String, String>>, ResolveError> {
        let generation = self.cached_owner(namespace, reference).await.and_then(|owner| owner.generation);
        let version = generation.map_or_else(|| TemplateVersion::Revision(revision.to_string()), TemplateVersion::Generation);
        let key = (namespace.to_string(), reference.uid.clone(), version);
        if let Some(cached) = self.settings.lock().unwrap_or_else(PoisonError::into_inner).get(&key, Instant::now()) {
            return Ok(cached);
        }
        let (object, _) = self.fetch(namespace, reference).await?;
        let annotations = template_annotations(&object.data);
        // Filed under the generation read, which can be newer than the watch cache's.
        let key = match (key, object.metadata.generation) {
            ((namespace, uid, TemplateVersion::Generation(_)), Some(read)) => (namespace, uid, TemplateVersion::Generation(read)),
            (key, _) => key,
        };
        self.settings.lock().unwrap_or_else(PoisonError::into_inner).insert(key, annotations.clone(), Instant::now());
        Ok(annotations)
    }
}

/// The pod template annotations of an owner object (`spec.template`, or a CronJob's
/// `spec.jobTemplate.spec.template`); `None` for an owner without a pod template.
fn template_annotations(owner: &serde_json::Value) -> Option<BTreeMap<String, String>> {
    let spec = &owner["spec"];
    let template = [&spec["template"], &spec["jobTemplate"]["spec"]["template"]].into_iter().find(|t| t.is_object())?;
    Some(serde_json::from_value(template["metadata"]["annotations"].clone()).unwrap_or_default())
}

impl ClusterView for KubeCluster {
    type Error = ResolveError;

    async fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        if let Some(cached) = self.watches.as_ref().and_then(|watches| watches.namespaces.get(&ObjectRef::new(namespace))) {
            return cached.metadata.labels.clone().unwrap_or_default();
        }
        // Created a moment ago and not yet seen by the reflector (or not watched).
        let api: Api<Namespace> = Api::all(self.client.clone());
        match tokio::time::timeout(NAMESPACE_GET_TIMEOUT, api.get_opt(namespace)).await {
            Ok(Ok(Some(found))) => found.metadata.labels.unwrap_or_default(),
            _ => BTreeMap::new(),
        }
    }

    async fn topmost_owner(&self, namespace: &str, controller: &OwnerReference) -> Result<Owner, ResolveError> {
        self.topmost(namespace, controller).await.map(|top| top.owner)
    }
}
