//! The per-owner controller: for every injected pod whose claim (`podsftp.io/owner` label and
//! annotation) its verified ownerReferences back, the owner gets a Secret `<stem>-sftp` (created
//! once, gaps filled, never overwritten) and a Service `<stem>-sftp` (server-side apply, so every
//! replica may reconcile). It only ever changes objects it created itself (label
//! `app.kubernetes.io/managed-by: podsftp` and a controller reference to that very owner); anything
//! else of the same name is reported as an Event and left alone. Service and login settings come
//! from the owner's pod template, not from the pod. Services of owners that have had no injected
//! pod for a grace period are removed by a periodic sweep; the Secret stays so the login survives
//! re-enabling.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

use super::cluster::{KubeCluster, ResolveError};
use crate::core::claim::{self, VerifiedOwner};
use crate::core::credentials::{LoginRequest, missing_entries};
use crate::core::{controller_of, keys, names};
use crate::metrics::Metrics;

pub const FIELD_MANAGER: &str = "podsftp";
const RESYNC: Duration = Duration::from_secs(600);
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// Retry after a conflict with an object podsftp did not create (it may be a garbage-collected
/// leftover of a deleted owner of the same name).
const CONFLICT_RETRY: Duration = Duration::from_secs(60);
const SERVICE_TYPES: [&str; 3] = ["LoadBalancer", "NodePort", "ClusterIP"];
/// Kubernetes drops Events whose note is longer than this many bytes.
const EVENT_NOTE_MAX: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("owner not resolved: {0}")]
    Owner(#[from] ResolveError),
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

/// The pod template annotations of an owner object (`spec.template`, or a CronJob's
/// `spec.jobTemplate.spec.template`); `None` for an owner without a pod template.
fn template_annotations(owner: &Value) -> Option<BTreeMap<String, String>> {
    let spec = &owner["spec"];
    let template = [&spec["template"], &spec["jobTemplate"]["spec"]["template"]].into_iter().find(|t| t.is_object())?;
    Some(serde_json::from_value(template["metadata"]["annotations"].clone()).unwrap_or_default())
}

async fn owner_target(pod: &Pod, context: &Context) -> Result<Result<OwnerTarget, claim::ClaimError>, ReconcileError> {
    let namespace = pod.namespace().unwrap_or_default();
    let chain = match controller_of(&pod.metadata) {
        Some(controller) => match context.cluster.chain(&namespace, controller).await {
            Ok(chain) => chain,
            // A reference to an object that is not what it claims will not heal by retrying.
            Err(forged @ (ResolveError::UidMismatch { .. } | ResolveError::NamespaceMismatch { .. } | ResolveError::TooLong)) => {
                return Ok(Err(claim::ClaimError::OwnersUnverified(forged.to_string())));
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
        let (object, _) = context.cluster.fetch(&namespace, &owner_reference(&verified)).await?;
        // An owner kind without a pod template (a custom resource) leaves the pod's annotations.
        template_annotations(&object.data).unwrap_or_else(|| pod.annotations().clone())
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

async fn reconcile(pod: Arc<Pod>, context: Arc<Context>) -> Result<Action, ReconcileError> {
    let result = reconcile_pod(&pod, &context).await;
    context.metrics.reconcile(result.is_ok());
    result
}

async fn reconcile_pod(pod: &Pod, context: &Context) -> Result<Action, ReconcileError> {
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
        let secret = ensure_secret(&target, context).await?;
        let service = apply_service(&target, context).await?;
        Ok::<_, ReconcileError>([
            ("Secret", names::secret_name(&target.stem), secret),
            ("Service", names::service_name(&target.stem), service),
        ])
    }
    .await;
    let results = match outcome {
        Ok(results) => results,
        Err(error) => {
            publish(context, &target.object(), None, EventType::Warning, "Failed", &format!("podsftp: {error}")).await;
            return Err(error);
        }
    };
    let mut next = Action::requeue(RESYNC);
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

/// Creates the Secret when missing (another replica may win the race: 409 → fill gaps of the
/// winner's), otherwise adds only missing keys to a Secret podsftp created for this owner.
async fn ensure_secret(target: &OwnerTarget, context: &Context) -> Result<Outcome, ReconcileError> {
    let api: Api<Secret> = Api::namespaced(context.client.clone(), &target.namespace);
    let name = names::secret_name(&target.stem);
    let login = LoginRequest {
        username: target.settings.get(keys::USERNAME).map(String::as_str).filter(|u| !u.is_empty()).unwrap_or(&target.verified.owner.name),
        extra_authorized_keys: target.settings.get(keys::AUTHORIZED_KEYS).map(String::as_str),
    };
    let existing = match api.get_opt(&name).await? {
        Some(existing) => existing,
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
                Ok(_) => return Ok(Outcome::Created),
                Err(kube::Error::Api(status)) if status.code == 409 => api.get(&name).await?,
                Err(error) => return Err(error.into()),
            }
        }
    };
    if !created_for(&existing.metadata, &target.verified.uid) {
        return Ok(Outcome::NotOurs);
    }
    let missing = missing_entries(&decoded(&existing), &login)?;
    if !missing.is_empty() {
        let data = secret_data(missing);
        // The resourceVersion makes this a compare-and-swap: a concurrent writer's keys are never lost.
        let patch = json!({"metadata": {"resourceVersion": existing.resource_version()}, "data": data});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    }
    Ok(Outcome::Kept)
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
fn desired_service(target: &OwnerTarget, default_type: &str) -> Result<Value, String> {
    Ok(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": names::service_name(&target.stem), "namespace": target.namespace,
            "labels": managed_labels(&target.owner_label),
            "ownerReferences": [target.reference()],
        },
        "spec": service_spec(&target.settings, default_type, &target.owner_label)?,
    }))
}

/// The Service's spec from the owner's annotations (settings) and the chart's default type.
fn service_spec(settings: &BTreeMap<String, String>, default_type: &str, owner_label: &str) -> Result<Value, String> {
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
        let shown: String = bad.chars().take(64).collect();
        return Err(format!("{}: {shown:?} is not a CIDR such as 203.0.113.0/24", keys::LOAD_BALANCER_SOURCE_RANGES));
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

/// Server-side applies the Service when it is missing or podsftp's own for this owner. The apply
/// is not forced: should a same-named Service appear between the check and the apply, its fields
/// owned by someone else make the apply fail instead of taking it over.
async fn apply_service(target: &OwnerTarget, context: &Context) -> Result<Outcome, ReconcileError> {
    let api: Api<Service> = Api::namespaced(context.client.clone(), &target.namespace);
    let name = names::service_name(&target.stem);
    let existing = api.get_opt(&name).await?;
    if existing.as_ref().is_some_and(|s| !created_for(&s.metadata, &target.verified.uid)) {
        return Ok(Outcome::NotOurs);
    }
    let desired = match desired_service(target, &context.default_service_type) {
        Ok(desired) => desired,
        Err(why) => return Ok(Outcome::Refused(why)),
    };
    match api.patch(&name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&desired)).await {
        Ok(_) if existing.is_none() => Ok(Outcome::Created),
        Ok(_) => Ok(Outcome::Kept),
        // Invalid (422) or conflicting (409) with what the apiserver has: the apiserver's own words.
        Err(kube::Error::Api(status)) if matches!(status.code, 409 | 422) => Ok(Outcome::Refused(status.message.clone())),
        Err(error) => Err(error.into()),
    }
}

fn error_policy(_pod: Arc<Pod>, error: &ReconcileError, _context: Arc<Context>) -> Action {
    tracing::warn!(%error, "reconcile failed");
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

/// Deletes podsftp's Services whose owner has had no injected pod for the grace period.
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
    let selector = format!("{}={},{}", keys::MANAGED_BY, keys::MANAGED_BY_VALUE, keys::OWNER_LABEL);
    let mut idle = IdleServices::default();
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let list = match services.list(&ListParams::default().labels(&selector)).await {
            Ok(list) => list,
            Err(error) => {
                tracing::warn!(%error, "cannot list podsftp Services");
                continue;
            }
        };
        // (namespace, owner label) of every injected pod, once per sweep.
        let owners_with_pods: HashSet<(String, String)> =
            pods.state().iter().filter_map(|pod| Some((pod.namespace()?, pod.labels().get(keys::OWNER_LABEL)?.clone()))).collect();
        let ours: Vec<&Service> = list.items.iter().filter(|s| controller_of(&s.metadata).is_some()).collect();
        let observed: Vec<(String, bool)> = ours
            .iter()
            .filter_map(|service| {
                let key = (service.namespace()?, service.labels().get(keys::OWNER_LABEL)?.clone());
                Some((service.uid()?, owners_with_pods.contains(&key)))
            })
            .collect();
        let expired = idle.observe(Instant::now(), &observed, context.service_grace);
        for service in ours.into_iter().filter(|s| s.uid().is_some_and(|uid| expired.contains(&uid))) {
            let (namespace, name) = (service.namespace().unwrap_or_default(), service.name_any());
            let api: Api<Service> = Api::namespaced(context.client.clone(), &namespace);
            // The uid precondition: a Service recreated under the same name meanwhile is not touched.
            let preconditions = Preconditions { uid: service.uid(), resource_version: None };
            match api.delete(&name, &DeleteParams { preconditions: Some(preconditions), ..Default::default() }).await {
                Ok(_) => tracing::info!(namespace, name, "removed Service of an owner without injected pods"),
                Err(error) => tracing::warn!(namespace, name, %error, "cannot remove Service"),
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
