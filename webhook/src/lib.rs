//! `podsftp-webhook`: the admission webhook that injects the podsftp sidecar and the controller that
//! keeps one Secret and one Service per topmost owner.

pub mod admission;
pub mod core;
pub mod k8s;
pub mod metrics;
pub mod pki;
pub mod server;
pub mod tls;
