//! The JSON patch that injects the sidecar: a pure function of the pod, its namespace's labels, its
//! topmost owner and the settings (PRODUCT.md "What the patch does", contracts "Sidecar container").
//!
//! The patch is built from explicit operations (not a diff of re-serialized pods) so fields that
//! this version of the Kubernetes types does not know survive untouched.

use std::collections::BTreeMap;

use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, HTTPGetAction, Pod, Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use podsftp_contract::ServeArgs;
use podsftp_contract::scrape;
use podsftp_contract::sidecar::{HEALTH_PORT_NAME, SFTP_PORT_NAME, SIDECAR_ENV};
use serde_json::{Value, json};

use super::settings::{Settings, SidecarPlacement};
use super::{Owner, keys};
use super::{names, validation};

/// Why a selected pod is nonetheless left unchanged (it is allowed, never denied).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("the pod has no containers")]
    NoContainers,
    #[error("container {0:?} named by the annotation {ann} does not exist", ann = keys::CONTAINER)]
    ContainerNotFound(String),
    #[error("the pod uses hostPID, which cannot be combined with shareProcessNamespace")]
    HostPid,
    #[error("the pod uses hostNetwork: the sidecar would listen on the node's ports")]
    HostNetwork,
    #[error(
        "the pod sets pod-level spec.resources, which the sidecar's requests would exceed; \
         set the resources per container to get the sidecar"
    )]
    PodLevelResources,
    #[error("the pod's annotations leave no room for podsftp's ({0} bytes would exceed the apiserver's limit)")]
    AnnotationsFull(usize),
    #[error("annotation {annotation} {problem}")]
    InvalidAnnotation { annotation: &'static str, problem: &'static str },
    #[error("the pod is a Windows pod")]
    Windows,
    #[error("port {0} is already used by a container of the pod")]
    PortInUse(i32),
    #[error("the pod already has a container or volume named {0:?}")]
    NameTaken(&'static str),
    #[error(
        "the namespace enforces Pod Security 'restricted', which needs the served container's \
         runAsUser and runAsGroup (non-zero) in the pod spec"
    )]
    RestrictedNeedsIds,
}

/// The patch and the warnings to return with it.
#[derive(Debug)]
pub struct Mutation {
    pub patch: Patch,
    pub warnings: Vec<String>,
}

/// How the sidecar gets the right to open `/proc/<pid>/root` of the served container.
#[derive(Debug, PartialEq, Eq)]
enum Privilege {
    /// Same uid and gid as the app, capabilities dropped except those the app adds.
    Mirror { uid: i64, gid: i64, add: Vec<String> },
    /// Root with the runtime's default capabilities; the sidecar switches per session.
    Switch,
}

pub fn mutate(pod: &Pod, namespace_labels: &BTreeMap<String, String>, owner: &Owner, settings: &Settings) -> Result<Mutation, PatchError> {
    let spec = pod.spec.as_ref().filter(|s| !s.containers.is_empty()).ok_or(PatchError::NoContainers)?;
    if spec.host_pid == Some(true) {
        return Err(PatchError::HostPid);
    }
    if spec.host_network == Some(true) {
        return Err(PatchError::HostNetwork);
    }
    let pod_resources = spec.resources.as_ref();
    if pod_resources.is_some_and(|r| r.requests.iter().chain(&r.limits).any(|quantities| !quantities.is_empty())) {
        return Err(PatchError::PodLevelResources);
    }
    if spec.os.as_ref().is_some_and(|os| os.name == "windows") {
        return Err(PatchError::Windows);
    }
    let init_containers = spec.init_containers.as_deref().unwrap_or_default();
    let all_containers = || spec.containers.iter().chain(init_containers);
    if all_containers().any(|c| c.name == keys::SIDECAR_NAME) {
        return Err(PatchError::NameTaken(keys::SIDECAR_NAME));
    }
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    if volumes.iter().any(|v| v.name == keys::CREDENTIALS_VOLUME) {
        return Err(PatchError::NameTaken(keys::CREDENTIALS_VOLUME));
    }
    for port in [keys::SIDECAR_PORT, keys::SIDECAR_HEALTH_PORT] {
        let used = all_containers().flat_map(|c| c.ports.iter().flatten()).any(|p| p.container_port == port);
        if used {
            return Err(PatchError::PortInUse(port));
        }
    }

    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let (served_index, served) = served_container(&spec.containers, &annotations)?;
    let root = served_root(&annotations)?;
    let privilege = privilege(pod, served);
    let enforce = namespace_labels.get(keys::POD_SECURITY_ENFORCE).map(String::as_str);
    if privilege == Privilege::Switch && enforce == Some("restricted") {
        return Err(PatchError::RestrictedNeedsIds);
    }
    let mut warnings = Vec::new();
    let read_only = read_only(&annotations, &mut warnings);
    let ptrace = settings.allow_ptrace && matches!(enforce, None | Some("privileged"));
    if settings.allow_ptrace && !ptrace {
        warnings.push("podsftp: SYS_PTRACE not added: the namespace enforces a Pod Security level below privileged".into());
    }

    let served_dir = ServedDir { container: &served.name, root, read_only };
    let sidecar = sidecar_container(settings, &served_dir, &privilege, ptrace);
    let mut ops = vec![add("/spec/shareProcessNamespace", json!(true))];
    ops.extend(container_env_ops(spec, served_index, &mut warnings));
    let (list, sidecar) = match settings.placement {
        SidecarPlacement::Native => ("initContainers", Container { restart_policy: Some("Always".into()), ..sidecar }),
        SidecarPlacement::Classic => ("containers", sidecar),
    };
    let list_present = match settings.placement {
        SidecarPlacement::Native => spec.init_containers.is_some(),
        SidecarPlacement::Classic => true,
    };
    ops.push(append(&format!("/spec/{list}"), list_present, to_value(&sidecar)));
    ops.push(append("/spec/volumes", spec.volumes.is_some(), to_value(&credentials_volume(owner))));
    let owner_label = names::owner_label(owner);
    ops.extend(set_map_entries("/metadata/labels", pod.metadata.labels.is_some(), &[(keys::OWNER_LABEL, &owner_label)]));
    let owner_annotation = owner.to_annotation();
    let health_port = keys::SIDECAR_HEALTH_PORT.to_string();
    let mut ours = vec![(keys::STATUS, keys::STATUS_INJECTED), (keys::OWNER_REF_ANNOTATION, owner_annotation.as_str())];
    // A pod's scrape annotations announce one endpoint; the app's own, if it has any, win.
    if !annotations.keys().any(|key| key.starts_with(scrape::PREFIX)) {
        ours.extend([(scrape::SCRAPE, "true"), (scrape::PORT, health_port.as_str()), (scrape::PATH, scrape::METRICS_PATH)]);
    }
    let existing: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    let annotation_bytes = existing + ours.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    if annotation_bytes > validation::ANNOTATIONS_MAX_BYTES {
        return Err(PatchError::AnnotationsFull(annotation_bytes));
    }
    ops.extend(set_map_entries("/metadata/annotations", pod.metadata.annotations.is_some(), &ours));
    Ok(Mutation { patch: Patch(ops), warnings })
}

fn served_container<'a>(containers: &'a [Container], annotations: &BTreeMap<String, String>) -> Result<(usize, &'a Container), PatchError> {
    let explicit = annotations.get(keys::CONTAINER);
    let wanted = explicit.or_else(|| annotations.get(keys::DEFAULT_CONTAINER));
    match wanted {
        Some(name) => match containers.iter().enumerate().find(|(_, c)| &c.name == name) {
            Some(found) => Ok(found),
            // kubectl's default-container annotation may be stale; only our own one is binding.
            None if explicit.is_none() => Ok((0, &containers[0])),
            None => Err(PatchError::ContainerNotFound(name.clone())),
        },
        None => Ok((0, &containers[0])),
    }
}

/// Largest accepted `podsftp.io/root`, in bytes.
pub const MAX_ROOT_BYTES: usize = 1024;

/// The `podsftp.io/root` annotation: an absolute path without NUL of at most [`MAX_ROOT_BYTES`];
/// absent or empty means the container's `/`.
fn served_root(annotations: &BTreeMap<String, String>) -> Result<Option<&str>, PatchError> {
    let Some(root) = annotations.get(keys::ROOT).filter(|r| !r.is_empty()) else { return Ok(None) };
    let invalid = |problem| Err(PatchError::InvalidAnnotation { annotation: keys::ROOT, problem });
    if !root.starts_with('/') {
        invalid("must be an absolute path")
    } else if root.contains('\0') {
        invalid("must not contain a NUL character")
    } else if root.len() > MAX_ROOT_BYTES {
        invalid("must not be longer than 1024 bytes")
    } else {
        Ok(Some(root))
    }
}

/// The `podsftp.io/read-only` annotation: exactly `true` or `false`; anything else is read as
/// `true` (the safe reading) with a warning.
fn read_only(annotations: &BTreeMap<String, String>, warnings: &mut Vec<String>) -> bool {
    match annotations.get(keys::READ_ONLY).map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            warnings
                .push(format!("podsftp: annotation {} is neither \"true\" nor \"false\"; the files are served read-only", keys::READ_ONLY));
            true
        }
    }
}

fn privilege(pod: &Pod, served: &Container) -> Privilege {
    let pod_context = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let container_context = served.security_context.as_ref();
    let uid = container_context.and_then(|c| c.run_as_user).or(pod_context.and_then(|p| p.run_as_user));
    let gid = container_context.and_then(|c| c.run_as_group).or(pod_context.and_then(|p| p.run_as_group));
    match (uid, gid) {
        (Some(uid), Some(gid)) if uid != 0 => {
            let add = container_context.and_then(|c| c.capabilities.as_ref()).and_then(|c| c.add.clone()).unwrap_or_default();
            Privilege::Mirror { uid, gid, add }
        }
        _ => Privilege::Switch,
    }
}

fn security_context(privilege: &Privilege, ptrace: bool) -> SecurityContext {
    let ptrace_cap = ptrace.then(|| "SYS_PTRACE".to_string());
    let base = SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
        ..Default::default()
    };
    match privilege {
        Privilege::Mirror { uid, gid, add } => SecurityContext {
            run_as_user: Some(*uid),
            run_as_group: Some(*gid),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: Some(add.iter().cloned().chain(ptrace_cap).collect()).filter(|a: &Vec<_>| !a.is_empty()),
            }),
            ..base
        },
        Privilege::Switch => SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            capabilities: ptrace_cap.map(|cap| Capabilities { add: Some(vec![cap]), drop: None }),
            ..base
        },
    }
}

/// What the sidecar serves, from the annotations (validated).
struct ServedDir<'a> {
    container: &'a str,
    root: Option<&'a str>,
    read_only: bool,
}

fn sidecar_container(settings: &Settings, served: &ServedDir, privilege: &Privilege, ptrace: bool) -> Container {
    let log_format = &settings.sidecar_log_format;
    let args = ServeArgs { container: served.container, root: served.root, read_only: served.read_only, log_format }.to_args();
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction { path: Some(path.into()), port: IntOrString::String(HEALTH_PORT_NAME.into()), ..Default::default() }),
        period_seconds: Some(10),
        ..Default::default()
    };
    let quantities = |cpu: &str, memory: &str| {
        Some(BTreeMap::from([("cpu".to_string(), Quantity(cpu.into())), ("memory".to_string(), Quantity(memory.into()))]))
    };
    let resources = &settings.resources;
    Container {
        name: keys::SIDECAR_NAME.into(),
        image: Some(settings.sidecar_image.clone()),
        image_pull_policy: Some(settings.sidecar_image_pull_policy.clone()),
        args: Some(args),
        ports: Some(vec![
            ContainerPort {
                name: Some(SFTP_PORT_NAME.into()),
                container_port: keys::SIDECAR_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some(HEALTH_PORT_NAME.into()),
                container_port: keys::SIDECAR_HEALTH_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        env: Some(vec![EnvVar { name: SIDECAR_ENV.into(), value: Some("1".into()), ..Default::default() }]),
        readiness_probe: Some(probe("/readyz")),
        liveness_probe: Some(probe("/healthz")),
        resources: Some(ResourceRequirements {
            requests: quantities(&resources.cpu_request, &resources.memory_request),
            limits: quantities(&resources.cpu_limit, &resources.memory_limit),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: keys::CREDENTIALS_VOLUME.into(),
            mount_path: keys::CREDENTIALS_PATH.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        security_context: Some(security_context(privilege, ptrace)),
        ..Default::default()
    }
}

fn credentials_volume(owner: &Owner) -> Volume {
    Volume {
        name: keys::CREDENTIALS_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(names::secret_name(&owner.resource_stem())),
            default_mode: Some(0o444),
            optional: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Makes `PODSFTP_CONTAINER=<name>` defined exactly once in the pod, in the served container: the
/// sidecar finds its target by that variable, and Kubernetes uses the last of duplicate
/// definitions. Stale definitions there and any definition in another container are removed.
fn container_env_ops(spec: &k8s_openapi::api::core::v1::PodSpec, served_index: usize, warnings: &mut Vec<String>) -> Vec<PatchOperation> {
    let positions = |container: &Container| -> Vec<usize> {
        container.env.iter().flatten().enumerate().filter(|(_, e)| e.name == keys::CONTAINER_ENV).map(|(i, _)| i).collect()
    };
    // Removals from the highest index down, so earlier removals do not shift later ones.
    let remove_all = |base: &str, positions: &[usize]| -> Vec<PatchOperation> {
        positions.iter().rev().map(|i| PatchOperation::Remove(RemoveOperation { path: pointer(&format!("{base}/{i}")) })).collect()
    };
    let mut ops = Vec::new();
    let lists = [("containers", spec.containers.as_slice()), ("initContainers", spec.init_containers.as_deref().unwrap_or_default())];
    for (list, containers) in lists {
        for (index, container) in containers.iter().enumerate() {
            let base = format!("/spec/{list}/{index}/env");
            let found = positions(container);
            if list == "containers" && index == served_index {
                let var = to_value(&EnvVar { name: keys::CONTAINER_ENV.into(), value: Some(container.name.clone()), ..Default::default() });
                match found.split_first() {
                    Some((first, stale)) => {
                        ops.extend(remove_all(&base, stale));
                        ops.push(PatchOperation::Replace(ReplaceOperation { path: pointer(&format!("{base}/{first}")), value: var }));
                    }
                    None => ops.push(append(&base, container.env.is_some(), var)),
                }
            } else if !found.is_empty() {
                warnings.push(format!(
                    "podsftp: {} removed from container {:?}: the variable names the served container",
                    keys::CONTAINER_ENV,
                    container.name
                ));
                ops.extend(remove_all(&base, &found));
            }
        }
    }
    ops
}

fn to_value<T: serde::Serialize>(value: &T) -> Value {
    // Serializing k8s-openapi types into a Value cannot fail (no non-string map keys).
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn pointer(path: &str) -> json_patch::jsonptr::PointerBuf {
    json_patch::jsonptr::PointerBuf::parse(path).unwrap_or_default()
}

fn add(path: &str, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path: pointer(path), value })
}

/// Appends to the array at `path`, creating it when it is absent.
fn append(path: &str, present: bool, value: Value) -> PatchOperation {
    if present { add(&format!("{path}/-"), value) } else { add(path, Value::Array(vec![value])) }
}

/// Sets entries of the string map at `path`, creating the map when it is absent.
fn set_map_entries(path: &str, present: bool, entries: &[(&str, &str)]) -> Vec<PatchOperation> {
    if !present {
        let map: serde_json::Map<String, Value> = entries.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        return vec![add(path, Value::Object(map))];
    }
    entries.iter().map(|(key, value)| add(&format!("{path}/{}", key.replace('~', "~0").replace('/', "~1")), json!(value))).collect()
}
