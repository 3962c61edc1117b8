//! Driving the harness's `kubectl` and `helm` (put on PATH by `tests/cluster/up`) from tests:
//! commands that fail with their stderr in the panic message, the chart as a Helm release that
//! is uninstalled when the test ends, throw-away namespaces, and polling until something is true.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root (the e2e crate lives in `tests/e2e`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `charts/podsftp` of this checkout.
pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/podsftp")
}

/// A static release binary built by `images/build` (e.g. `podsftp-webhook`), from the shared
/// target directory of `tests/lib/env.sh`: the same bytes the images carry.
pub fn release_binary(name: &str) -> PathBuf {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("PODSFTP_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/podsftp"));
        cache.join("cargo-target")
    });
    let path = target_dir.join("x86_64-unknown-linux-gnu/release").join(name);
    assert!(path.is_file(), "{} is missing: run `images/build` first", path.display());
    path
}

/// Fails the test (instead of skipping it) when no cluster is configured.
pub fn require_cluster() {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG is not set: run `eval \"$(tests/cluster/up)\"` before the end-to-end tests"
    );
}

/// Runs `program args`, feeding `input` on stdin; Ok(stdout) on success, Err(explanation) else.
pub fn try_run(program: &str, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {program} (is the cluster's bin dir on PATH?): {e}"))?;
    if let Some(text) = input {
        let mut stdin = child.stdin.take().ok_or("stdin not piped")?;
        stdin.write_all(text.as_bytes()).map_err(|e| format!("writing stdin of {program}: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("waiting for {program}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("`{program} {}` failed ({}):\n{}{}", args.join(" "), out.status, stdout, String::from_utf8_lossy(&out.stderr)))
    }
}

/// Runs a command that must succeed; returns its stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    try_run(program, args, None).unwrap_or_else(|e| panic!("{e}"))
}

pub fn kubectl(args: &[&str]) -> String {
    run("kubectl", args)
}

pub fn helm(args: &[&str]) -> String {
    run("helm", args)
}

/// `kubectl ARGS -o json`, parsed.
pub fn kubectl_json(args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let text = kubectl(&all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("kubectl {args:?} gave no JSON ({e}): {text}"))
}

/// `kubectl apply -f -` of a manifest.
pub fn kubectl_apply(manifest: &str) -> String {
    try_run("kubectl", &["apply", "-f", "-"], Some(manifest)).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether `kubectl get KIND NAME [-n NS]` finds the object.
pub fn exists(kind: &str, name: &str, namespace: Option<&str>) -> bool {
    let mut args = vec!["get", kind, name, "--ignore-not-found", "-o", "name"];
    if let Some(ns) = namespace {
        args.extend(["-n", ns]);
    }
    !kubectl(&args).trim().is_empty()
}

/// Polls `check` (every half second, up to `timeout`) until it returns Some; panics naming `what`
/// and the last state otherwise. For waiting on controllers, never for asserting how fast they are.
pub fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(state) if Instant::now() >= deadline => panic!("gave up waiting for {what}: {state}"),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// A namespace created for one test (with labels), deleted when dropped.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub fn create(name: &str, labels: &[(&str, &str)]) -> Self {
        // A leftover of an interrupted run must not make this one fail.
        let _ = try_run("kubectl", &["delete", "namespace", name, "--ignore-not-found", "--wait=true"], None);
        let labels: String = labels.iter().map(|(k, v)| format!("\n    {k}: \"{v}\"")).collect();
        kubectl_apply(&format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:{labels}\n"));
        TestNamespace { name: name.to_string() }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = try_run("kubectl", &["delete", "namespace", &self.name, "--wait=false"], None);
    }
}

/// The chart installed as a Helm release; uninstalled when dropped (also when the test fails).
pub struct Release {
    pub name: String,
    pub namespace: String,
}

impl Release {
    /// `helm install NAME charts/podsftp -n NS` with `--set` values (the namespace must exist).
    pub fn install(name: &str, namespace: &str, set: &[&str]) -> Self {
        let _ = try_run("helm", &["uninstall", name, "-n", namespace, "--wait"], None);
        let chart = chart_dir();
        let mut args = vec!["install", name, chart.to_str().expect("utf-8 path"), "-n", namespace];
        for value in set {
            args.extend(["--set", value]);
        }
        helm(&args);
        Release { name: name.to_string(), namespace: namespace.to_string() }
    }

    /// `helm upgrade` to the chart of this checkout with `--reuse-values` plus `set`.
    pub fn upgrade(&self, set: &[&str]) -> String {
        let chart = chart_dir();
        let mut args = vec!["upgrade", &self.name, chart.to_str().expect("utf-8 path"), "-n", &self.namespace, "--reuse-values"];
        for value in set {
            args.extend(["--set", value]);
        }
        helm(&args)
    }

    /// `helm uninstall --wait`; the release is then gone (dropping it does nothing more).
    pub fn uninstall(self) -> String {
        let out = helm(&["uninstall", &self.name, "-n", &self.namespace, "--wait"]);
        std::mem::forget(self);
        out
    }

    /// The name chart objects get (`<release>-podsftp`, or the release name if it holds "podsftp").
    pub fn fullname(&self) -> String {
        if self.name.contains("podsftp") { self.name.clone() } else { format!("{}-podsftp", self.name) }
    }

    /// Name of the cluster-scoped objects (webhook configuration, ClusterRole and binding).
    pub fn cluster_name(&self) -> String {
        format!("{}-{}", self.fullname(), self.namespace)
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = try_run("helm", &["uninstall", &self.name, "-n", &self.namespace, "--wait"], None);
    }
}
