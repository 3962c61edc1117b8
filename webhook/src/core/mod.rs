//! The pure core of the webhook: which pods are injected, what the patch is, and how owners are
//! named. Nothing here talks to the cluster or the network; everything is a function of its inputs,
//! so it is tested on plain manifests.

pub mod bounded;
pub mod claim;
pub mod credentials;
pub mod groups;
pub mod names;
pub mod patch;
pub mod selection;
pub mod settings;
pub mod validation;

/// Labels and annotations of the product contract (PRODUCT.md), and the sidecar's names in the
/// types the Kubernetes API uses.
pub mod keys {
    pub use podsftp_contract::keys::*;
    pub use podsftp_contract::sidecar::{CONTAINER_ENV, CONTAINER_NAME as SIDECAR_NAME, CREDENTIALS_PATH, CREDENTIALS_VOLUME};
    use podsftp_contract::sidecar::{HEALTH_PORT, SFTP_PORT};
    // Lossless (u16 to i32): container ports are i32 in the Kubernetes API.
    pub const SIDECAR_PORT: i32 = SFTP_PORT as i32;
    pub const SIDECAR_HEALTH_PORT: i32 = HEALTH_PORT as i32;
}

/// The topmost owner of a pod as far as admission knows it: what names the Secret, the Service and
/// the owner label.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

impl Owner {
    /// `<Kind>/<name>`, the value of the owner annotation on injected pods.
    pub fn to_annotation(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }

    /// Parses [`Owner::to_annotation`] (the apiVersion is not needed by the reader).
    pub fn kind_and_name_from_annotation(value: &str) -> Option<(&str, &str)> {
        value.split_once('/').filter(|(kind, name)| !kind.is_empty() && !name.is_empty())
    }

    /// What the owner's Secret and Service are named after (`<stem>-sftp`): the name of a
    /// Deployment, `<name>-<kind in lower case>` for every other kind, so owners of different kinds
    /// with the same name (a bare Pod `web` and a StatefulSet `web`) never share a login.
    pub fn resource_stem(&self) -> String {
        if self.kind == "Deployment" { self.name.clone() } else { format!("{}-{}", self.name, self.kind.to_ascii_lowercase()) }
    }
}

/// The controller owner reference of an object (the one with `controller: true`).
pub fn controller_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    meta.owner_references.iter().flatten().find(|r| r.controller == Some(true))
}

/// Characters of the admission request's uid that tell bare `generateName` pods apart.
const GENERATED_TOKEN_LEN: usize = 8;

/// The owner of a pod that has no controller: the pod itself. A pod created with only
/// `generateName` has no name yet at admission, so its owner is named after the `generateName`
/// stem plus a token from the (unique) admission request uid (`debug-` → `debug-1f0c9a2e`): every
/// such pod gets its own login and Service, and none inherits a sibling's.
pub fn bare_pod_owner(pod: &k8s_openapi::api::core::v1::Pod, request_uid: &str) -> Option<Owner> {
    let name = match pod.metadata.name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => name.to_string(),
        None => {
            let stem = generate_name_stem(pod.metadata.generate_name.as_deref()?);
            let token: String =
                request_uid.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).take(GENERATED_TOKEN_LEN).collect();
            if stem.is_empty() || token.len() < GENERATED_TOKEN_LEN {
                return None;
            }
            format!("{stem}-{token}")
        }
    };
    Some(Owner { api_version: "v1".into(), kind: "Pod".into(), name })
}

fn generate_name_stem(generate_name: &str) -> &str {
    generate_name.trim_end_matches(['-', '.'])
}

/// Whether `claimed` can be the name [`bare_pod_owner`] gave this (created) pod at admission: its
/// own name, or its `generateName` stem plus a token.
pub fn is_bare_pod_owner_name(pod: &k8s_openapi::api::core::v1::Pod, claimed: &str) -> bool {
    if pod.metadata.name.as_deref() == Some(claimed) {
        return true;
    }
    let Some(generate_name) = pod.metadata.generate_name.as_deref() else { return false };
    let stem = generate_name_stem(generate_name);
    let generated = pod.metadata.name.as_deref().is_some_and(|name| name.starts_with(generate_name));
    let token = claimed.strip_prefix(stem).and_then(|rest| rest.strip_prefix('-'));
    generated
        && !stem.is_empty()
        && token.is_some_and(|t| t.len() == GENERATED_TOKEN_LEN && t.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
}

/// The nearest owner of a pod: its controller, or itself. Used when the topmost owner cannot be
/// resolved in time.
pub fn nearest_owner(pod: &k8s_openapi::api::core::v1::Pod, request_uid: &str) -> Option<Owner> {
    match controller_of(&pod.metadata) {
        Some(r) => Some(Owner { api_version: r.api_version.clone(), kind: r.kind.clone(), name: r.name.clone() }),
        None => bare_pod_owner(pod, request_uid),
    }
}
