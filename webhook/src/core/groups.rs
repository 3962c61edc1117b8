//! Which injected pods stand for the same owner, so the controller reconciles an owner once however
//! many replicas it has, and finds an owner's pods when its Secret or Service changes.
//!
//! A group is the pods of one namespace that agree on everything a reconcile reads from a pod: the
//! owner label, the claimed owner, the controller (a pod without one is its own group) and the
//! revision of the template they were made from. Any pod of a group therefore stands for all of
//! them; the group's first pod is its representative until it goes (then the next by name), so
//! every reconcile of a group is queued for the same pod and the applier, which runs one reconcile
//! per pod at a time, never runs two for one group at once. A pod is (re)announced only when what
//! the reconcile reads changed (its fingerprint), so status updates of 10,000 pods trigger nothing.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{controller_of, keys};

/// Labels the workload controllers put on pods to tell templates apart.
const REVISION_LABELS: [&str; 2] = ["pod-template-hash", "controller-revision-hash"];

/// (namespace, owner label value).
pub type OwnerKey = (String, String);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct GroupKey {
    claim: String,
    revision: String,
}

/// A pod by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

/// The template a pod was made from: its controller's uid (a Job or ReplicaSet is one template;
/// the pod's own uid without a controller) and the revision label of StatefulSets, DaemonSets and
/// ReplicaSets. Owner settings are cached per revision.
pub fn revision(meta: &ObjectMeta) -> String {
    let controller = controller_of(meta).map(|r| r.uid.as_str()).or(meta.uid.as_deref()).unwrap_or_default();
    let labels = meta.labels.as_ref();
    let hash = REVISION_LABELS.iter().find_map(|l| labels.and_then(|labels| labels.get(*l))).map(String::as_str).unwrap_or_default();
    format!("{controller}/{hash}")
}

/// What a reconcile reads from a pod: labels, annotations, owner references, whether it is going.
fn fingerprint(meta: &ObjectMeta) -> u64 {
    let mut hasher = DefaultHasher::new();
    meta.labels.hash(&mut hasher);
    meta.annotations.hash(&mut hasher);
    for reference in meta.owner_references.iter().flatten() {
        (&reference.api_version, &reference.kind, &reference.name, &reference.uid, reference.controller).hash(&mut hasher);
    }
    meta.deletion_timestamp.is_some().hash(&mut hasher);
    hasher.finish()
}

/// The pods of one group.
struct Group {
    /// Pod name → fingerprint.
    pods: BTreeMap<String, u64>,
    representative: String,
}

#[derive(Default)]
pub struct OwnerGroups {
    /// Owner → its groups.
    owners: HashMap<OwnerKey, HashMap<GroupKey, Group>>,
    /// Where each pod is filed, to move or remove it.
    filed: HashMap<PodName, (OwnerKey, GroupKey)>,
}

impl OwnerGroups {
    /// Files a pod from a watch event. Returns the pods whose reconcile has something new to see:
    /// the representative of the pod's group when that group is new or what the reconcile reads
    /// from the pod changed, and what [`OwnerGroups::remove`] returns; nothing for another replica
    /// of a known group and for a status-only update. A terminating pod leaves its group.
    pub fn apply(&mut self, meta: &ObjectMeta) -> Vec<PodName> {
        let (Some(namespace), Some(name)) = (meta.namespace.clone(), meta.name.clone()) else { return Vec::new() };
        let pod = PodName { namespace, name };
        if meta.deletion_timestamp.is_some() {
            return self.remove(&pod);
        }
        let Some(owner_label) = meta.labels.as_ref().and_then(|labels| labels.get(keys::OWNER_LABEL)).cloned() else {
            return Vec::new();
        };
        let claim = meta.annotations.as_ref().and_then(|a| a.get(keys::OWNER_REF_ANNOTATION)).cloned().unwrap_or_default();
        let owner: OwnerKey = (pod.namespace.clone(), owner_label);
        let group = GroupKey { claim, revision: revision(meta) };
        let print = fingerprint(meta);
        let filed_here = self.filed.get(&pod).is_some_and(|(o, g)| *o == owner && *g == group);
        if let Some(members) = self.owners.get_mut(&owner).and_then(|groups| groups.get_mut(&group)).filter(|_| filed_here) {
            // A changed pod stays filed where it is, and its group keeps its representative.
            if members.pods.insert(pod.name.clone(), print) == Some(print) {
                return Vec::new();
            }
            return vec![PodName { namespace: pod.namespace, name: members.representative.clone() }];
        }
        // A replica joining its group brings nothing the representative did not; a new group does.
        let new_group = self.members(&owner, &group).is_none();
        let mut announced = self.remove(&pod);
        let members = self
            .owners
            .entry(owner.clone())
            .or_default()
            .entry(group.clone())
            .or_insert_with(|| Group { pods: BTreeMap::new(), representative: pod.name.clone() });
        members.pods.insert(pod.name.clone(), print);
        let representative = members.representative.clone();
        self.filed.insert(pod.clone(), (owner, group));
        if new_group {
            let representative = PodName { namespace: pod.namespace, name: representative };
            if !announced.contains(&representative) {
                announced.push(representative);
            }
        }
        announced
    }

    fn members(&self, owner: &OwnerKey, group: &GroupKey) -> Option<&Group> {
        self.owners.get(owner)?.get(group)
    }

    /// Forgets a pod (deleted, or terminating). When that empties its group and the owner has
    /// other groups, returns their representatives: each group reconciles with its own template's
    /// settings, so during a rollout the old and the new template's reconciles may have been last in
    /// either order; once the old template's last pod goes, the templates that remain reconcile
    /// again and their settings are what stays.
    pub fn remove(&mut self, pod: &PodName) -> Vec<PodName> {
        let Some((owner, group)) = self.filed.remove(pod) else { return Vec::new() };
        let Some(groups) = self.owners.get_mut(&owner) else { return Vec::new() };
        let mut group_went = false;
        if let Some(members) = groups.get_mut(&group) {
            members.pods.remove(&pod.name);
            match members.pods.keys().next() {
                None => {
                    groups.remove(&group);
                    group_went = true;
                }
                Some(next) if members.representative == pod.name => members.representative = next.clone(),
                Some(_) => {}
            }
        }
        if groups.is_empty() {
            self.owners.remove(&owner);
            return Vec::new();
        }
        if group_went { self.representatives_of(&owner) } else { Vec::new() }
    }

    /// Keeps only the pods `live` says still exist (after the watch listed everything again);
    /// returns what [`OwnerGroups::remove`] returned for them, once each.
    pub fn retain(&mut self, live: impl Fn(&PodName) -> bool) -> Vec<PodName> {
        let gone: Vec<PodName> = self.filed.keys().filter(|pod| !live(pod)).cloned().collect();
        let mut announced: Vec<PodName> = Vec::new();
        for pod in &gone {
            for representative in self.remove(pod) {
                if !announced.contains(&representative) {
                    announced.push(representative);
                }
            }
        }
        // A representative announced before a later removal emptied its own group is gone too.
        announced.retain(|pod| self.filed.contains_key(pod));
        announced
    }

    /// The representative of each group of an owner.
    pub fn representatives_of(&self, owner: &OwnerKey) -> Vec<PodName> {
        let groups = self.owners.get(owner).into_iter().flat_map(|groups| groups.values());
        groups.map(|group| PodName { namespace: owner.0.clone(), name: group.representative.clone() }).collect()
    }

    /// The representative of every group.
    pub fn representatives(&self) -> Vec<PodName> {
        self.owners.keys().flat_map(|owner| self.representatives_of(owner)).collect()
    }

    /// Every owner that has at least one injected pod that is not terminating.
    pub fn owners(&self) -> HashSet<OwnerKey> {
        self.owners.keys().cloned().collect()
    }

    /// Pods filed.
    pub fn len(&self) -> usize {
        self.filed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.filed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, rs: &str, hash: &str, extra_annotation: &str) -> ObjectMeta {
        serde_json::from_value(json!({
            "name": name, "namespace": "shop", "uid": format!("uid-{name}"),
            "labels": {"podsftp.io/owner": "web-0123456789", "pod-template-hash": hash},
            "annotations": {"podsftp.io/owner": "Deployment/web", "note": extra_annotation},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": format!("uid-{rs}"), "controller": true}],
        }))
        .unwrap()
    }

    fn named(name: &str) -> PodName {
        PodName { namespace: "shop".into(), name: name.into() }
    }

    /// Issue 14: 50 replicas of one Deployment are one reconcile, status updates none.
    #[test]
    fn replicas_of_one_template_are_one_group_and_status_updates_announce_nothing() {
        let mut groups = OwnerGroups::default();
        let announced: HashSet<PodName> = (0..50).flat_map(|i| groups.apply(&pod(&format!("web-a-{i:02}"), "web-a", "a", ""))).collect();
        assert_eq!(announced, HashSet::from([named("web-a-00")]), "one representative for all replicas");
        assert_eq!(groups.apply(&pod("web-a-07", "web-a", "a", "")), [], "nothing a reconcile reads changed");
        assert_eq!(groups.apply(&pod("web-a-07", "web-a", "a", "edited")), [named("web-a-00")], "an annotation changed");
        let owner: OwnerKey = ("shop".into(), "web-0123456789".into());
        assert_eq!(groups.representatives_of(&owner), [named("web-a-00")]);
        assert_eq!(groups.len(), 50);
    }

    #[test]
    fn a_new_template_is_a_new_group_and_groups_go_with_their_last_pod() {
        let mut groups = OwnerGroups::default();
        let owner: OwnerKey = ("shop".into(), "web-0123456789".into());
        groups.apply(&pod("web-a-1", "web-a", "a", ""));
        assert_eq!(groups.apply(&pod("web-b-1", "web-b", "b", "")), [named("web-b-1")], "rollout: new ReplicaSet");
        let mut both = groups.representatives_of(&owner);
        both.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!(both, [named("web-a-1"), named("web-b-1")]);
        // The old template's last pod goes: the new one reconciles again, so its settings stay
        // whichever template's reconcile came last during the rollout.
        assert_eq!(groups.remove(&named("web-a-1")), [named("web-b-1")]);
        assert_eq!(groups.representatives(), [named("web-b-1")]);
        let mut terminating = pod("web-b-1", "web-b", "b", "");
        terminating.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()));
        assert_eq!(groups.apply(&terminating), [], "the owner's last group: nothing left to reconcile");
        assert!(groups.is_empty() && groups.owners().is_empty(), "a terminating pod is no longer the owner's");
    }

    /// Issue 14: a ReplicaSet's pods arrive one after another with random names; had the
    /// representative been the first by name, the echo of the owner's new Secret would queue
    /// another pod than the running reconcile's, and the two reconciles of one owner ran at once
    /// (bench/controller at 10,300 pods: 2.9 reconciles and 1.3 Service applies per owner).
    #[test]
    fn a_group_keeps_its_representative_while_replicas_join() {
        let mut groups = OwnerGroups::default();
        let owner: OwnerKey = ("shop".into(), "web-0123456789".into());
        assert_eq!(groups.apply(&pod("web-a-k", "web-a", "a", "")), [named("web-a-k")]);
        assert_eq!(groups.apply(&pod("web-a-b", "web-a", "a", "")), [], "a replica joining announces nothing");
        assert_eq!(groups.representatives_of(&owner), [named("web-a-k")], "the first pod still stands for the group");
        assert_eq!(groups.apply(&pod("web-a-b", "web-a", "a", "edited")), [named("web-a-k")]);
        assert_eq!(groups.remove(&named("web-a-k")), []);
        assert_eq!(groups.representatives_of(&owner), [named("web-a-b")], "the next by name once it goes");
    }

    /// Editing the representative itself must not hand the group to another pod: the edited
    /// pod's reconcile may still run, and a second representative would reconcile beside it.
    #[test]
    fn an_edited_representative_keeps_its_group() {
        let mut groups = OwnerGroups::default();
        let owner: OwnerKey = ("shop".into(), "web-0123456789".into());
        groups.apply(&pod("web-a-b", "web-a", "a", ""));
        groups.apply(&pod("web-a-k", "web-a", "a", ""));
        assert_eq!(groups.apply(&pod("web-a-b", "web-a", "a", "edited")), [named("web-a-b")]);
        assert_eq!(groups.representatives_of(&owner), [named("web-a-b")]);
    }

    #[test]
    fn the_next_pod_by_name_stands_in_for_a_deleted_representative() {
        let mut groups = OwnerGroups::default();
        for name in ["web-a-1", "web-a-2", "web-a-3"] {
            groups.apply(&pod(name, "web-a", "a", ""));
        }
        assert_eq!(groups.retain(|pod| pod.name != "web-a-1"), [], "the group is still there");
        assert_eq!(groups.representatives(), [named("web-a-2")]);
    }

    #[test]
    fn a_pod_without_controller_is_its_own_group() {
        let mut groups = OwnerGroups::default();
        let mut bare = |name: &str| {
            let mut meta = pod(name, "x", "", "");
            meta.owner_references = None;
            meta.labels.as_mut().unwrap().remove("pod-template-hash");
            groups.apply(&meta)
        };
        assert_eq!(bare("debug-1"), [named("debug-1")]);
        assert_eq!(bare("debug-2"), [named("debug-2")], "another uid, another group");
    }

    /// A rollout's old template going, by termination or by a relist that no longer has it, makes
    /// the remaining template reconcile again (the e2e test
    /// `service_follows_template_annotations_and_goes_when_no_injected_pod_remains` kept the old
    /// template's Service port without it).
    #[test]
    fn when_a_template_goes_the_remaining_ones_reconcile_again() {
        let mut groups = OwnerGroups::default();
        groups.apply(&pod("web-a-1", "web-a", "a", ""));
        groups.apply(&pod("web-a-2", "web-a", "a", ""));
        groups.apply(&pod("web-b-1", "web-b", "b", ""));
        let mut terminating = pod("web-a-1", "web-a", "a", "");
        terminating.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()));
        assert_eq!(groups.apply(&terminating), [], "the old template still has a pod");
        terminating.name = Some("web-a-2".into());
        assert_eq!(groups.apply(&terminating), [named("web-b-1")]);

        groups.apply(&pod("web-c-1", "web-c", "c", ""));
        assert_eq!(groups.retain(|pod| pod.name != "web-b-1"), [named("web-c-1")]);
        assert_eq!(groups.retain(|pod| pod.name != "web-c-1"), [], "no template left");
        assert!(groups.is_empty());
    }
}
