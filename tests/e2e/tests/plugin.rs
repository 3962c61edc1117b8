//! `kubectl sftp` (the `kubectl-sftp` release binary) against a real workload on the harness's
//! node: `login` output that works with `sshpass sftp` and names the host key the server really
//! shows, `connect` with the host key pinned in batch mode, errors for a missing and a
//! non-injected workload, `rotate --password` without a pod restart, and `status` listing a pod
//! created while the webhook was scaled to zero, with its fix.
//!
//! One test: every step uses the workload (and the webhook) the previous ones set up.

use std::time::Duration;

use podsftp_e2e::helm::{Release, TestNamespace, eventually, kubectl, kubectl_apply, kubectl_json, release_binary, require_cluster, run, try_run};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(180);
const APPS: &str = "plugin-apps";

/// `kubectl-sftp ARGS` with `input` on stdin: Ok(stdout) or Err(status, stdout and stderr).
fn plugin(args: &[&str], input: Option<&str>) -> Result<String, String> {
    let binary = release_binary("kubectl-sftp");
    try_run(binary.to_str().expect("utf-8 path"), args, input)
}

/// A Deployment of the project's test app (files in /srv/data), uid 1000, with pod labels.
fn deployment(name: &str, pod_labels: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  namespace: {APPS}\nspec:\n  replicas: 1\n\
         \x20 selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}{pod_labels}}}\n\
         \x20   spec:\n      securityContext: {{runAsUser: 1000, runAsGroup: 1000}}\n\
         \x20     containers:\n        - name: app\n          image: localhost/podsftp/test-legacy:0.1.0\n          imagePullPolicy: IfNotPresent\n"
    )
}

fn pods_of(app: &str) -> Vec<Value> {
    kubectl_json(&["get", "pods", "-n", APPS, "-l", &format!("app={app}")])["items"].as_array().cloned().unwrap_or_default()
}

fn injected(pod: &Value) -> bool {
    pod["metadata"]["annotations"]["podsftp.io/status"] == "injected"
}

/// (uid, restart counts) of every pod of `app`: unchanged means nothing was restarted.
fn pod_identities(app: &str) -> Vec<(String, Vec<u64>)> {
    pods_of(app)
        .iter()
        .map(|p| {
            let statuses = p["status"]["containerStatuses"].as_array().into_iter().chain(p["status"]["initContainerStatuses"].as_array());
            let restarts = statuses.flatten().filter_map(|s| s["restartCount"].as_u64()).collect();
            (p["metadata"]["uid"].as_str().unwrap_or_default().to_string(), restarts)
        })
        .collect()
}

/// `sshpass -p PASSWORD` + the `sftp` command line `login` printed (+ batch options), `batch` on stdin.
fn sftp_with_password(sftp_command: &str, password: &str, batch: &str) -> Result<String, String> {
    let words: Vec<&str> = sftp_command.split_whitespace().collect();
    let (program, rest) = words.split_first().ok_or("empty sftp command")?;
    let (destination, options) = rest.split_last().ok_or("sftp command without destination")?;
    let mut args = vec!["-p", password, program];
    args.extend(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]);
    args.extend(["-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password", "-o", "NumberOfPasswordPrompts=1"]);
    args.extend(["-o", "BatchMode=no", "-o", "ConnectTimeout=10"]);
    args.extend(options);
    args.extend(["-b", "-", destination]);
    try_run("sshpass", &args, Some(batch))
}

#[test]
fn kubectl_sftp_logs_in_connects_rotates_and_reports_missed_pods() {
    require_cluster();
    let work = tempfile::tempdir().expect("work dir");

    let system = TestNamespace::create("plugin-system", &[]);
    let _ = try_run("kubectl", &["delete", "namespace", APPS, "--ignore-not-found", "--wait=true"], None);
    let release = Release::install("plugin", &system.name, &["sidecar.serviceType=ClusterIP", "log.format=text"]);
    let webhook = format!("deployment/{}", release.fullname());
    kubectl(&["rollout", "status", &webhook, "-n", &system.name, "--timeout=180s"]);
    let apps = TestNamespace::create(APPS, &[("podsftp.io/injection", "enabled")]);

    // The webhook may not be called for a moment after its pods turn ready: recreate until patched.
    eventually("web's pod injected", WAIT, || {
        kubectl_apply(&deployment("web", ""));
        let pods = pods_of("web");
        if !pods.is_empty() && pods.iter().all(injected) {
            return Ok(());
        }
        let _ = try_run("kubectl", &["delete", "deployment", "web", "-n", APPS, "--wait=true"], None);
        Err(format!("{} pods, not all injected", pods.len()))
    });
    kubectl(&["rollout", "status", "deployment/web", "-n", APPS, "--timeout=180s"]);

    // login: JSON with everything a customer needs; the fingerprint is the host key the server shows.
    let json = eventually("a login for deploy/web", WAIT, || plugin(&["login", "deploy/web", "-n", APPS, "--output", "json"], None));
    let login: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("login JSON ({e}): {json}"));
    let text = |key: &str| login[key].as_str().unwrap_or_else(|| panic!("{key} missing: {login}")).to_string();
    let (host, user, password) = (text("host"), text("username"), text("password"));
    let port = login["port"].as_u64().expect("port");
    assert_eq!(text("workload"), "Deployment/web");
    assert_eq!(text("url"), format!("sftp://{user}@{host}:{port}"));
    assert!(login["note"].as_str().is_some_and(|n| n.contains("ClusterIP")), "a ClusterIP login says so: {login}");
    let scanned = work.path().join("scanned");
    let scan = eventually("ssh-keyscan of the Service", WAIT, || {
        try_run("ssh-keyscan", &["-t", "ed25519", "-p", &port.to_string(), &host], None).and_then(|s| if s.trim().is_empty() { Err("no key".into()) } else { Ok(s) })
    });
    std::fs::write(&scanned, scan).expect("write scan");
    let shown = run("ssh-keygen", &["-l", "-f", scanned.to_str().expect("utf-8 path")]);
    assert!(shown.contains(&text("hostKeyFingerprint")), "login says {}, the server shows {shown}", text("hostKeyFingerprint"));

    // The text output of a bare name is the same login; its command line works with sshpass.
    let printed = plugin(&["login", "web", "-n", APPS], None).unwrap_or_else(|e| panic!("{e}"));
    assert!(printed.contains(&format!("Password:  {password}\n")) && printed.contains(&format!("URL:       {}\n", text("url"))), "{printed}");
    let listing = eventually("sshpass sftp with the printed command", WAIT, || sftp_with_password(&text("sftpCommand"), &password, "ls /srv/data\n"));
    assert!(listing.contains("hello.txt"), "{listing}");

    // connect: the generated key and the pinned host key, batch mode, no prompt (stdin is the batch).
    let connected = plugin(&["connect", "deploy/web", "-n", APPS, "--", "-b", "-"], Some("ls /srv/data\n")).unwrap_or_else(|e| panic!("{e}"));
    assert!(connected.contains("hello.txt"), "{connected}");

    // Errors a person understands.
    let missing = plugin(&["login", "deploy/nope", "-n", APPS], None).expect_err("a missing workload");
    assert!(missing.contains("no deployment named \"nope\" in namespace plugin-apps"), "{missing}");
    kubectl_apply(&deployment("plain", ", sftp: disabled"));
    let plain = plugin(&["login", "plain", "-n", APPS], None).expect_err("a workload without the sidecar");
    assert!(plain.contains("Deployment/plain in namespace plugin-apps has no podsftp login yet") && plain.contains("no pod of it has the sidecar"), "{plain}");

    // rotate --password: the new password works and the old one not, with no pod restarted.
    let before = pod_identities("web");
    let rotated = plugin(&["rotate", "deploy/web", "-n", APPS, "--password", "-o", "json"], None).unwrap_or_else(|e| panic!("{e}"));
    let new_login: Value = serde_json::from_str(&rotated).unwrap_or_else(|e| panic!("rotate JSON ({e}): {rotated}"));
    let new_password = new_login["password"].as_str().expect("new password").to_string();
    assert_ne!(new_password, password);
    assert_eq!(new_login["hostKeyFingerprint"], login["hostKeyFingerprint"], "--password changed the host key");
    eventually("the new password accepted and the old one refused", WAIT, || {
        sftp_with_password(&text("sftpCommand"), &new_password, "pwd\n")?;
        match sftp_with_password(&text("sftpCommand"), &password, "pwd\n") {
            Ok(_) => Err("the old password still works".to_string()),
            Err(_) => Ok(()),
        }
    });
    assert_eq!(pod_identities("web"), before, "a pod was replaced or restarted by the rotation");

    // status: a pod created while the webhook is scaled to zero is listed with its fix.
    kubectl(&["scale", &webhook, "-n", &system.name, "--replicas=0"]);
    let selector = kubectl(&["get", &webhook, "-n", &system.name, "-o", "go-template={{range $k, $v := .spec.selector.matchLabels}}{{$k}}={{$v}},{{end}}"]);
    let selector = selector.trim_end_matches(',');
    eventually("no webhook pod left", WAIT, || {
        let left = kubectl_json(&["get", "pods", "-n", &system.name, "-l", selector])["items"].as_array().map_or(0, Vec::len);
        if left == 0 { Ok(()) } else { Err(format!("{left} left")) }
    });
    kubectl_apply(&deployment("late", ""));
    eventually("late's pod created (without the sidecar)", WAIT, || pods_of("late").first().cloned().ok_or("no pod yet".to_string()));
    assert!(pods_of("late").iter().all(|p| !injected(p)), "injected with the webhook at zero replicas");
    let status = plugin(&["status", "-n", APPS], None).unwrap_or_else(|e| panic!("{e}"));
    assert!(status.contains("Deployment/web") && status.contains(&format!("1/1    {host}:{port}")), "{status}");
    assert!(status.contains("Deployment/late  kubectl rollout restart -n plugin-apps deployment/late"), "{status}");
    assert!(!status.contains("Deployment/plain"), "an opted-out pod is listed as missed: {status}");
    let all = plugin(&["status", "-A", "-o", "json"], None).unwrap_or_else(|e| panic!("{e}"));
    let all: Value = serde_json::from_str(&all).unwrap_or_else(|e| panic!("status JSON ({e}): {all}"));
    assert!(all["missed"].as_array().is_some_and(|m| m.iter().any(|p| p["owner"] == "Deployment/late")), "{all}");

    drop(apps);
    release.uninstall();
    drop(system);
}
