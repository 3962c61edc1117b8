//! The per-owner controller: for every injected pod whose claim (`podsftp.io/owner` label and
//! annotation) its verified ownerReferences back, the owner gets a Secret `<stem>-sftp` (created
//! once, gaps filled, never overwritten) and a Service `<stem>-sftp` (server-side apply, so every
//! replica may reconcile). It only ever changes objects it created itself (label
//! `app.kubernetes.io/managed-by: podsftp` and a controller reference to that very owner); anything
//! else of the same name is reported as an Event and left alone. Service and login settings come
//! from the owner's pod template, not from the pod. Services of owners that have had no injected
//! pod for a grace period are removed by a periodic sweep; the Secret stays so the login survives
//! re-enabling.
//!
//! Everything is read from watch caches, the way kube-rs controllers are built: a metadata-only
//! reflector of the injected pods, a metadata-only reflector of podsftp's Secrets and a reflector of
//! its Services (label `app.kubernetes.io/managed-by=podsftp`). Pods are grouped per owner and
//! template (`core::groups`), and one representative pod per group is queued, so 50 replicas are
//! one reconcile and status updates none. A changed or deleted Secret or Service queues its owner's
//! groups, so it is repaired within seconds. A reconcile that finds both objects as desired makes
//! no request: a Service is applied (without reading it first) only when the cached one lacks
//! something of the desired one, so a restart or a second replica applies nothing that is already
//! there; a Secret is read only when it changed since this process last saw it complete.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, applier, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::cluster::{KubeCluster, ResolveError};
use super::without_managed_fields;
use crate::core::bounded::BoundedCache;
use crate::core::claim::{self, VerifiedOwner};
use crate::core::credentials::{CredentialsError, LoginRequest, missing_entries};
use crate::core::groups::{self, OwnerGroups, OwnerKey, PodName};
use crate::core::{controller_of, keys, names};
use crate::error_chain;
use crate::metrics::Metrics;

pub const FIELD_MANAGER: &str = "podsftp";
/// Every group is reconciled again this often, whatever the watches said.
const RESYNC: Duration = Duration::from_secs(600);
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// Retry after a conflict with an object podsftp did not create (it may be a garbage-collected
/// leftover of a deleted owner of the same name).
const CONFLICT_RETRY: Duration = Duration::from_secs(60);
const SERVICE_TYPES: [&str; 3] = ["LoadBalancer", "NodePort", "ClusterIP"];
/// Kubernetes drops Events whose note is longer than this many bytes.
const EVENT_NOTE_MAX: usize = 1024;
/// Requests for one pod arriving within this window are one reconcile.
const DEBOUNCE: Duration = Duration::from_millis(500);
/// Reconciles in flight at once (each makes at most a few API requests).
const CONCURRENCY: u16 = 16;
/// What podsftp last wrote, per Secret and Service: bounded like the owner caches.
const WRITTEN_LIMIT: usize = 40_000;
const WRITTEN_TTL: Duration = Duration::from_secs(3600);

type PodMeta = PartialObjectMeta<Pod>;
type SecretMeta = PartialObjectMeta<Secret>;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("owner not resolved")]
    Owner(#[from] ResolveError),
    #[error("Kubernetes API")]
    Kube(#[from] kube::Error),
    #[error("credentials")]
    Credentials(#[from] CredentialsError),
}

pub struct Context {
    pub client: Client,
    pub cluster: Arc<KubeCluster>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub default_service_type: String,
    /// How long an owner may have no injected pod before its Service is removed.
    pub service_grace: Duration,
}

impl Context {
    pub fn new(cluster: Arc<KubeCluster>, metrics: Arc<Metrics>, default_service_type: String, service_grace: Duration) -> Arc<Self> {
        let client = cluster.client().clone();
        let instance = std::env::var("HOSTNAME").ok();
        let reporter = Reporter { controller: "podsftp-webhook".into(), instance };
        let recorder = Recorder::new(client.clone(), reporter);
        Arc::new(Context { client, cluster, recorder, metrics, default_service_type, service_grace })
    }
}

/// The last version of a Secret or Service podsftp wrote or found complete.
#[derive(Clone, PartialEq, Eq)]
struct Written {
    uid: String,
    resource_version: String,
}

impl Written {
    /// Whether `meta` is the version podsftp wrote (or last saw complete).
    fn is(&self, meta: &ObjectMeta) -> bool {
        Some(&self.uid) == meta.uid.as_ref() && Some(&self.resource_version) == meta.resource_version.as_ref()
    }
}

/// The watch caches and what the reconciles share.
pub struct Caches {
    context: Arc<Context>,
    /// Injected pods (label `podsftp.io/owner`), metadata only.
    pods: Store<PodMeta>,
    secrets: Store<SecretMeta>,
    services: Store<Service>,
    groups: Mutex<OwnerGroups>,
    /// "Secret/<namespace>/<name>" or "Service/…" → what podsftp last wrote there.
    written: Mutex<BoundedCache<String, Written>>,
}

impl Caches {
    fn groups(&self) -> std::sync::MutexGuard<'_, OwnerGroups> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Representatives of the groups of `owner`, or of every group.
    fn representatives(&self, owner: Option<&OwnerKey>) -> Vec<PodName> {
        let groups = self.groups();
        match owner {
            Some(owner) => groups.representatives_of(owner),
            None => groups.representatives(),
        }
    }

    fn owners_with_pods(&self) -> HashSet<OwnerKey> {
        self.groups().owners()
    }

    fn written(&self, key: &str) -> Option<Written> {
        self.written.lock().unwrap_or_else(PoisonError::into_inner).get(&key.to_string(), Instant::now())
    }

    fn remember(&self, key: String, written: Written) {
        self.written.lock().unwrap_or_else(PoisonError::into_inner).insert(key, written, Instant::now());
    }
}

/// Reconcile requests: representative pods of owner groups.
type Queue = mpsc::UnboundedSender<ObjectRef<PodMeta>>;

fn pod_ref(pod: PodName) -> ObjectRef<PodMeta> {
    ObjectRef::new(&pod.name).within(&pod.namespace)
}

/// Runs the watches, the controller and the Service sweep until the process ends.
pub async fn run(context: Arc<Context>) {
    let client = context.client.clone();
    let managed = format!("{}={}", keys::MANAGED_BY, keys::MANAGED_BY_VALUE);
    let (pods, pod_writer) = reflector::store();
    let (secrets, secret_writer) = reflector::store();
    let (services, service_writer) = reflector::store();
    let caches = Arc::new(Caches {
        context,
        pods,
        secrets,
        services,
        groups: Mutex::default(),
        written: Mutex::new(BoundedCache::new(WRITTEN_LIMIT, WRITTEN_TTL)),
    });
    let (queue, requests) = mpsc::unbounded();

    // `Api<PartialObjectMeta<_>>`: metadata-only lists and watches.
    let pod_events = watcher(Api::<PodMeta>::all(client.clone()), watcher::Config::default().labels(keys::OWNER_LABEL)).default_backoff();
    let pod_events = without_managed_fields(pod_events).reflect(pod_writer);
    tokio::spawn(file_pods(pod_events, caches.clone(), queue.clone()));
    let secret_events = watcher(Api::<SecretMeta>::all(client.clone()), watcher::Config::default().labels(&managed)).default_backoff();
    let secret_events = without_managed_fields(secret_events).reflect(secret_writer);
    tokio::spawn(requeue_owners(secret_events, caches.clone(), queue.clone(), "Secret"));
    let service_events = watcher(Api::<Service>::all(client), watcher::Config::default().labels(&managed)).default_backoff();
    let service_events = without_managed_fields(service_events).reflect(service_writer);
    tokio::spawn(requeue_owners(service_events, caches.clone(), queue.clone(), "Service"));

    // Before the first reconcile: what exists already, so nothing is created twice.
    until_ready(&caches.secrets, "Secret").await;
    until_ready(&caches.services, "Service").await;
    until_ready(&caches.pods, "pod").await;
    tracing::debug!("caches ready; reconciling owners");
    tokio::spawn(resync(caches.clone(), queue));
    tokio::spawn(sweep_services(caches.clone()));

    let config = controller::Config::default().debounce(DEBOUNCE).concurrency(CONCURRENCY);
    applier(
        |pod, caches| Box::pin(reconcile(pod, caches)),
        error_policy,
        caches.clone(),
        caches.pods.clone(),
        requests.map(Ok::<_, Infallible>),
        config,
    )
    .for_each(|result| async move {
        if let Err(error) = result {
            tracing::debug!(error = %error_chain(&error), "controller event");
        }
    })
    .await;
}

/// Waits for a cache's first complete list. The readiness signal wakes only its most recent
/// waiter, so it is polled every second instead of awaited once.
async fn until_ready<K: Resource + Clone>(store: &Store<K>, what: &str)
where
    K::DynamicType: Eq + Hash + Clone,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(1), store.wait_until_ready()).await {
            Ok(Ok(())) => return,
            Ok(Err(_)) => {
                tracing::error!(what, "watch cache dropped before it was ready");
                return std::future::pending().await;
            }
            Err(_) => continue,
        }
    }
}

/// Files injected pods into owner groups and queues a group's representative when a reconcile has
/// something new to see.
async fn file_pods(events: impl Stream<Item = Result<watcher::Event<PodMeta>, watcher::Error>>, caches: Arc<Caches>, queue: Queue) {
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        let mut groups = caches.groups();
        let announced = match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => groups.apply(&pod.metadata),
            Ok(watcher::Event::Delete(pod)) => match (pod.metadata.namespace, pod.metadata.name) {
                (Some(namespace), Some(name)) => groups.remove(&PodName { namespace, name }),
                _ => Vec::new(),
            },
            // The cache now holds the new list: pods deleted while the watch was away go.
            Ok(watcher::Event::InitDone) => groups.retain(|pod| caches.pods.get(&pod_ref(pod.clone())).is_some()),
            Ok(watcher::Event::Init) => Vec::new(),
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "pod watch error");
                Vec::new()
            }
        };
        drop(groups);
        for pod in announced {
            if queue.unbounded_send(pod_ref(pod)).is_err() {
                return;
            }
        }
    }
}

/// Queues the owner of every podsftp Secret or Service that changes or goes (by its owner label),
/// so a deleted or edited one is repaired at once. Its initial list queues nothing (the pods do),
/// nor does the echo of podsftp's own write.
async fn requeue_owners<K: Resource>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    caches: Arc<Caches>,
    queue: Queue,
    what: &'static str,
) {
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        let (object, deleted) = match event {
            Ok(watcher::Event::Apply(object)) => (object, false),
            Ok(watcher::Event::Delete(object)) => (object, true),
            Ok(_) => continue,
            Err(error) => {
                tracing::warn!(what, error = %error_chain(&error), "watch error");
                continue;
            }
        };
        let meta = object.meta();
        let Some(owner) = meta.namespace.clone().zip(meta.labels.as_ref().and_then(|l| l.get(keys::OWNER_LABEL)).cloned()) else {
            continue;
        };
        // The echo of podsftp's own write needs no reconcile.
        let key = written_key(what, &owner.0, meta.name.as_deref().unwrap_or_default());
        if !deleted && caches.written(&key).is_some_and(|w| w.is(meta)) {
            continue;
        }
        let representatives = caches.representatives(Some(&owner));
        for pod in representatives {
            if queue.unbounded_send(pod_ref(pod)).is_err() {
                return;
            }
        }
    }
}

/// Queues every group again every [`RESYNC`].
async fn resync(caches: Arc<Caches>, queue: Queue) {
    loop {
        tokio::time::sleep(RESYNC).await;
        let representatives = caches.representatives(None);
        for pod in representatives {
            if queue.unbounded_send(pod_ref(pod)).is_err() {
                return;
            }
        }
    }
}

/// The verified owner of an injected pod and what its Secret and Service are made of.
struct OwnerTarget {
    verified: VerifiedOwner,
    namespace: String,
    owner_label: String,
    stem: String,
    /// Annotations of the owner's pod template (the pod's own for a bare pod).
    settings: BTreeMap<String, String>,
}

impl OwnerTarget {
    fn reference(&self) -> OwnerReference {
        owner_reference(&self.verified)
    }

    fn object(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some(self.verified.owner.api_version.clone()),
            kind: Some(self.verified.owner.kind.clone()),
            name: Some(self.verified.object_name.clone()),
            namespace: self.verified.namespaced.then(|| self.namespace.clone()),
            uid: Some(self.verified.uid.clone()),
            ..Default::default()
        }
    }

    fn describe(&self) -> String {
        self.verified.owner.to_annotation()
    }
}

/// The controller reference to `verified` that the Secret and Service carry.
fn owner_reference(verified: &VerifiedOwner) -> OwnerReference {
    OwnerReference {
        api_version: verified.owner.api_version.clone(),
        kind: verified.owner.kind.clone(),
        // The garbage collector looks the owner up by name: the object's own name.
        name: verified.object_name.clone(),
        uid: verified.uid.clone(),
        controller: Some(true),
        // No finalizer rights are needed for blockOwnerDeletion=false.
        block_owner_deletion: Some(false),
    }
}

/// Whether podsftp created `meta` for the owner with `owner_uid`: its managed-by label and a
/// controller reference to that owner. Nothing else is ever changed or deleted.
fn created_for(meta: &ObjectMeta, owner_uid: &str) -> bool {
    let managed = meta.labels.as_ref().and_then(|l| l.get(keys::MANAGED_BY)).is_some_and(|v| v == keys::MANAGED_BY_VALUE);
    managed && controller_of(meta).is_some_and(|r| r.uid == owner_uid)
}

async fn owner_target(pod: &Pod, context: &Context) -> Result<Result<OwnerTarget, claim::ClaimError>, ReconcileError> {
    let namespace = pod.namespace().unwrap_or_default();
    let chain = match controller_of(&pod.metadata) {
        Some(controller) => match context.cluster.chain(&namespace, controller).await {
            Ok(chain) => chain,
            // A reference to an object that is not what it claims will not heal by retrying.
            Err(forged @ (ResolveError::UidMismatch { .. } | ResolveError::NamespaceMismatch { .. } | ResolveError::TooLong)) => {
                return Ok(Err(claim::ClaimError::OwnersUnverified(error_chain(&forged))));
            }
            Err(error) => return Err(error.into()),
        },
        None => Vec::new(),
    };
    let verified = match claim::verify(pod, &chain) {
        Ok(verified) => verified,
        Err(refused) => return Ok(Err(refused)),
    };
    let settings = if verified.owner.kind == "Pod" && chain.is_empty() {
        pod.annotations().clone()
    } else {
        let revision = groups::revision(&pod.metadata);
        let template = context.cluster.template_annotations(&namespace, &owner_reference(&verified), &revision).await?;
        // An owner kind without a pod template (a custom resource) leaves the pod's annotations.
        template.unwrap_or_else(|| pod.annotations().clone())
    };
    Ok(Ok(OwnerTarget {
        owner_label: names::owner_label(&verified.owner),
        stem: verified.owner.resource_stem(),
        verified,
        namespace,
        settings,
    }))
}

/// What reconciling one of the two objects did.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Created,
    Kept,
    /// It exists but podsftp did not create it for this owner: left unchanged.
    NotOurs,
    /// The owner's annotations ask for something invalid: nothing written.
    Refused(String),
}

/// Reconciles the owner of `pod` (the representative of its group).
async fn reconcile(pod: Arc<PodMeta>, caches: Arc<Caches>) -> Result<Action, ReconcileError> {
    // The pod's metadata is all a reconcile reads of it.
    let pod = Pod { metadata: pod.metadata.clone(), ..Default::default() };
    let result = reconcile_owner(&pod, &caches).await;
    caches.context.metrics.reconcile(result.is_ok());
    result
}

async fn reconcile_owner(pod: &Pod, caches: &Caches) -> Result<Action, ReconcileError> {
    let context = &*caches.context;
    if pod.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let target = match owner_target(pod, context).await? {
        Ok(target) => target,
        Err(refused) => {
            let namespace = pod.namespace().unwrap_or_default();
            tracing::warn!(namespace, pod = %pod.name_any(), %refused, "podsftp state of a pod not acted on");
            let note = format!("podsftp ignores this pod: {refused}");
            publish(context, &pod.object_ref(&()), None, EventType::Warning, "NotVerified", &note).await;
            return Ok(Action::await_change());
        }
    };
    let outcome = async {
        let secret = ensure_secret(&target, caches).await?;
        let service = apply_service(&target, caches).await?;
        Ok::<_, ReconcileError>([
            ("Secret", names::secret_name(&target.stem), secret),
            ("Service", names::service_name(&target.stem), service),
        ])
    }
    .await;
    let results = match outcome {
        Ok(results) => results,
        Err(error) => {
            publish(context, &target.object(), None, EventType::Warning, "Failed", &format!("podsftp: {}", error_chain(&error))).await;
            return Err(error);
        }
    };
    let mut next = Action::await_change();
    for (what, name, outcome) in results {
        let namespace = &target.namespace;
        // The recorder folds Events with the same reason about the same object into one series
        // (keeping the first note): the Secret or Service as related object keeps them apart.
        let related = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some(what.into()),
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            ..Default::default()
        };
        match outcome {
            Outcome::Created => {
                tracing::info!(namespace, owner = %target.describe(), what, name, "created");
                let note = format!("podsftp created {what} {name}");
                publish(context, &target.object(), Some(related), EventType::Normal, "Created", &note).await;
            }
            Outcome::Kept => {}
            Outcome::NotOurs => {
                let note = format!("{what} {name} exists but was not created by podsftp for {}: left unchanged", target.describe());
                tracing::warn!(namespace, owner = %target.describe(), what, name, "not created by podsftp; left unchanged");
                publish(context, &target.object(), Some(related), EventType::Warning, "Conflict", &note).await;
                next = Action::requeue(CONFLICT_RETRY);
            }
            Outcome::Refused(why) => {
                tracing::warn!(namespace, owner = %target.describe(), what, name, why, "not written");
                let note = format!("podsftp did not write {what} {name}: {why}");
                publish(context, &target.object(), Some(related), EventType::Warning, "Refused", &note).await;
            }
        }
    }
    Ok(next)
}

/// `text` cut to at most [`EVENT_NOTE_MAX`] bytes at a character boundary (longer notes make the
/// apiserver drop the whole Event).
fn event_note(text: &str) -> String {
    if text.len() <= EVENT_NOTE_MAX {
        return text.to_string();
    }
    const ELLIPSIS: &str = "…";
    let mut cut = EVENT_NOTE_MAX - ELLIPSIS.len();
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.get(..cut).map(|head| format!("{head}{ELLIPSIS}")).unwrap_or_default()
}

async fn publish(
    context: &Context,
    regarding: &ObjectReference,
    secondary: Option<ObjectReference>,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event { type_, reason: reason.into(), note: Some(event_note(note)), action: "Reconcile".into(), secondary };
    if let Err(error) = context.recorder.publish(&event, regarding).await {
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

fn written_key(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind}/{namespace}/{name}")
}

/// Creates the Secret when the cache has none (another replica, or a cache a moment behind, may
/// win the race: 409 → fill gaps of the winner's), otherwise adds only missing keys to a Secret
/// podsftp created for this owner. The Secret is read only when it changed since podsftp last saw
/// it complete.
async fn ensure_secret(target: &OwnerTarget, caches: &Caches) -> Result<Outcome, ReconcileError> {
    let api: Api<Secret> = Api::namespaced(caches.context.client.clone(), &target.namespace);
    let name = names::secret_name(&target.stem);
    let key = written_key("Secret", &target.namespace, &name);
    let login = LoginRequest {
        username: target.settings.get(keys::USERNAME).map(String::as_str).filter(|u| !u.is_empty()).unwrap_or(&target.verified.owner.name),
        extra_authorized_keys: target.settings.get(keys::AUTHORIZED_KEYS).map(String::as_str),
    };
    let existing = match caches.secrets.get(&ObjectRef::new(&name).within(&target.namespace)) {
        Some(cached) if !created_for(&cached.metadata, &target.verified.uid) => return Ok(Outcome::NotOurs),
        Some(cached) if caches.written(&key).is_some_and(|w| w.is(&cached.metadata)) => {
            return Ok(Outcome::Kept);
        }
        Some(_) => api.get(&name).await?,
        None => {
            let data = missing_entries(&BTreeMap::new(), &login)?;
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(target.namespace.clone()),
                    labels: Some(managed_labels(&target.owner_label)),
                    owner_references: Some(vec![target.reference()]),
                    ..Default::default()
                },
                type_: Some("Opaque".into()),
                data: Some(secret_data(data)),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &secret).await {
                Ok(created) => {
                    caches.remember(key, written(&created.metadata));
                    return Ok(Outcome::Created);
                }
                Err(kube::Error::Api(status)) if status.code == 409 => api.get(&name).await?,
                Err(error) => return Err(error.into()),
            }
        }
    };
    if !created_for(&existing.metadata, &target.verified.uid) {
        return Ok(Outcome::NotOurs);
    }
    let missing = missing_entries(&decoded(&existing), &login)?;
    let complete = if missing.is_empty() {
        existing.metadata
    } else {
        let data = secret_data(missing);
        // The resourceVersion makes this a compare-and-swap: a concurrent writer's keys are never lost.
        let patch = json!({"metadata": {"resourceVersion": existing.resource_version()}, "data": data});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?.metadata
    };
    caches.remember(key, written(&complete));
    Ok(Outcome::Kept)
}

fn written(meta: &ObjectMeta) -> Written {
    Written { uid: meta.uid.clone().unwrap_or_default(), resource_version: meta.resource_version.clone().unwrap_or_default() }
}

/// Whether a `podsftp.io/load-balancer-source-ranges` entry is not a CIDR (Kubernetes' own rule).
fn invalid_cidr(range: &str) -> bool {
    let Some((address, prefix)) = range.split_once('/') else { return true };
    let max = match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => 32,
        Ok(std::net::IpAddr::V6(_)) => 128,
        Err(_) => return true,
    };
    !prefix.parse::<u8>().is_ok_and(|p| p <= max && !prefix.starts_with('+'))
}

/// The desired Service, from the owner's template annotations; `Err` with the reason when they ask
/// for something the Service cannot be (never applied half-way: dropping invalid source ranges
/// would open the Service to every address).
fn desired_service(target: &OwnerTarget, default_type: &str) -> Result<Value, InvalidSourceRange> {
    let mut desired = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": names::service_name(&target.stem), "namespace": target.namespace,
            "labels": managed_labels(&target.owner_label),
            "ownerReferences": [target.reference()],
        },
        "spec": service_spec(&target.settings, default_type, &target.owner_label)?,
    });
    desired["metadata"]["annotations"] = json!({keys::APPLIED: fingerprint(&desired)});
    Ok(desired)
}

/// A stable digest of an object (16 hex digits of SHA-256 of its JSON): the same in every replica
/// and across restarts.
fn fingerprint(object: &Value) -> String {
    let digest = Sha256::digest(object.to_string().as_bytes());
    digest.iter().take(8).map(|byte| format!("{byte:02x}")).collect()
}

/// Whether `actual` already has every field of `desired` with the same value, i.e. a server-side
/// apply of `desired` would change nothing podsftp owns. Fields others (or the apiserver's
/// defaults) added are ignored; lists must match element by element. A field podsftp applied
/// before and no longer wants is caught by the fingerprint annotation, which then differs.
fn contains(actual: &Value, desired: &Value) -> bool {
    match (actual, desired) {
        (Value::Object(actual), Value::Object(desired)) => {
            desired.iter().all(|(key, value)| actual.get(key).is_some_and(|have| contains(have, value)))
        }
        (Value::Array(actual), Value::Array(desired)) => {
            actual.len() == desired.len() && actual.iter().zip(desired).all(|(have, want)| contains(have, want))
        }
        _ => actual == desired,
    }
}

/// A `loadBalancerSourceRanges` entry the Service cannot have (shown cut to 64 characters).
#[derive(Debug, thiserror::Error)]
#[error("{annotation}: {shown:?} is not a CIDR such as 203.0.113.0/24", annotation = keys::LOAD_BALANCER_SOURCE_RANGES)]
struct InvalidSourceRange {
    shown: String,
}

/// The Service's spec from the owner's annotations (settings) and the chart's default type.
fn service_spec(settings: &BTreeMap<String, String>, default_type: &str, owner_label: &str) -> Result<Value, InvalidSourceRange> {
    let service_type = settings
        .get(keys::SERVICE_TYPE)
        .and_then(|t| SERVICE_TYPES.iter().find(|known| known.eq_ignore_ascii_case(t.trim())))
        .copied()
        .unwrap_or(default_type);
    let port = settings.get(keys::SERVICE_PORT).and_then(|p| p.trim().parse::<u16>().ok()).filter(|p| *p > 0).unwrap_or(22);
    let mut spec = json!({
        "type": service_type,
        "selector": {keys::OWNER_LABEL: owner_label},
        // The port number, not a name: kube resolves a named target in the app containers first.
        "ports": [{"name": "sftp", "port": port, "targetPort": keys::SIDECAR_PORT, "protocol": "TCP"}],
        "sessionAffinity": "ClientIP",
    });
    let ranges: Vec<&str> = settings
        .get(keys::LOAD_BALANCER_SOURCE_RANGES)
        .map(|r| r.split(',').map(str::trim).filter(|r| !r.is_empty()).collect())
        .unwrap_or_default();
    if let Some(bad) = ranges.iter().find(|r| invalid_cidr(r)) {
        return Err(InvalidSourceRange { shown: bad.chars().take(64).collect() });
    }
    if service_type == "LoadBalancer" && !ranges.is_empty() {
        spec["loadBalancerSourceRanges"] = json!(ranges);
    }
    // The sidecar must see each client's own address: its login limits and penalties are per
    // source address, and with `Cluster` every client entering through one node would share that
    // node's address, so one attacker's failed guesses would lock out everyone behind it.
    if service_type != "ClusterIP" {
        spec["externalTrafficPolicy"] = json!("Local");
    }
    Ok(spec)
}

/// Server-side applies the Service when it is missing or podsftp's own for this owner, unless the
/// cached one already is as desired (so neither a restart nor another replica re-applies what is
/// there). The cache says whose it is; only a name missing from it (podsftp's not created yet, or
/// deleted, or someone else's) is read once. The apply is not forced: should a same-named Service appear meanwhile,
/// its fields owned by someone else make the apply fail instead of taking it over.
async fn apply_service(target: &OwnerTarget, caches: &Caches) -> Result<Outcome, ReconcileError> {
    let name = names::service_name(&target.stem);
    let api: Api<Service> = Api::namespaced(caches.context.client.clone(), &target.namespace);
    let cached = match caches.services.get(&ObjectRef::new(&name).within(&target.namespace)) {
        Some(cached) => Some(cached),
        // The cache holds podsftp's only: read once whether someone else's has the name.
        None => api.get_opt(&name).await?.map(Arc::new),
    };
    if cached.as_ref().is_some_and(|s| !created_for(&s.metadata, &target.verified.uid)) {
        return Ok(Outcome::NotOurs);
    }
    let desired = match desired_service(target, &caches.context.default_service_type) {
        Ok(desired) => desired,
        Err(why) => return Ok(Outcome::Refused(why.to_string())),
    };
    if cached.as_deref().is_some_and(|service| serde_json::to_value(service).is_ok_and(|actual| contains(&actual, &desired))) {
        return Ok(Outcome::Kept);
    }
    match api.patch(&name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&desired)).await {
        Ok(applied) => {
            // Its watch event is the echo of this write: no reconcile needed.
            caches.remember(written_key("Service", &target.namespace, &name), written(&applied.metadata));
            Ok(if cached.is_none() { Outcome::Created } else { Outcome::Kept })
        }
        // Invalid (422) or conflicting (409) with what the apiserver has: the apiserver's own words.
        Err(kube::Error::Api(status)) if matches!(status.code, 409 | 422) => Ok(Outcome::Refused(status.message.clone())),
        Err(error) => Err(error.into()),
    }
}

fn error_policy(_pod: Arc<PodMeta>, error: &ReconcileError, _caches: Arc<Caches>) -> Action {
    tracing::warn!(error = %error_chain(error), "reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

/// When each managed Service was first seen without an injected pod of its owner, per replica.
#[derive(Default)]
struct IdleServices {
    since: HashMap<String, Instant>,
}

impl IdleServices {
    /// Records one sweep's view — `(Service uid, whether its owner has an injected pod)` — and
    /// returns the uids idle for at least `grace`. Services no longer listed are forgotten.
    fn observe(&mut self, now: Instant, services: &[(String, bool)], grace: Duration) -> Vec<String> {
        let listed: HashSet<&String> = services.iter().map(|(uid, _)| uid).collect();
        self.since.retain(|uid, _| listed.contains(uid));
        let mut expired = Vec::new();
        for (uid, has_pods) in services {
            if *has_pods {
                self.since.remove(uid);
                continue;
            }
            let since = *self.since.entry(uid.clone()).or_insert(now);
            if now.duration_since(since) >= grace {
                expired.push(uid.clone());
            }
        }
        expired
    }
}

/// Deletes podsftp's Services whose owner has had no injected pod for the grace period; both
/// read from the caches.
async fn sweep_services(caches: Arc<Caches>) {
    let mut idle = IdleServices::default();
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let owners_with_pods = caches.owners_with_pods();
        let ours: Vec<Arc<Service>> = caches.services.state().into_iter().filter(|s| controller_of(&s.metadata).is_some()).collect();
        let observed: Vec<(String, bool)> = ours
            .iter()
            .filter_map(|service| {
                let key = (service.namespace()?, service.labels().get(keys::OWNER_LABEL)?.clone());
                Some((service.uid()?, owners_with_pods.contains(&key)))
            })
            .collect();
        let expired: HashSet<String> = idle.observe(Instant::now(), &observed, caches.context.service_grace).into_iter().collect();
        for service in ours.iter().filter(|s| s.uid().is_some_and(|uid| expired.contains(&uid))) {
            let (namespace, name) = (service.namespace().unwrap_or_default(), service.name_any());
            let api: Api<Service> = Api::namespaced(caches.context.client.clone(), &namespace);
            // The uid precondition: a Service recreated under the same name meanwhile is not touched.
            let preconditions = Preconditions { uid: service.uid(), resource_version: None };
            match api.delete(&name, &DeleteParams { preconditions: Some(preconditions), ..Default::default() }).await {
                Ok(_) => tracing::info!(namespace, name, "removed Service of an owner without injected pods"),
                Err(error) => tracing::warn!(namespace, name, error = %error_chain(&error), "cannot remove Service"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_notes_are_cut_at_a_character_boundary() {
        assert_eq!(event_note("short"), "short");
        let long = format!("{}é{}", "a".repeat(1022), "b".repeat(2000));
        let note = event_note(&long);
        assert!(note.len() <= EVENT_NOTE_MAX, "{}", note.len());
        assert!(note.ends_with('…') && note.starts_with("aaa"));
        assert!(event_note(&"日本".repeat(400)).len() <= EVENT_NOTE_MAX);
    }

    #[test]
    fn only_objects_created_for_this_owner_are_ours() {
        let meta = |labels: serde_json::Value, owners: serde_json::Value| -> ObjectMeta {
            serde_json::from_value(json!({"labels": labels, "ownerReferences": owners})).unwrap()
        };
        let managed = json!({"app.kubernetes.io/managed-by": "podsftp"});
        let owned_by = |uid: &str| json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": uid, "controller": true}]);
        assert!(created_for(&meta(managed.clone(), owned_by("u1")), "u1"));
        assert!(!created_for(&meta(managed.clone(), owned_by("u2")), "u1"), "another owner's (same name, new uid)");
        assert!(!created_for(&meta(json!({}), owned_by("u1")), "u1"), "not labelled as podsftp's");
        assert!(!created_for(&meta(managed, json!([])), "u1"), "a user's Service with podsftp's label");
    }

    #[test]
    fn source_ranges_must_be_cidrs() {
        for good in ["10.0.0.0/8", "0.0.0.0/0", "2001:db8::/32", "192.0.2.1/32"] {
            assert!(!invalid_cidr(good), "{good}");
        }
        for bad in ["10.0.0.0", "10.0.0.0/33", "not-a-cidr", "10.0.0.0/+8", "::/129", "/8", ""] {
            assert!(invalid_cidr(bad), "{bad}");
        }
    }

    #[test]
    fn external_services_keep_the_clients_address() {
        let spec = |service_type: &str| {
            let settings = BTreeMap::from([(keys::SERVICE_TYPE.to_string(), service_type.to_string())]);
            service_spec(&settings, "LoadBalancer", "web").unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(spec("LoadBalancer")["externalTrafficPolicy"], "Local");
        assert_eq!(spec("NodePort")["externalTrafficPolicy"], "Local");
        // The apiserver refuses the field on a ClusterIP Service.
        assert!(spec("ClusterIP").get("externalTrafficPolicy").is_none());
    }

    fn target(settings: &[(&str, &str)]) -> OwnerTarget {
        let owner = crate::core::Owner { api_version: "apps/v1".into(), kind: "Deployment".into(), name: "web".into() };
        OwnerTarget {
            verified: VerifiedOwner { owner, object_name: "web".into(), uid: "u1".into(), namespaced: true },
            namespace: "shop".into(),
            owner_label: "web".into(),
            stem: "web".into(),
            settings: settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    /// Issue 14: a restarted webhook (or a second replica) has no record of what it applied; the
    /// cached Service alone tells whether an apply would change anything (the old controller
    /// re-applied every owner's Service after each restart).
    #[test]
    fn a_service_as_the_apiserver_keeps_it_needs_no_apply() {
        let desired = desired_service(&target(&[]), "LoadBalancer").unwrap_or_else(|e| panic!("{e}"));
        // What the apiserver stores: the applied fields plus defaults and other writers' fields.
        let mut stored = desired.clone();
        stored["metadata"]["uid"] = json!("s1");
        stored["metadata"]["resourceVersion"] = json!("42");
        stored["metadata"]["annotations"]["team"] = json!("payments");
        stored["spec"]["clusterIP"] = json!("10.96.0.12");
        stored["spec"]["ports"][0]["nodePort"] = json!(31022);
        stored["spec"]["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 10800}});
        stored["status"] = json!({"loadBalancer": {}});
        let service: Service = serde_json::from_value(stored).unwrap();
        assert!(contains(&serde_json::to_value(&service).unwrap(), &desired), "{service:?}");

        let edited = |edit: &dyn Fn(&mut Value)| {
            let mut actual = serde_json::to_value(&service).unwrap();
            edit(&mut actual);
            contains(&actual, &desired)
        };
        assert!(!edited(&|s| s["spec"]["type"] = json!("NodePort")), "a value someone changed");
        assert!(!edited(&|s| drop(s["spec"].as_object_mut().unwrap().remove("externalTrafficPolicy"))), "a field someone removed");
        assert!(!edited(&|s| s["spec"]["ports"].as_array_mut().unwrap().push(json!({"port": 80}))), "a port someone added");
        assert!(!edited(&|s| drop(s["metadata"]["labels"].as_object_mut().unwrap().remove(keys::MANAGED_BY))), "a label removed");
    }

    /// A field podsftp applied and no longer wants (here the source ranges) is not "contained"
    /// away: the digest in the annotation differs, so the Service is applied and the field goes.
    #[test]
    fn a_field_podsftp_no_longer_sets_makes_the_service_differ() {
        let ranges = [(keys::LOAD_BALANCER_SOURCE_RANGES, "203.0.113.0/24")];
        let before = desired_service(&target(&ranges), "LoadBalancer").unwrap_or_else(|e| panic!("{e}"));
        let after = desired_service(&target(&[]), "LoadBalancer").unwrap_or_else(|e| panic!("{e}"));
        assert!(before["spec"]["loadBalancerSourceRanges"].is_array() && after["spec"].get("loadBalancerSourceRanges").is_none());
        assert!(!contains(&before, &after), "{before} already counts as {after}");
        assert_eq!(desired_service(&target(&[]), "LoadBalancer").unwrap_or_else(|e| panic!("{e}")), after, "stable");
    }

    /// Issue 11, item 15: the grace period runs from the moment the owner's pods are gone, not from
    /// the Service's creation; a pod coming back restarts it.
    #[test]
    fn services_expire_only_after_a_grace_period_without_pods() {
        let grace = Duration::from_secs(600);
        let start = Instant::now();
        let mut idle = IdleServices::default();
        let at = |s: u64| start + Duration::from_secs(s);
        assert!(idle.observe(at(0), &[("a".into(), true)], grace).is_empty());
        assert!(idle.observe(at(15), &[("a".into(), false)], grace).is_empty(), "pods just gone");
        assert!(idle.observe(at(600), &[("a".into(), false)], grace).is_empty(), "585 s without pods");
        assert!(idle.observe(at(610), &[("a".into(), true)], grace).is_empty(), "back: clock restarts");
        assert!(idle.observe(at(620), &[("a".into(), false)], grace).is_empty());
        assert_eq!(idle.observe(at(1220), &[("a".into(), false)], grace), ["a"]);
        assert!(idle.observe(at(1230), &[], grace).is_empty());
        assert!(idle.since.is_empty(), "deleted Services are forgotten");
    }
}
