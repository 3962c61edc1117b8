//! `podsftp-webhook`: the admission webhook that injects the podsftp sidecar and the controller that
//! keeps one Secret and one Service per topmost owner.

pub mod admission;
pub mod core;
pub mod k8s;
pub mod metrics;
pub mod pki;
pub mod server;
pub mod tls;

/// An error and its sources, outermost first, joined by ": " (each error's own message names only
/// its own context, so nothing is printed twice).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
