//! The patch applied to realistic pod manifests: the result must deserialize as a valid Pod and
//! carry exactly what PRODUCT.md promises.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use podsftp_webhook::core::patch::{PatchError, mutate};
use podsftp_webhook::core::selection::{Selection, select};
use podsftp_webhook::core::settings::{Settings, SidecarPlacement};
use podsftp_webhook::core::{Owner, bare_pod_owner, names, nearest_owner, validation};
use serde_json::{Value, json};

fn enabled_namespace() -> BTreeMap<String, String> {
    BTreeMap::from([("podsftp.io/injection".to_string(), "enabled".to_string())])
}

fn owner(kind: &str, name: &str) -> Owner {
    Owner { api_version: "apps/v1".into(), kind: kind.into(), name: name.into() }
}

/// Selects, patches and applies; returns the patched pod.
fn inject(manifest: Value, namespace_labels: &BTreeMap<String, String>, owner: &Owner, settings: &Settings) -> Pod {
    let pod: Pod = serde_json::from_value(manifest.clone()).expect("manifest is a pod");
    assert_eq!(validation::problems(&pod), Vec::<String>::new(), "the manifest is valid");
    assert_eq!(select("shop", namespace_labels, &pod.metadata, &settings.excluded), Selection::Inject);
    let mutation = mutate(&pod, namespace_labels, owner, settings).expect("patch");
    let mut patched = manifest;
    json_patch::patch(&mut patched, &mutation.patch).expect("patch applies");
    let patched: Pod = serde_json::from_value(patched).expect("patched pod is a Pod");
    assert_eq!(validation::problems(&patched), Vec::<String>::new(), "the patched pod is valid");
    patched
}

fn sidecar(pod: &Pod) -> &Container {
    let spec = pod.spec.as_ref().unwrap();
    let all: Vec<&Container> = spec.containers.iter().chain(spec.init_containers.iter().flatten()).collect();
    let sidecars: Vec<_> = all.into_iter().filter(|c| c.name == "podsftp").collect();
    assert_eq!(sidecars.len(), 1, "exactly one sidecar");
    sidecars[0]
}

fn env(container: &Container, name: &str) -> Option<String> {
    container.env.iter().flatten().find(|e| e.name == name).and_then(|e| e.value.clone())
}

fn deployment_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "web-7d9f8b6c5d-", "namespace": "shop",
            "labels": {"app": "web", "pod-template-hash": "7d9f8b6c5d"},
            "annotations": {"kubectl.kubernetes.io/default-container": "app", "podsftp.io/root": "/srv", "podsftp.io/read-only": "true"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8b6c5d",
                                 "uid": "0b6f3c1e-1111-2222-3333-444455556666", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "containers": [
                {"name": "log-shipper", "image": "fluent-bit:3", "volumeMounts": [{"name": "logs", "mountPath": "/logs"}]},
                {"name": "app", "image": "nginx:1.27", "ports": [{"containerPort": 80}],
                 "env": [{"name": "MODE", "value": "prod"}],
                 "volumeMounts": [{"name": "logs", "mountPath": "/var/log/nginx"}, {"name": "data", "mountPath": "/srv"}]}
            ],
            "volumes": [{"name": "logs", "emptyDir": {}}, {"name": "data", "persistentVolumeClaim": {"claimName": "web-data"}}],
            "shareProcessNamespace": false,
            "securityContext": {"fsGroup": 2000}
        }
    })
}

#[test]
fn deployment_pod_with_several_containers_and_volumes() {
    let settings = Settings::example();
    let web = owner("Deployment", "web");
    let pod = inject(deployment_pod(), &enabled_namespace(), &web, &settings);
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.share_process_namespace, Some(true));
    assert_eq!(spec.containers.len(), 2, "app containers unchanged in number");
    let init = spec.init_containers.as_ref().expect("native sidecar is an init container");
    assert_eq!(init[0].name, "podsftp");
    assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));

    let volumes = spec.volumes.as_ref().unwrap();
    assert_eq!(volumes.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["logs", "data", "podsftp-credentials"]);
    let secret = volumes[2].secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("web-sftp"));
    assert_eq!((secret.default_mode, secret.optional), (Some(0o444), Some(true)));

    let app = &spec.containers[1];
    assert_eq!(env(app, "PODSFTP_CONTAINER").as_deref(), Some("app"), "default-container annotation picks the app");
    assert_eq!(env(app, "MODE").as_deref(), Some("prod"));
    assert_eq!(env(&spec.containers[0], "PODSFTP_CONTAINER"), None);

    let sidecar = sidecar(&pod);
    let args = sidecar.args.clone().unwrap();
    assert_eq!(
        args,
        [
            "serve",
            "--listen=0.0.0.0:2222",
            "--health-listen=0.0.0.0:2223",
            "--credentials=/etc/podsftp/credentials",
            "--container=app",
            "--root=/srv",
            "--read-only",
            "--log-format=json"
        ]
    );
    assert_eq!(env(sidecar, "PODSFTP_SIDECAR").as_deref(), Some("1"));
    let mount = &sidecar.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (mount.name.as_str(), mount.mount_path.as_str(), mount.read_only),
        ("podsftp-credentials", "/etc/podsftp/credentials", Some(true))
    );
    assert!(sidecar.readiness_probe.is_some() && sidecar.liveness_probe.is_some());
    assert_eq!(sidecar.ports.as_ref().unwrap()[0].name.as_deref(), Some("podsftp-sftp"));

    // The app runs with the image's user: "switch" case (root, default capabilities).
    let context = sidecar.security_context.as_ref().unwrap();
    assert_eq!(context.run_as_user, Some(0));
    assert_eq!(context.capabilities, None);
    assert_eq!(context.allow_privilege_escalation, Some(false));
    assert_eq!(context.read_only_root_filesystem, Some(true));
    assert_eq!(context.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");

    let labels = pod.metadata.labels.as_ref().unwrap();
    assert_eq!(labels.get("podsftp.io/owner"), Some(&names::owner_label(&web)));
    assert_eq!(labels.get("app").map(String::as_str), Some("web"));
    let annotations = pod.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations.get("podsftp.io/status").map(String::as_str), Some("injected"));
    assert_eq!(annotations.get("podsftp.io/owner").map(String::as_str), Some("Deployment/web"));
    for (key, value) in [("prometheus.io/scrape", "true"), ("prometheus.io/port", "2223"), ("prometheus.io/path", "/metrics")] {
        assert_eq!(annotations.get(key).map(String::as_str), Some(value), "{key}");
    }
}

/// Scrape annotations announce one endpoint per pod: an app that announces its own keeps them,
/// and the sidecar is not announced (a PodMonitor still finds it by its port name).
#[test]
fn an_apps_own_scrape_annotations_are_kept() {
    let mut manifest = deployment_pod();
    manifest["metadata"]["annotations"]["prometheus.io/port"] = json!("8080");
    let pod = inject(manifest, &enabled_namespace(), &owner("Deployment", "web"), &Settings::example());
    let annotations = pod.metadata.annotations.unwrap();
    assert_eq!(annotations.get("prometheus.io/port").map(String::as_str), Some("8080"));
    assert_eq!(annotations.get("prometheus.io/scrape"), None);
    assert_eq!(annotations.get("prometheus.io/path"), None);
    assert_eq!(annotations.get("podsftp.io/status").map(String::as_str), Some("injected"));
}

#[test]
fn statefulset_pod_with_run_as_user_gets_a_mirrored_non_root_sidecar() {
    let manifest = json!({
        "metadata": {"name": "db-0", "labels": {"sftp": "enabled"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "u1", "controller": true}]},
        "spec": {
            "securityContext": {"runAsUser": 999, "runAsGroup": 999, "runAsNonRoot": true, "fsGroup": 999},
            "containers": [{"name": "postgres", "image": "postgres:17",
                            "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}}}]
        }
    });
    let pod = inject(manifest, &BTreeMap::new(), &owner("StatefulSet", "db"), &Settings::example());
    let context = sidecar(&pod).security_context.clone().unwrap();
    assert_eq!((context.run_as_user, context.run_as_group, context.run_as_non_root), (Some(999), Some(999), Some(true)));
    let capabilities = context.capabilities.unwrap();
    assert_eq!(capabilities.drop, Some(vec!["ALL".to_string()]));
    assert_eq!(capabilities.add, Some(vec!["NET_BIND_SERVICE".to_string()]));
    assert_eq!(pod.spec.unwrap().volumes.unwrap().len(), 1, "volumes list created");
}

#[test]
fn container_level_user_overrides_pod_level_and_root_means_switch() {
    let manifest = json!({
        "metadata": {"name": "tool", "labels": {"sftp": "enabled"}},
        "spec": {"securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
                 "containers": [{"name": "tool", "image": "busybox", "securityContext": {"runAsUser": 0}}]}
    });
    let pod = inject(manifest, &BTreeMap::new(), &owner("Pod", "tool"), &Settings::example());
    let context = sidecar(&pod).security_context.clone().unwrap();
    assert_eq!((context.run_as_user, context.run_as_non_root), (Some(0), Some(false)));
}

#[test]
fn cronjob_pod_in_classic_mode_gets_a_regular_container() {
    let manifest = json!({
        "metadata": {"generateName": "backup-29012345-", "labels": {"job-name": "backup-29012345"},
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "backup-29012345", "uid": "u2", "controller": true}]},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "backup", "image": "restic:0.17"}]}
    });
    let settings = Settings { placement: SidecarPlacement::Classic, ..Settings::example() };
    let cronjob = Owner { api_version: "batch/v1".into(), kind: "CronJob".into(), name: "backup".into() };
    let pod = inject(manifest, &enabled_namespace(), &cronjob, &settings);
    let spec = pod.spec.unwrap();
    assert_eq!(spec.containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["backup", "podsftp"]);
    assert!(spec.init_containers.is_none());
    assert_eq!(spec.volumes.unwrap()[0].secret.as_ref().unwrap().secret_name.as_deref(), Some("backup-cronjob-sftp"));
}

#[test]
fn pod_with_init_containers_keeps_them_first() {
    let manifest = json!({
        "metadata": {"name": "app", "annotations": {"podsftp.io/container": "main"}},
        "spec": {"initContainers": [{"name": "migrate", "image": "app:1", "args": ["migrate"]}],
                 "containers": [{"name": "main", "image": "app:1", "env": [{"name": "PODSFTP_CONTAINER", "value": "stale"}]}]}
    });
    let pod = inject(manifest, &enabled_namespace(), &owner("Pod", "app"), &Settings::example());
    let spec = pod.spec.unwrap();
    let init: Vec<_> = spec.init_containers.unwrap().into_iter().map(|c| c.name).collect();
    assert_eq!(init, ["migrate", "podsftp"]);
    assert_eq!(spec.containers[0].env.as_ref().unwrap().len(), 1, "stale value replaced, not duplicated");
    assert_eq!(env(&spec.containers[0], "PODSFTP_CONTAINER").as_deref(), Some("main"));
}

#[test]
fn pod_with_generate_name_only_is_its_own_owner_named_after_the_stem() {
    let manifest = json!({
        "metadata": {"generateName": "debug-", "labels": {"sftp": "enabled"}},
        "spec": {"containers": [{"name": "debug", "image": "busybox"}]}
    });
    let parsed: Pod = serde_json::from_value(manifest.clone()).unwrap();
    let owner = bare_pod_owner(&parsed, "1f0c9a2e-77aa-4b8e-9d3c-000000000001").expect("owner from generateName");
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Pod", "debug-1f0c9a2e"));
    assert_eq!(nearest_owner(&parsed, "1f0c9a2e-77aa-4b8e-9d3c-000000000001"), Some(owner.clone()));
    let sibling = bare_pod_owner(&parsed, "5b7d0e11-0000-4b8e-9d3c-000000000002").expect("owner of a sibling");
    assert_ne!(names::secret_name(&owner.resource_stem()), names::secret_name(&sibling.resource_stem()), "siblings never share a login");
    let pod = inject(manifest, &BTreeMap::new(), &owner, &Settings::example());
    assert_eq!(pod.metadata.annotations.unwrap().get("podsftp.io/owner").map(String::as_str), Some("Pod/debug-1f0c9a2e"));
    assert_eq!(pod.spec.unwrap().volumes.unwrap()[0].secret.as_ref().unwrap().secret_name.as_deref(), Some("debug-1f0c9a2e-pod-sftp"));
}

#[test]
fn already_injected_pod_gets_no_second_sidecar() {
    let settings = Settings::example();
    let web = owner("Deployment", "web");
    let once = inject(deployment_pod(), &enabled_namespace(), &web, &settings);
    assert_eq!(select("shop", &enabled_namespace(), &once.metadata, &settings.excluded), Selection::Skip("already injected"));
    // Even without the status annotation, a pod carrying the sidecar is not patched twice.
    let mut stripped = once.clone();
    stripped.metadata.annotations = None;
    assert_eq!(mutate(&stripped, &enabled_namespace(), &web, &settings).unwrap_err(), PatchError::NameTaken("podsftp"));
}

#[test]
fn kube_system_and_opted_out_pods_are_untouched() {
    let settings = Settings::example();
    let pod: Pod = serde_json::from_value(deployment_pod()).unwrap();
    assert_eq!(select("kube-system", &enabled_namespace(), &pod.metadata, &settings.excluded), Selection::Skip("system namespace"));
    let mut opted_out = pod.clone();
    opted_out.metadata.labels.get_or_insert_default().insert("sftp".into(), "disabled".into());
    assert_eq!(select("shop", &enabled_namespace(), &opted_out.metadata, &settings.excluded), Selection::Skip("pod opted out"));
}

#[test]
fn pods_whose_patch_would_be_invalid_are_refused_with_a_reason() {
    let settings = Settings::example();
    let web = owner("Deployment", "web");
    let case = |spec: Value, annotations: Value| -> PatchError {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "x", "annotations": annotations}, "spec": spec})).unwrap();
        mutate(&pod, &enabled_namespace(), &web, &settings).unwrap_err()
    };
    let one = json!([{"name": "app", "image": "a"}]);
    assert_eq!(case(json!({"hostPID": true, "containers": one}), json!({})), PatchError::HostPid);
    assert_eq!(case(json!({"containers": one}), json!({"podsftp.io/container": "nope"})), PatchError::ContainerNotFound("nope".into()));
    assert_eq!(
        case(json!({"containers": [{"name": "app", "image": "a", "ports": [{"containerPort": 2222}]}]}), json!({})),
        PatchError::PortInUse(2222)
    );
    assert_eq!(case(json!({"containers": []}), json!({})), PatchError::NoContainers);

    let restricted = BTreeMap::from([("pod-security.kubernetes.io/enforce".to_string(), "restricted".to_string())]);
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "x"}, "spec": {"containers": one}})).unwrap();
    assert_eq!(mutate(&pod, &restricted, &web, &settings).unwrap_err(), PatchError::RestrictedNeedsIds);
}

/// Why `mutate` leaves the pod with `spec` and `annotations` alone.
fn refusal(spec: Value, annotations: Value) -> PatchError {
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "x", "annotations": annotations}, "spec": spec})).unwrap();
    mutate(&pod, &enabled_namespace(), &owner("Deployment", "web"), &Settings::example()).unwrap_err()
}

fn one_container() -> Value {
    json!([{"name": "app", "image": "a"}])
}

/// Issue 11, item 10: the sidecar of a hostNetwork pod would listen on the node's ports.
#[test]
fn host_network_pods_are_left_alone() {
    assert_eq!(refusal(json!({"hostNetwork": true, "containers": one_container()}), json!({})), PatchError::HostNetwork);
}

/// Issue 11, item 4: with pod-level resources (Kubernetes 1.34) the sidecar's requests made the
/// containers' sum exceed the pod's, and the apiserver denied the pod.
#[test]
fn pods_with_pod_level_resources_are_left_alone() {
    for resources in [json!({"requests": {"cpu": "100m"}}), json!({"limits": {"memory": "64Mi"}})] {
        let spec = json!({"resources": resources, "containers": one_container()});
        assert_eq!(refusal(spec, json!({})), PatchError::PodLevelResources);
    }
}

/// Issue 11, item 7: a root that is no absolute path (e.g. `--read-only`, passed as its own
/// argument, made the sidecar exit on a usage error: CrashLoopBackOff), contains NUL or is too long
/// leaves the pod alone with an error naming the annotation; a valid root is one `--root=` argument.
#[test]
fn invalid_root_annotation_leaves_the_pod_alone_naming_the_annotation() {
    let too_long = format!("/{}", "a".repeat(1024));
    for root in ["--read-only", "-x", "srv", "/srv\0/x", too_long.as_str()] {
        let error = refusal(json!({"containers": one_container()}), json!({"podsftp.io/root": root}));
        assert!(matches!(error, PatchError::InvalidAnnotation { annotation: "podsftp.io/root", .. }), "{root:?}: {error:?}");
        assert!(error.to_string().contains("podsftp.io/root"), "{error}");
    }
    let longest = format!("/{}", "a".repeat(1023));
    let manifest = json!({"metadata": {"name": "x", "annotations": {"podsftp.io/root": longest}}, "spec": {"containers": one_container()}});
    let pod = inject(manifest, &enabled_namespace(), &owner("Pod", "x"), &Settings::example());
    let args = sidecar(&pod).args.clone().unwrap();
    assert!(args.contains(&format!("--root={longest}")), "{args:?}");
}

/// Issue 11, item 8: only `true` and `false` are accepted; anything else was served read-write
/// without a word, now it is read-only with a warning.
#[test]
fn read_only_accepts_exactly_true_and_false_and_reads_anything_else_as_true() {
    for (value, read_only, warned) in [
        ("true", true, false),
        ("false", false, false),
        ("yes", true, true),
        ("1", true, true),
        ("on", true, true),
        (" true", true, true),
        ("TRUE", true, true),
        ("", true, true),
    ] {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "x", "annotations": {"podsftp.io/read-only": value}},
                                                       "spec": {"containers": one_container()}}))
        .unwrap();
        let mutation = mutate(&pod, &enabled_namespace(), &owner("Pod", "x"), &Settings::example()).unwrap();
        let mut patched = serde_json::to_value(&pod).unwrap();
        json_patch::patch(&mut patched, &mutation.patch).unwrap();
        let patched: Pod = serde_json::from_value(patched).unwrap();
        let args = sidecar(&patched).args.clone().unwrap();
        assert_eq!(args.contains(&"--read-only".to_string()), read_only, "{value:?}: {args:?}");
        let warning = mutation.warnings.iter().any(|w| w.contains("podsftp.io/read-only") && w.contains("read-only"));
        assert_eq!(warning, warned, "{value:?}: {:?}", mutation.warnings);
    }
}

/// Issue 11, item 9: `PODSFTP_CONTAINER` defined twice in the served container (the last one wins)
/// or in another container kept the sidecar from finding its target; it is now defined exactly
/// once, in the served container.
#[test]
fn container_variable_is_defined_exactly_once_in_the_served_container() {
    let var = |value: &str| json!({"name": "PODSFTP_CONTAINER", "value": value});
    let manifest = json!({
        "metadata": {"name": "x", "annotations": {"podsftp.io/container": "app"}},
        "spec": {
            "initContainers": [{"name": "init", "image": "a", "env": [var("app")]}],
            "containers": [
                {"name": "other", "image": "a", "env": [{"name": "A", "value": "1"}, var("app"), var("app")]},
                {"name": "app", "image": "a", "env": [var("stale"), {"name": "B", "value": "2"}, var("other")]}
            ]
        }
    });
    let pod: Pod = serde_json::from_value(manifest.clone()).unwrap();
    let mutation = mutate(&pod, &enabled_namespace(), &owner("Pod", "x"), &Settings::example()).unwrap();
    assert!(mutation.warnings.iter().any(|w| w.contains("\"other\"")), "{:?}", mutation.warnings);
    assert!(mutation.warnings.iter().any(|w| w.contains("\"init\"")), "{:?}", mutation.warnings);
    let patched = inject(manifest, &enabled_namespace(), &owner("Pod", "x"), &Settings::example());
    let spec = patched.spec.unwrap();
    let definitions: Vec<(String, Option<String>)> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten().filter(|c| c.name != "podsftp"))
        .flat_map(|c| c.env.iter().flatten().filter(|e| e.name == "PODSFTP_CONTAINER").map(|e| (c.name.clone(), e.value.clone())))
        .collect();
    assert_eq!(definitions, [("app".to_string(), Some("app".to_string()))]);
    assert_eq!(env(&spec.containers[0], "A").as_deref(), Some("1"));
    assert_eq!(env(&spec.containers[1], "B").as_deref(), Some("2"));
}

/// Issue 11, item 6: an app port named `sftp` was what the Service's named target port resolved
/// to; the sidecar's ports now have names of their own (and the Service targets the number).
#[test]
fn app_port_named_sftp_does_not_collide_with_the_sidecar_ports() {
    let manifest = json!({"metadata": {"name": "x"},
                          "spec": {"containers": [{"name": "app", "image": "a", "ports": [{"name": "sftp", "containerPort": 22}]}]}});
    let pod = inject(manifest, &enabled_namespace(), &owner("Pod", "x"), &Settings::example());
    let sidecar = sidecar(&pod);
    let names: Vec<_> = sidecar.ports.iter().flatten().filter_map(|p| p.name.as_deref()).collect();
    assert_eq!(names, ["podsftp-sftp", "podsftp-health"]);
    let probe_port = &sidecar.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().port;
    assert_eq!(probe_port, &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("podsftp-health".into()));
}

/// The patch adds up to five annotations; a pod whose annotations are already near the apiserver's
/// 256 KiB limit would be denied after it, so it is left alone.
#[test]
fn pods_with_annotations_near_the_limit_are_left_alone() {
    let filler = "x".repeat(validation::ANNOTATIONS_MAX_BYTES - 50);
    let error = refusal(json!({"containers": one_container()}), json!({"filler": filler}));
    assert!(matches!(error, PatchError::AnnotationsFull(_)), "{error:?}");
}
