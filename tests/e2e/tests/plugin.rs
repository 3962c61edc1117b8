//! `kubectl sftp` (the `kubectl-sftp` release binary) against a real workload on the harness's
//! node: `login` output that works with `sshpass sftp` and names the host key the server really
//! shows, `connect` with the host key pinned in batch mode, errors for a missing and a
//! non-injected workload, `rotate --password`, `--key` and `--host-key` (new value works, old one
//! refused, the server shows the new host key, no pod restarted), and `status` listing a pod
//! created while the webhook was scaled to zero, with its fix (and not a pod in the webhook's own
//! namespace or in a labelled namespace the chart excludes, which are never injected); back up, the
//! webhook counts that pod (and not the excluded ones) in `podsftp_webhook_missed_injections` and
//! puts a Warning Event with the fix on its Deployment.
//!
//! One test: every step uses the workload (and the webhook) the previous ones set up.

use std::time::Duration;

use podsftp_e2e::helm::{
    Release, TestNamespace, eventually, kubectl, kubectl_apply, kubectl_json, release_binary, require_cluster, run, try_run,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(180);
const APPS: &str = "plugin-apps";
/// Labelled for injection but listed in the chart's `webhook.excludeNamespaces`.
const EXCLUDED: &str = "plugin-excluded";

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

/// `kubectl sftp rotate deploy/web WHAT -o json`, then waits until every replica of web has loaded
/// the changed Secret (one more "credentials loaded" in its log) and returns the new login.
/// Waiting for the log rather than retrying logins matters: each failed login adds 5 s to the
/// host's per-source penalty, and past 15 s the sidecar refuses the host for a while.
fn rotate_web(what: &str) -> Value {
    let loads = |pod: &str| kubectl(&["logs", pod, "-c", "podsftp", "-n", APPS]).matches("credentials loaded").count();
    let replicas: Vec<String> = pods_of("web").iter().filter_map(|p| p["metadata"]["name"].as_str().map(String::from)).collect();
    let loaded_before: Vec<usize> = replicas.iter().map(|pod| loads(pod)).collect();
    let rotated = plugin(&["rotate", "deploy/web", "-n", APPS, what, "-o", "json"], None).unwrap_or_else(|e| panic!("{e}"));
    eventually(&format!("every replica of web loaded the Secret after rotate {what}"), WAIT, || {
        let reloaded = replicas.iter().zip(&loaded_before).all(|(pod, before)| loads(pod) > *before);
        if reloaded { Ok(()) } else { Err(format!("replicas {replicas:?} not all reloaded")) }
    });
    serde_json::from_str(&rotated).unwrap_or_else(|e| panic!("rotate JSON ({e}): {rotated}"))
}

/// `sftp -i key` to `user@host:port` in batch mode (no password), `batch` on stdin.
fn sftp_with_key(key: &std::path::Path, user: &str, host: &str, port: u64, batch: &str) -> Result<String, String> {
    let key = key.to_str().expect("utf-8 path");
    let port = port.to_string();
    let mut args = vec!["-i", key, "-o", "IdentitiesOnly=yes", "-o", "PasswordAuthentication=no", "-o", "BatchMode=yes"];
    args.extend(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]);
    args.extend(["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]);
    let destination = format!("{user}@{host}");
    args.extend(["-P", &port, "-b", "-", &destination]);
    try_run("sftp", &args, Some(batch))
}

#[test]
fn kubectl_sftp_logs_in_connects_rotates_and_reports_missed_pods_as_the_webhook_does() {
    require_cluster();
    let work = tempfile::tempdir().expect("work dir");

    let system = TestNamespace::create("plugin-system", &[]);
    let _ = try_run("kubectl", &["delete", "namespace", APPS, "--ignore-not-found", "--wait=true"], None);
    let excluded_value = format!("webhook.excludeNamespaces={{{EXCLUDED}}}");
    let release = Release::install("plugin", &system.name, &["sidecar.serviceType=ClusterIP", "log.format=text", &excluded_value]);
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
        try_run("ssh-keyscan", &["-t", "ed25519", "-p", &port.to_string(), &host], None)
            .and_then(|s| if s.trim().is_empty() { Err("no key".into()) } else { Ok(s) })
    });
    std::fs::write(&scanned, scan).expect("write scan");
    let shown = run("ssh-keygen", &["-l", "-f", scanned.to_str().expect("utf-8 path")]);
    assert!(shown.contains(&text("hostKeyFingerprint")), "login says {}, the server shows {shown}", text("hostKeyFingerprint"));

    // The text output of a bare name is the same login; its command line works with sshpass.
    let printed = plugin(&["login", "web", "-n", APPS], None).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        printed.contains(&format!("Password:  {password}\n")) && printed.contains(&format!("URL:       {}\n", text("url"))),
        "{printed}"
    );
    let listing =
        eventually("sshpass sftp with the printed command", WAIT, || sftp_with_password(&text("sftpCommand"), &password, "ls /srv/data\n"));
    assert!(listing.contains("hello.txt"), "{listing}");

    // connect: the generated key and the pinned host key, batch mode, no prompt (stdin is the batch).
    let connected =
        plugin(&["connect", "deploy/web", "-n", APPS, "--", "-b", "-"], Some("ls /srv/data\n")).unwrap_or_else(|e| panic!("{e}"));
    assert!(connected.contains("hello.txt"), "{connected}");

    // Errors a person understands.
    let missing = plugin(&["login", "deploy/nope", "-n", APPS], None).expect_err("a missing workload");
    assert!(missing.contains("no deployment named \"nope\" in namespace plugin-apps"), "{missing}");
    kubectl_apply(&deployment("plain", ", sftp: disabled"));
    let plain = plugin(&["login", "plain", "-n", APPS], None).expect_err("a workload without the sidecar");
    assert!(
        plain.contains("Deployment/plain in namespace plugin-apps has no podsftp login yet")
            && plain.contains("no pod of it has the sidecar"),
        "{plain}"
    );

    // rotate --password: the new password works and the old one not, with no pod restarted.
    let before = pod_identities("web");
    let new_login = rotate_web("--password");
    let new_password = new_login["password"].as_str().expect("new password").to_string();
    assert_ne!(new_password, password);
    assert_eq!(new_login["hostKeyFingerprint"], login["hostKeyFingerprint"], "--password changed the host key");
    sftp_with_password(&text("sftpCommand"), &new_password, "pwd\n").unwrap_or_else(|e| panic!("the new password was refused: {e}"));
    assert!(sftp_with_password(&text("sftpCommand"), &password, "pwd\n").is_err(), "the old password still works");
    assert_eq!(pod_identities("web"), before, "a pod was replaced or restarted by the rotation");

    // rotate --key: `connect` (the Secret's new key) gets in once the sidecars reloaded; the old
    // key is refused. The password and the host key stay.
    let old_key = work.path().join("old_id_ed25519");
    let secret = kubectl_json(&["get", "secret", "web-sftp", "-n", APPS]);
    let encoded = secret["data"]["id_ed25519"].as_str().expect("id_ed25519 in the Secret");
    std::fs::write(&old_key, try_run("base64", &["-d"], Some(encoded)).unwrap_or_else(|e| panic!("{e}"))).expect("write old key");
    std::fs::set_permissions(&old_key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod old key");
    let key_login = rotate_web("--key");
    assert_eq!((&key_login["password"], &key_login["hostKeyFingerprint"]), (&new_login["password"], &login["hostKeyFingerprint"]));
    let connected = plugin(&["connect", "deploy/web", "-n", APPS, "--", "-b", "-"], Some("pwd\n"));
    connected.unwrap_or_else(|e| panic!("connect with the new key: {e}"));
    assert!(sftp_with_key(&old_key, &user, &host, port, "pwd\n").is_err(), "the old key still works");

    // rotate --host-key: the login names the new key, the server shows it, `connect` pins it.
    let host_login = rotate_web("--host-key");
    let new_fingerprint = host_login["hostKeyFingerprint"].as_str().expect("fingerprint").to_string();
    assert_ne!(host_login["hostKeyFingerprint"], login["hostKeyFingerprint"]);
    assert_eq!(host_login["password"], new_login["password"], "--host-key changed the password");
    eventually("the server shows the new host key", WAIT, || {
        let scan = try_run("ssh-keyscan", &["-t", "ed25519", "-p", &port.to_string(), &host], None)?;
        std::fs::write(&scanned, scan).map_err(|e| e.to_string())?;
        let shown = try_run("ssh-keygen", &["-l", "-f", scanned.to_str().expect("utf-8 path")], None)?;
        if shown.contains(&new_fingerprint) { Ok(()) } else { Err(format!("the server shows {shown}")) }
    });
    let connected =
        plugin(&["connect", "deploy/web", "-n", APPS, "--", "-b", "-"], Some("ls /srv/data\n")).unwrap_or_else(|e| panic!("{e}"));
    assert!(connected.contains("hello.txt"), "{connected}");
    assert_eq!(pod_identities("web"), before, "a pod was replaced or restarted by the key rotations");

    // status: a pod created while the webhook is scaled to zero is listed with its fix.
    kubectl(&["scale", &webhook, "-n", &system.name, "--replicas=0"]);
    let selector = kubectl(&[
        "get",
        &webhook,
        "-n",
        &system.name,
        "-o",
        "go-template={{range $k, $v := .spec.selector.matchLabels}}{{$k}}={{$v}},{{end}}",
    ]);
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
    // A pod opted in by its label in the webhook's own namespace, and one in a labelled namespace
    // the chart excludes, are never injected (the chart leaves those namespaces out): `status`
    // finds the namespaces and does not count the pods.
    let excluded = TestNamespace::create(EXCLUDED, &[("podsftp.io/injection", "enabled")]);
    for namespace in [system.name.as_str(), EXCLUDED] {
        kubectl_apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: opted-in\n  namespace: {namespace}\n  labels: {{sftp: enabled}}\nspec:\n\
             \x20 containers:\n    - name: app\n      image: localhost/podsftp/test-legacy:0.1.0\n      imagePullPolicy: IfNotPresent\n"
        ));
    }
    let all = plugin(&["status", "-A", "-o", "json"], None).unwrap_or_else(|e| panic!("{e}"));
    let all: Value = serde_json::from_str(&all).unwrap_or_else(|e| panic!("status JSON ({e}): {all}"));
    let missed = all["missed"].as_array().cloned().unwrap_or_default();
    assert!(missed.iter().any(|p| p["owner"] == "Deployment/late"), "{all}");
    assert!(!missed.iter().any(|p| p["namespace"] == system.name.as_str()), "a pod in the webhook's namespace is listed: {all}");
    assert!(!missed.iter().any(|p| p["namespace"] == EXCLUDED), "a pod in an excluded namespace is listed: {all}");

    // Back up, the webhook reports the pod it missed: the gauge for the namespace and a Warning
    // Event on the Deployment with the fix; once fixed, the namespace's series is gone.
    kubectl(&["scale", &webhook, "-n", &system.name, "--replicas=1"]);
    kubectl(&["rollout", "status", &webhook, "-n", &system.name, "--timeout=180s"]);
    let metric = format!("podsftp_webhook_missed_injections{{namespace=\"{APPS}\"}} ");
    let webhook_metrics = || -> Result<String, String> {
        let pods = kubectl_json(&["get", "pods", "-n", &system.name, "-l", selector]);
        let pod = pods["items"][0]["metadata"]["name"].as_str().ok_or("no webhook pod")?.to_string();
        let path = format!("/api/v1/namespaces/{}/pods/{pod}:9090/proxy/metrics", system.name);
        try_run("kubectl", &["get", "--raw", &path], None)
    };
    let missed_count = || -> Result<Option<String>, String> {
        Ok(webhook_metrics()?.lines().find_map(|line| line.strip_prefix(metric.as_str())).map(str::to_string))
    };
    eventually("the missed pod counted", WAIT, || match missed_count()? {
        Some(count) if count == "1" => Ok(()),
        other => Err(format!("{metric}is {other:?}")),
    });
    // The check that counted APPS has seen the excluded namespace's pod too.
    let text = webhook_metrics().unwrap_or_else(|e| panic!("{e}"));
    assert!(!text.contains(&format!("namespace=\"{EXCLUDED}\"")), "an excluded namespace is counted:\n{text}");
    let note = eventually("a MissedInjection Event on deployment/late", WAIT, || {
        let selector = "involvedObject.kind=Deployment,involvedObject.name=late,reason=MissedInjection";
        let events = kubectl_json(&["get", "events", "-n", APPS, "--field-selector", selector]);
        events["items"][0]["message"].as_str().map(str::to_string).ok_or_else(|| "no event yet".to_string())
    });
    assert!(note.contains("kubectl rollout restart -n plugin-apps deployment/late"), "{note}");
    kubectl(&["rollout", "restart", "-n", APPS, "deployment/late"]);
    kubectl(&["rollout", "status", "-n", APPS, "deployment/late", "--timeout=180s"]);
    eventually("late's pods injected and no longer counted", WAIT, || match missed_count()? {
        None if pods_of("late").iter().all(injected) => Ok(()),
        other => Err(format!("{metric}is {other:?}")),
    });

    drop(apps);
    drop(excluded);
    release.uninstall();
    drop(system);
}
