//! Everything that talks to the Kubernetes API: the cached cluster view used by admission and its
//! owner watch caches, the per-owner controller, the auto-TLS certificate keeper and the report of
//! missed injections.

pub mod auto_tls;
pub mod cluster;
pub mod controller;
pub mod missed;
pub mod owner_stores;
