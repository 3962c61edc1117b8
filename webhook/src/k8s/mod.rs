//! Everything that talks to the Kubernetes API: the cached cluster view used by admission, the
//! per-owner controller and the auto-TLS certificate keeper.

pub mod auto_tls;
pub mod cluster;
pub mod controller;
