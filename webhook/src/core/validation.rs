//! The part of the apiserver's pod validation that the patch can affect, as a pure function: the
//! patch must never turn a valid pod into an invalid one (a denied pod is an outage, admission
//! never denies). Used by the tests and the fuzzer ("valid in, valid out"); the real apiserver
//! checks the same in `tests/e2e`.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::names::{is_dns1123_subdomain, is_label_value};

/// The apiserver's limit on the total size of a pod's annotations (keys and values).
pub const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;
/// Longest port name (an IANA service name).
const PORT_NAME_MAX: usize = 15;

/// What the apiserver would refuse in `pod`, as far as the patch can change it; empty when valid.
pub fn problems(pod: &Pod) -> Vec<String> {
    let mut found = Vec::new();
    let meta = &pod.metadata;
    for (key, value) in meta.labels.iter().flatten() {
        if !is_label_value(value) {
            found.push(format!("label {key:?} has an invalid value"));
        }
    }
    let annotation_bytes: usize = meta.annotations.iter().flatten().map(|(k, v)| k.len() + v.len()).sum();
    if annotation_bytes > ANNOTATIONS_MAX_BYTES {
        found.push(format!("annotations take {annotation_bytes} bytes, over {ANNOTATIONS_MAX_BYTES}"));
    }
    let Some(spec) = pod.spec.as_ref() else { return found };
    if spec.host_pid == Some(true) && spec.share_process_namespace == Some(true) {
        found.push("hostPID and shareProcessNamespace together".into());
    }
    let containers: Vec<&Container> = spec.containers.iter().chain(spec.init_containers.iter().flatten()).collect();
    let mut names = BTreeSet::new();
    for container in &containers {
        if !names.insert(container.name.as_str()) {
            found.push(format!("container name {:?} used twice", container.name));
        }
        found.extend(container_problems(container));
    }
    let mut volumes = BTreeSet::new();
    for volume in spec.volumes.iter().flatten() {
        if !volumes.insert(volume.name.as_str()) {
            found.push(format!("volume name {:?} used twice", volume.name));
        }
        let secret = volume.secret.as_ref().and_then(|s| s.secret_name.as_deref());
        if secret.is_some_and(|name| !is_dns1123_subdomain(name)) {
            found.push(format!("volume {:?} names an invalid Secret", volume.name));
        }
    }
    for container in &containers {
        for mount in container.volume_mounts.iter().flatten() {
            if !volumes.contains(mount.name.as_str()) {
                found.push(format!("container {:?} mounts the unknown volume {:?}", container.name, mount.name));
            }
        }
    }
    if spec.resources.as_ref().is_some_and(|r| r.requests.iter().chain(&r.limits).any(|q| !q.is_empty()))
        && containers.iter().any(|c| c.name == super::keys::SIDECAR_NAME)
    {
        found.push("pod-level resources do not include the sidecar's".into());
    }
    found
}

fn container_problems(container: &Container) -> Vec<String> {
    let mut found = Vec::new();
    let mut port_names = BTreeSet::new();
    for port in container.ports.iter().flatten() {
        if !(1..=65535).contains(&port.container_port) {
            found.push(format!("container {:?} has port {}", container.name, port.container_port));
        }
        if let Some(name) = port.name.as_deref()
            && (name.len() > PORT_NAME_MAX || !port_names.insert(name))
        {
            found.push(format!("container {:?} has an invalid or repeated port name {name:?}", container.name));
        }
    }
    let probes = [&container.readiness_probe, &container.liveness_probe, &container.startup_probe];
    for probe in probes.into_iter().flatten() {
        if let Some(IntOrString::String(name)) = probe_port(probe)
            && !port_names.contains(name.as_str())
        {
            found.push(format!("container {:?} probes the unknown port {name:?}", container.name));
        }
    }
    found
}

fn probe_port(probe: &Probe) -> Option<&IntOrString> {
    probe.http_get.as_ref().map(|h| &h.port).or(probe.tcp_socket.as_ref().map(|t| &t.port))
}
