//! Running `podsftp-webhook` on the host against the test cluster: a generated CA and serving
//! certificate for 127.0.0.1, the release binary started with `serve`, and a
//! MutatingWebhookConfiguration with a `url` client config pointing at it, scoped to the test's
//! own namespaces so concurrent configurations never touch each other's pods.
//!
//! Both guards clean up when dropped (process killed, configuration deleted), also on failure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use podsftp_test_support::{free_address, free_port, http_get};
use podsftp_webhook::pki::{CA_VALIDITY, SERVING_VALIDITY, issue_serving, new_ca};
use serde_json::{Value, json};

use crate::helm::{eventually, kubectl_apply, release_binary, try_run};

/// The value of a counter line `name{labels} value` (or `name value`) in Prometheus text.
pub fn metric_value(metrics_text: &str, series: &str) -> f64 {
    metrics_text.lines().find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

/// How the host-run webhook gets its certificate.
pub enum Tls {
    /// A CA and a 127.0.0.1 certificate generated for this run, passed as files.
    GeneratedFiles,
    /// Auto mode: `--tls-secret NAME` in `--namespace`, with `--tls-extra-san 127.0.0.1` and
    /// `--webhook-configuration` (the webhook then patches the CA bundle itself).
    Auto { secret: String, webhook_configuration: String },
}

/// `podsftp-webhook serve` running on the host; killed when dropped.
pub struct HostWebhook {
    child: Child,
    pub listen: SocketAddr,
    pub metrics: SocketAddr,
    /// PEM CA that signed the serving certificate (`None` in auto mode: read it from the Secret).
    pub ca_pem: Option<String>,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl HostWebhook {
    /// Starts the release binary with `--namespace own_namespace`, `tls` and `extra_args`, and
    /// waits until `/readyz` answers 200 (certificate loaded, caches synced).
    pub fn start(own_namespace: &str, tls: Tls, extra_args: &[&str]) -> HostWebhook {
        Self::start_at(free_address(), own_namespace, tls, extra_args)
    }

    /// Like [`HostWebhook::start`] on a given HTTPS address (when the registration must exist
    /// before the process starts, as in auto TLS mode).
    pub fn start_at(listen: SocketAddr, own_namespace: &str, tls: Tls, extra_args: &[&str]) -> HostWebhook {
        let dir = tempfile::tempdir().expect("temp dir");
        let metrics = free_address();
        let mut args: Vec<String> =
            ["serve", "--listen", &listen.to_string(), "--metrics-listen", &metrics.to_string()].map(String::from).to_vec();
        args.extend(["--namespace".into(), own_namespace.into(), "--log-format".into(), "text".into()]);
        let ca_pem = match tls {
            Tls::GeneratedFiles => {
                let ca = new_ca("podsftp e2e CA", CA_VALIDITY).expect("CA");
                let serving = issue_serving(&ca, &["127.0.0.1".to_string()], SERVING_VALIDITY).expect("serving cert");
                let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
                std::fs::write(&cert, serving.cert_pem).expect("write cert");
                std::fs::write(&key, serving.key_pem).expect("write key");
                args.extend(["--tls-cert".into(), cert.display().to_string(), "--tls-key".into(), key.display().to_string()]);
                Some(ca.cert_pem)
            }
            Tls::Auto { secret, webhook_configuration } => {
                args.extend(["--tls-secret".into(), secret, "--tls-extra-san".into(), "127.0.0.1".into()]);
                args.extend(["--webhook-configuration".into(), webhook_configuration]);
                None
            }
        };
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let log = dir.path().join("webhook.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(release_binary("podsftp-webhook"))
            .args(&args)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("start podsftp-webhook");
        let mut webhook = HostWebhook { child, listen, metrics, ca_pem, log, _dir: dir };
        eventually("the host webhook to be ready", Duration::from_secs(60), || {
            if let Ok(Some(status)) = webhook.child.try_wait() {
                panic!("podsftp-webhook exited with {status}:\n{}", webhook.log_text());
            }
            match http_get(metrics, "/readyz").map(|(status, _)| status) {
                Some(200) => Ok(()),
                other => Err(format!("/readyz gave {other:?}; log:\n{}", webhook.log_text())),
            }
        });
        webhook
    }

    /// The `/mutate` URL for a `url` client config.
    pub fn url(&self) -> String {
        format!("https://{}/mutate", self.listen)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Current `/metrics` text.
    pub fn metrics_text(&self) -> String {
        http_get(self.metrics, "/metrics").map(|(_, body)| body).unwrap_or_default()
    }

    /// Stops the process (the registration stays, pointing at a closed port).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HostWebhook {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A MutatingWebhookConfiguration shaped like the chart's (one webhook for labelled namespaces,
/// one for labelled pods), limited to `namespaces`; deleted when dropped.
pub struct Registration {
    pub name: String,
}

impl Registration {
    /// `ca_pem` empty leaves `caBundle` out (auto mode fills it in).
    pub fn create(name: &str, url: &str, ca_pem: Option<&str>, failure_policy: &str, namespaces: &[&str]) -> Registration {
        let _ = try_run("kubectl", &["delete", "mutatingwebhookconfiguration", name, "--ignore-not-found"], None);
        let mut client_config = json!({"url": url});
        if let Some(ca) = ca_pem {
            client_config["caBundle"] = json!(base64(ca.as_bytes()));
        }
        let scope = json!({"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces});
        let webhook = |suffix: &str, namespace_rule: Value, object_selector: Value| {
            json!({
                "name": format!("{suffix}.podsftp.io"),
                "clientConfig": client_config,
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}],
                "namespaceSelector": {"matchExpressions": [scope, namespace_rule]},
                "objectSelector": object_selector,
                "failurePolicy": failure_policy,
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "matchPolicy": "Equivalent",
                "timeoutSeconds": 5,
            })
        };
        let configuration = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [
                webhook("namespace",
                    json!({"key": "podsftp.io/injection", "operator": "In", "values": ["enabled"]}),
                    json!({"matchExpressions": [{"key": "sftp", "operator": "NotIn", "values": ["disabled"]}]})),
                webhook("pod",
                    json!({"key": "podsftp.io/injection", "operator": "NotIn", "values": ["enabled", "disabled"]}),
                    json!({"matchLabels": {"sftp": "enabled"}})),
            ],
        });
        kubectl_apply(&configuration.to_string());
        Registration { name: name.to_string() }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = try_run("kubectl", &["delete", "mutatingwebhookconfiguration", &self.name, "--ignore-not-found"], None);
    }
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Whether a pod (as JSON from the API) carries the podsftp patch.
pub fn is_injected(pod: &Value) -> bool {
    pod["metadata"]["annotations"]["podsftp.io/status"] == "injected"
}
