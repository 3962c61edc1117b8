//! `podsftp-webhook`: the admission webhook that injects the podsftp sidecar and the controller that
//! keeps one Secret and one Service per topmost owner.

pub mod core;
