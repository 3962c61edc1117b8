//! What an injected pod claims about its owner — the `podsftp.io/owner` label and annotation the
//! webhook wrote at admission — checked against the owner chain the controller verified through the
//! API. Anyone who can create a pod can also write these, so the controller acts on a claim only
//! when the pod's real ownerReferences back it, and names everything after the verified owner.

use k8s_openapi::api::core::v1::Pod;

use super::{Owner, is_bare_pod_owner_name, keys, names};

/// An owner whose existence and uid the controller checked against the apiserver (or the pod
/// itself, for a bare pod).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedOwner {
    /// The owner as the webhook named it (what the Secret, Service and label are named after).
    pub owner: Owner,
    /// The object's own name: the owner's name, except for a bare pod created with only
    /// `generateName` (named after its stem and a token, see [`super::bare_pod_owner`]).
    pub object_name: String,
    pub uid: String,
    pub namespaced: bool,
}

/// Why a pod's podsftp state is not acted on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimError {
    #[error("the pod was not injected by podsftp (annotation {status} is not {injected})", status = keys::STATUS, injected = keys::STATUS_INJECTED)]
    NotInjected,
    #[error("the annotation {ann} is missing or not <Kind>/<name>", ann = keys::OWNER_REF_ANNOTATION)]
    NoOwnerAnnotation,
    #[error("the annotation {ann} names {claimed}, which is not among the pod's owners", ann = keys::OWNER_REF_ANNOTATION)]
    NotAnOwner { claimed: String },
    #[error("the label {label} does not belong to {claimed}", label = keys::OWNER_LABEL)]
    LabelMismatch { claimed: String },
    #[error("the pod has no uid yet")]
    NoUid,
    #[error("its owner references do not check out: {0}")]
    OwnersUnverified(String),
}

/// The owner a pod's claim names, if `chain` (the pod's controller and its controllers, verified,
/// nearest first; empty for a pod without controller) backs it. The webhook writes the topmost
/// owner, or the nearest one when resolving took too long, so any owner of the chain is accepted.
pub fn verify(pod: &Pod, chain: &[VerifiedOwner]) -> Result<VerifiedOwner, ClaimError> {
    let annotations = pod.metadata.annotations.as_ref();
    let status = annotations.and_then(|a| a.get(keys::STATUS));
    if status.map(String::as_str) != Some(keys::STATUS_INJECTED) {
        return Err(ClaimError::NotInjected);
    }
    let claimed = annotations.and_then(|a| a.get(keys::OWNER_REF_ANNOTATION)).ok_or(ClaimError::NoOwnerAnnotation)?;
    let (kind, name) = Owner::kind_and_name_from_annotation(claimed).ok_or(ClaimError::NoOwnerAnnotation)?;
    let not_an_owner = || ClaimError::NotAnOwner { claimed: claimed.clone() };
    let verified = if chain.is_empty() {
        if kind != "Pod" || !is_bare_pod_owner_name(pod, name) {
            return Err(not_an_owner());
        }
        let uid = pod.metadata.uid.clone().filter(|u| !u.is_empty()).ok_or(ClaimError::NoUid)?;
        let object_name = pod.metadata.name.clone().unwrap_or_default();
        VerifiedOwner {
            owner: Owner { api_version: "v1".into(), kind: "Pod".into(), name: name.into() },
            object_name,
            uid,
            namespaced: true,
        }
    } else {
        chain.iter().find(|link| link.owner.kind == kind && link.owner.name == name).cloned().ok_or_else(not_an_owner)?
    };
    let label = pod.metadata.labels.as_ref().and_then(|l| l.get(keys::OWNER_LABEL));
    if label != Some(&names::owner_label(&verified.owner)) {
        return Err(ClaimError::LabelMismatch { claimed: claimed.clone() });
    }
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn owner(kind: &str, name: &str) -> Owner {
        Owner { api_version: "apps/v1".into(), kind: kind.into(), name: name.into() }
    }

    fn link(kind: &str, name: &str, uid: &str) -> VerifiedOwner {
        VerifiedOwner { owner: owner(kind, name), object_name: name.into(), uid: uid.into(), namespaced: true }
    }

    fn pod(name: &str, generate_name: Option<&str>, claimed: &Owner) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "generateName": generate_name, "uid": "pod-uid",
                         "labels": {"podsftp.io/owner": names::owner_label(claimed)},
                         "annotations": {"podsftp.io/status": "injected", "podsftp.io/owner": claimed.to_annotation()}},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]}
        }))
        .unwrap()
    }

    #[test]
    fn topmost_or_nearest_owner_of_the_verified_chain_is_accepted() {
        let chain = [link("ReplicaSet", "web-5d8f", "rs"), link("Deployment", "web", "d")];
        let top = pod("web-5d8f-abcde", Some("web-5d8f-"), &owner("Deployment", "web"));
        assert_eq!(verify(&top, &chain).unwrap().uid, "d");
        let nearest = pod("web-5d8f-abcde", Some("web-5d8f-"), &owner("ReplicaSet", "web-5d8f"));
        assert_eq!(verify(&nearest, &chain).unwrap().uid, "rs");
    }

    /// Issue 11, item 13: a pod naming an owner it does not have is refused.
    #[test]
    fn an_owner_outside_the_chain_is_refused() {
        let chain = [link("ReplicaSet", "evil", "rs")];
        let forged = pod("evil-abcde", None, &owner("Deployment", "victim2"));
        assert_eq!(verify(&forged, &chain), Err(ClaimError::NotAnOwner { claimed: "Deployment/victim2".into() }));
    }

    /// Issue 11, item 13: a bare pod can only be its own owner.
    #[test]
    fn a_bare_pod_claiming_another_name_is_refused() {
        let pod_owner = Owner { api_version: "v1".into(), ..owner("Pod", "victim2") };
        let forged = pod("attacker", None, &pod_owner);
        assert!(matches!(verify(&forged, &[]), Err(ClaimError::NotAnOwner { .. })));
        let own = pod("victim2", None, &pod_owner);
        assert_eq!(verify(&own, &[]).unwrap().uid, "pod-uid");
    }

    #[test]
    fn a_generated_bare_pod_is_its_stem_and_token_only() {
        let generated = Owner { api_version: "v1".into(), ..owner("Pod", "debug-1f0c9a2e") };
        let verified = verify(&pod("debug-x7k2p", Some("debug-"), &generated), &[]).unwrap();
        assert_eq!((verified.owner.name.as_str(), verified.object_name.as_str()), ("debug-1f0c9a2e", "debug-x7k2p"));
        let other_stem = Owner { api_version: "v1".into(), ..owner("Pod", "web-1f0c9a2e") };
        assert!(verify(&pod("debug-x7k2p", Some("debug-"), &other_stem), &[]).is_err());
        let bad_token = Owner { api_version: "v1".into(), ..owner("Pod", "debug-web") };
        assert!(verify(&pod("debug-x7k2p", Some("debug-"), &bad_token), &[]).is_err());
    }

    #[test]
    fn a_label_of_another_owner_or_no_status_is_refused() {
        let chain = [link("Deployment", "web", "d")];
        let mut relabelled = pod("web-abcde", None, &owner("Deployment", "web"));
        relabelled.metadata.labels.as_mut().unwrap().insert(keys::OWNER_LABEL.into(), names::owner_label(&owner("Deployment", "db")));
        assert!(matches!(verify(&relabelled, &chain), Err(ClaimError::LabelMismatch { .. })));
        let mut unpatched = pod("web-abcde", None, &owner("Deployment", "web"));
        unpatched.metadata.annotations.as_mut().unwrap().remove(keys::STATUS);
        assert_eq!(verify(&unpatched, &chain), Err(ClaimError::NotInjected));
    }
}
