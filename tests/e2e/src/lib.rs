//! Shared helpers for the end-to-end tests against the local cluster (`tests/cluster/up`).

// --- chart engineer: kubectl/helm runners, Helm releases, test namespaces, polling ---
pub mod helm;

// --- webhook engineer: the webhook run on the host and registered with a `url` client config ---
pub mod webhook;

/// A kube client from `KUBECONFIG` (fails the test when no cluster is configured).
pub async fn client() -> kube::Client {
    helm::require_cluster();
    kube::Client::try_default().await.expect("kube client from KUBECONFIG")
}
