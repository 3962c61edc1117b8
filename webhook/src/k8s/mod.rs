//! Everything that talks to the Kubernetes API: the cached cluster view used by admission and its
//! owner watch caches, the per-owner controller, the auto-TLS certificate keeper and the report of
//! missed injections; and how their watch caches keep only what they read.

pub mod auto_tls;
pub mod cluster;
pub mod controller;
pub mod missed;
pub mod owner_stores;

use futures::Stream;
use kube::Resource;
use kube::runtime::{WatchStreamExt, watcher};

/// Watch events without `metadata.managedFields`, the apiserver's record of which client wrote which
/// field: nothing podsftp decides reads it, and on a pod it is larger than the rest of the metadata
/// (each of the controller-manager, the scheduler, the kubelet and podsftp's own patch adds an
/// entry), so a cache of 10,000 pods would mostly hold it.
pub fn without_managed_fields<K: Resource>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> {
    events.modify(|object| object.meta_mut().managed_fields = None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Pod;
    use kube::core::PartialObjectMeta;
    use serde_json::json;

    #[tokio::test]
    async fn cached_objects_keep_everything_but_managed_fields() {
        let pod: PartialObjectMeta<Pod> = serde_json::from_value(json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"podsftp.io/owner": "web"},
              "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}}}]}
        }))
        .unwrap();
        let events = futures::stream::iter([Ok(watcher::Event::InitApply(pod.clone())), Ok(watcher::Event::Apply(pod))]);
        let seen: Vec<_> = without_managed_fields(events).collect().await;
        assert_eq!(seen.len(), 2);
        for event in seen {
            let (watcher::Event::InitApply(pod) | watcher::Event::Apply(pod)) = event.unwrap() else { panic!("another event") };
            assert_eq!(pod.metadata.managed_fields, None);
            assert_eq!(pod.metadata.name.as_deref(), Some("web-1"));
            assert_eq!(pod.metadata.labels.unwrap()["podsftp.io/owner"], "web");
        }
    }
}
