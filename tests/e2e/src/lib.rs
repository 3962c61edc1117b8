//! Shared helpers for the end-to-end tests against the local cluster (`tests/cluster/up`).

// --- chart engineer: kubectl/helm runners, Helm releases, test namespaces, polling ---
pub mod helm;
