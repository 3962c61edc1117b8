//! An AdmissionReview body through the admission path (parse, selection, owner fallback, patch):
//! nothing panics, every answer allows the pod, a patch applies and parses back as a Pod, and a
//! pod valid before the patch is valid after it (`core::validation`).
#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use libfuzzer_sys::fuzz_target;
use podsftp_webhook::admission::{Admitter, ClusterView};
use podsftp_webhook::core::settings::Settings;
use podsftp_webhook::core::{Owner, validation};

/// Every namespace is labelled for injection; owner lookups fail, so the nearest owner is used.
struct Cluster;

impl ClusterView for Cluster {
    type Error = std::io::Error;

    async fn namespace_labels(&self, _namespace: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("podsftp.io/injection".into(), "enabled".into())])
    }

    async fn topmost_owner(&self, _namespace: &str, _controller: &OwnerReference) -> Result<Owner, std::io::Error> {
        Err(std::io::Error::from(std::io::ErrorKind::NotFound))
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(review) = serde_json::from_slice::<AdmissionReview<Pod>>(data) else { return };
    let Ok(request): Result<AdmissionRequest<Pod>, _> = review.try_into() else { return };
    let admitter = Admitter { settings: Arc::new(Settings::example()), cluster: Arc::new(Cluster) };
    let (response, _) = runtime().block_on(admitter.admit(&request));
    assert!(response.allowed, "admission never denies");
    let (Some(patch), Some(pod)) = (response.patch, request.object) else { return };
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("the patch is a JSON patch");
    let mut patched = serde_json::to_value(&pod).expect("a Pod serializes");
    json_patch::patch(&mut patched, &patch).expect("the patch applies");
    let patched: Pod = serde_json::from_value(patched).expect("the patched pod is a Pod");
    if validation::problems(&pod).is_empty() {
        assert_eq!(validation::problems(&patched), Vec::<String>::new(), "a valid pod stays valid");
    }
});
