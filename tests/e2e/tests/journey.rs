//! The user journey of issue 6 on the harness's real node: install the chart (auto certificates,
//! the webhook as real pods), label a namespace, deploy the project's test apps, and use OpenSSH
//! `sftp` against the per-app Services — files seen inside the app containers with the apps'
//! uids, `podsftp.io/root` and `podsftp.io/read-only`, the sidecar's `/metrics` at the address
//! its pod announces, the shared host key, app restarts, password rotation, Jobs, garbage
//! collection and `helm uninstall`.
//!
//! One test, because every step builds on the state of the previous ones (as a user's day does).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use podsftp_e2e::helm::{Release, TestNamespace, eventually, exists, kubectl, kubectl_apply, kubectl_json, require_cluster, run, try_run};
use podsftp_test_support::http_get;

const WAIT: Duration = Duration::from_secs(180);
const APPS: &str = "journey-apps";

/// How a session authenticates.
enum Auth<'a> {
    Password(&'a str),
    Key(&'a std::path::Path),
}

/// The `sftp` command line for `user@host:port` without the destination: (program, arguments).
fn sftp_command(port: u16, auth: &Auth) -> (&'static str, Vec<String>) {
    let mut args: Vec<String> = Vec::new();
    let program = match auth {
        Auth::Password(password) => {
            args.extend(["-p", password, "sftp", "-o", "BatchMode=no", "-o", "PubkeyAuthentication=no"].map(String::from));
            args.extend(["-o", "PreferredAuthentications=password", "-o", "NumberOfPasswordPrompts=1"].map(String::from));
            "sshpass"
        }
        Auth::Key(key) => {
            args.extend(
                ["-i", key.to_str().expect("utf-8 path"), "-o", "IdentitiesOnly=yes", "-o", "PasswordAuthentication=no"].map(String::from),
            );
            "sftp"
        }
    };
    args.extend(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"].map(String::from));
    args.extend(["-o".into(), "ConnectTimeout=10".into(), "-P".into(), port.to_string()]);
    (program, args)
}

/// Runs an `sftp -b` batch (each line one command; a leading `-` ignores its failure) against
/// `user@host:port`; Ok(output) if every command succeeded.
fn sftp(host: &str, port: u16, user: &str, auth: &Auth, batch: &str) -> Result<String, String> {
    let (program, mut args) = sftp_command(port, auth);
    args.extend(["-b".into(), "-".into(), format!("{user}@{host}")]);
    try_run(program, &args.iter().map(String::as_str).collect::<Vec<_>>(), Some(batch))
}

/// The first password session to a new Service: kube-proxy programs a Service's rules a moment
/// after its endpoints turn ready (until then: connection refused), so retry until it connects.
fn first_session(owner: &str, host: &str, port: u16, user: &str, password: &str, batch: &str) -> String {
    eventually(&format!("a password session to {owner}'s Service {host}:{port}"), WAIT, || {
        sftp(host, port, user, &Auth::Password(password), batch)
    })
}

/// One key of Secret `name` in the apps' namespace, decoded.
fn secret_value(name: &str, key: &str) -> String {
    kubectl(&["get", "secret", name, "-n", APPS, "-o", &format!("go-template={{{{index .data \"{key}\" | base64decode}}}}")])
}

/// ClusterIP and port of the per-owner Service (reached from the host through kube-proxy).
fn service_address(owner: &str) -> (String, u16) {
    let service = kubectl_json(&["get", "service", &format!("{owner}-sftp"), "-n", APPS]);
    let ip = service["spec"]["clusterIP"].as_str().expect("clusterIP").to_string();
    let port = service["spec"]["ports"][0]["port"].as_u64().expect("port") as u16;
    (ip, port)
}

/// The login of an owner: (username, password), once the controller made its Secret and Service.
fn login(owner: &str) -> (String, String) {
    let secret = format!("{owner}-sftp");
    eventually(&format!("Secret and Service {secret}"), WAIT, || {
        if exists("secret", &secret, Some(APPS)) && exists("service", &secret, Some(APPS)) { Ok(()) } else { Err("missing".into()) }
    });
    (secret_value(&secret, "username"), secret_value(&secret, "password"))
}

/// Pods of `app=<owner>` in the apps' namespace, as stored.
fn pods_of(owner: &str) -> Vec<serde_json::Value> {
    kubectl_json(&["get", "pods", "-n", APPS, "-l", &format!("app={owner}")])["items"].as_array().cloned().unwrap_or_default()
}

/// Waits until every pod of the owner is Ready (the sidecar's readiness included) and returns them.
fn ready_pods(owner: &str, count: usize) -> Vec<serde_json::Value> {
    eventually(&format!("{count} ready pods of {owner} with the sidecar"), WAIT, || {
        let pods = pods_of(owner);
        let ready = |p: &serde_json::Value| {
            p["metadata"]["annotations"]["podsftp.io/status"] == "injected"
                && p["metadata"]["deletionTimestamp"].is_null()
                && p["status"]["conditions"].as_array().is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        };
        let good: Vec<_> = pods.iter().filter(|p| ready(p)).cloned().collect();
        if good.len() == count && pods.len() == count {
            Ok(good)
        } else {
            Err(format!(
                "{} of {} ready: {}",
                good.len(),
                pods.len(),
                pods.iter().map(|p| p["status"].to_string()).collect::<Vec<_>>().join("\n")
            ))
        }
    })
}

/// The host pid of container `container` of `pod` (found through its cgroup), i.e. the app's
/// own process as the kernel sees it.
fn app_pid(pod: &serde_json::Value, container: &str) -> u32 {
    let statuses = pod["status"]["containerStatuses"].as_array().expect("container statuses");
    let status = statuses.iter().find(|s| s["name"] == container).expect("status of the app container");
    let id = status["containerID"].as_str().and_then(|id| id.split("://").nth(1)).expect("containerID").to_string();
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(&id)))
        .collect();
    pids.sort();
    *pids.first().unwrap_or_else(|| panic!("no process of container {id} on this host"))
}

/// A path inside the app container, seen from the host through the app's own process.
fn in_app(pod: &serde_json::Value, path: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{}/root{path}", app_pid(pod, "app")))
}

fn deployment(name: &str, image: &str, replicas: u32, pod_security: &str, annotations: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  namespace: {APPS}\nspec:\n  replicas: {replicas}\n\
         \x20 selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n\
         \x20     annotations: {{{annotations}}}\n    spec:\n      securityContext: {{{pod_security}}}\n\
         \x20     containers:\n        - name: app\n          image: localhost/podsftp/{image}:0.1.0\n          imagePullPolicy: IfNotPresent\n"
    )
}

fn sha256(path: &std::path::Path) -> String {
    run("sha256sum", &[path.to_str().expect("utf-8 path")]).split_whitespace().next().unwrap_or_default().to_string()
}

#[test]
fn a_user_installs_labels_deploys_and_works_with_files_over_sftp() {
    require_cluster();
    let work = std::env::temp_dir().join(format!("podsftp-journey-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");

    // 1. helm install, auto certificates, the webhook as real pods; wait until ready.
    let system = TestNamespace::create("journey-system", &[]);
    let _ = try_run("kubectl", &["delete", "namespace", APPS, "--ignore-not-found", "--wait=true"], None);
    let release = Release::install("journey", &system.name, &["sidecar.serviceType=ClusterIP", "log.format=text"]);
    kubectl(&["rollout", "status", &format!("deployment/{}", release.fullname()), "-n", &system.name, "--timeout=180s"]);

    // 2. Label a namespace, deploy the three kinds of apps (+ one confined, read-only app).
    let apps = TestNamespace::create(APPS, &[("podsftp.io/injection", "enabled")]);
    let uid_1000 = "runAsUser: 1000, runAsGroup: 1000";
    // The webhook may not be called for a moment after its pods turn ready (caBundle propagation):
    // such pods are created without the sidecar (failurePolicy Ignore); recreate until patched.
    eventually("the first app pod patched", WAIT, || {
        kubectl_apply(&deployment("legacy", "test-legacy", 2, uid_1000, ""));
        let pods = pods_of("legacy");
        if !pods.is_empty() && pods.iter().all(|p| p["metadata"]["annotations"]["podsftp.io/status"] == "injected") {
            return Ok(());
        }
        let _ = try_run("kubectl", &["delete", "deployment", "legacy", "-n", APPS, "--wait=true"], None);
        Err(format!("{} pods, not all injected", pods.len()))
    });
    kubectl_apply(&deployment("distroless", "test-distroless", 1, "", ""));
    kubectl_apply(&deployment("rootapp", "test-rootapp", 1, "", ""));
    kubectl_apply(&deployment("confined", "test-legacy", 1, uid_1000, "podsftp.io/root: /srv/data, podsftp.io/read-only: \"true\""));

    // 3. Each app: Running with the sidecar ready; password and key logins; upload lands in the
    //    app container with the app's uid; download gives the same bytes.
    let upload = work.join("upload.bin");
    std::fs::write(&upload, (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect::<Vec<u8>>()).expect("upload file");
    for (owner, replicas, dir, listed, uid) in [
        ("legacy", 2, "/srv/data", "hello.txt", 1000),
        ("distroless", 1, "/data", "hello.txt", 1001),
        ("rootapp", 1, "/var/www", "index.html", 0),
    ] {
        let pods = ready_pods(owner, replicas);
        let (user, password) = login(owner);
        let (host, port) = service_address(owner);
        let key = work.join(format!("{owner}.key"));
        std::fs::write(&key, secret_value(&format!("{owner}-sftp"), "id_ed25519")).expect("key file");
        run("chmod", &["600", key.to_str().expect("utf-8 path")]);

        let listing = first_session(owner, &host, port, &user, &password, &format!("ls -l {dir}\n"));
        assert!(listing.contains(listed), "{owner}: ls {dir} does not show {listed}: {listing}");

        let remote = format!("{dir}/uploaded-{owner}.bin");
        let back = work.join(format!("{owner}-back.bin"));
        sftp(&host, port, &user, &Auth::Key(&key), &format!("put {} {remote}\nget {remote} {}\n", upload.display(), back.display()))
            .unwrap_or_else(|e| panic!("{owner}: key login, put and get: {e}"));
        assert_eq!(sha256(&back), sha256(&upload), "{owner}: downloaded bytes differ");

        // Both replicas share the volume of the Secret, not the files: find the pod that got it.
        let holder =
            pods.iter().find(|p| in_app(p, &remote).exists()).unwrap_or_else(|| panic!("{owner}: {remote} is in no app container"));
        let inside = in_app(holder, &remote);
        assert_eq!(sha256(&inside), sha256(&upload), "{owner}: bytes in the app container differ");
        let meta = std::fs::metadata(&inside).expect("metadata");
        assert_eq!((meta.uid(), meta.gid()), (uid, uid), "{owner}: owner of the uploaded file in the app container");
    }

    // 3b. The pod announces its sidecar's /metrics (prometheus.io annotations); after the sessions
    //     above and a failed login it shows them, their bytes and the failure.
    let (user, _) = login("distroless");
    let (host, port) = service_address("distroless");
    sftp(&host, port, &user, &Auth::Password("not-the-password"), "ls\n").expect_err("a wrong password logged in");
    let pod = &ready_pods("distroless", 1)[0];
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true", "{annotations}");
    let metrics_port: u16 = annotations["prometheus.io/port"].as_str().and_then(|p| p.parse().ok()).expect("prometheus.io/port");
    let metrics_path = annotations["prometheus.io/path"].as_str().expect("prometheus.io/path");
    let pod_ip: IpAddr = pod["status"]["podIP"].as_str().and_then(|ip| ip.parse().ok()).expect("podIP");
    eventually("the sessions, their bytes and the failed login in the sidecar's /metrics", WAIT, || {
        let (code, body) = http_get(SocketAddr::new(pod_ip, metrics_port), metrics_path).ok_or("no answer")?;
        let value = |series: &str| body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse::<f64>().ok());
        let shown = code == 200
            && value(r#"podsftp_sidecar_sessions_ended_total{reason="closed"}"#) >= Some(2.0)
            && value(r#"podsftp_sidecar_auth_attempts_total{method="password",result="rejected"}"#) >= Some(1.0)
            && value("podsftp_sidecar_received_bytes_total") >= Some(800_000.0)
            && value("podsftp_sidecar_sent_bytes_total") >= Some(800_000.0)
            && value(r#"podsftp_sidecar_sftp_operations_total{operation="write",status="ok"}"#) >= Some(1.0);
        if shown { Ok(()) } else { Err(format!("{code}: {body}")) }
    });

    // 4. podsftp.io/root confines, podsftp.io/read-only refuses writes; one host key per owner.
    ready_pods("confined", 1);
    let (user, password) = login("confined");
    let (host, port) = service_address("confined");
    let auth = Auth::Password(&password);
    let listing = first_session("confined", &host, port, &user, &password, "ls /\ncd ..\nls\nls /reports\n");
    assert!(listing.contains("hello.txt") && listing.contains("q1.txt"), "root is not /srv/data: {listing}");
    assert!(!listing.contains("bin") && !listing.contains("etc"), "left the root: {listing}");
    // Logged in (the listing ran), then refused: the batch stops at the refused command.
    for change in [format!("put {} /new.bin", upload.display()), "rm /hello.txt".into(), "mkdir /new".into()] {
        let refused =
            sftp(&host, port, &user, &auth, &format!("ls /\n{change}\n")).expect_err(&format!("{change} succeeded on a read-only app"));
        assert!(refused.contains("hello.txt") && refused.contains(&format!("sftp> {change}")), "{change}: {refused}");
    }
    assert!(sftp(&host, port, &user, &auth, "ls /\n").is_ok_and(|l| l.contains("hello.txt") && !l.contains("new")));

    let keys: Vec<String> = pods_of("legacy")
        .iter()
        .map(|pod| {
            let ip = pod["status"]["podIP"].as_str().expect("podIP");
            let scan = run("ssh-keyscan", &["-t", "ed25519", "-p", "2222", ip]);
            scan.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")
        })
        .collect();
    assert_eq!(keys.len(), 2);
    assert!(!keys[0].is_empty() && keys[0] == keys[1], "replicas show different host keys: {keys:?}");

    // 5. Kill the app's process: a session open across the restart is told so and ends (it must
    // not go on writing into the dead container); the next session works. Rotate the password:
    // new works, old not.
    let pod = &ready_pods("rootapp", 1)[0];
    let (user, password) = login("rootapp");
    let (host, port) = service_address("rootapp");
    let (program, mut args) = sftp_command(port, &Auth::Password(&password));
    args.push(format!("{user}@{host}"));
    let mut open_session =
        Command::new(program).args(&args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("sftp");
    let mut commands = open_session.stdin.take().expect("stdin");
    let mut echoes = BufReader::new(open_session.stdout.take().expect("stdout"));
    writeln!(commands, "pwd").expect("write to sftp");
    // sftp echoes a command once it runs it, i.e. once the session is up.
    let mut echo = String::new();
    echoes.read_line(&mut echo).expect("read from sftp");
    assert!(echo.contains("pwd"), "sftp session did not start: {echo:?}");
    let app = app_pid(pod, "app");
    run("kill", &["-9", &app.to_string()]);
    eventually("the app's process gone", WAIT, || {
        if std::path::Path::new(&format!("/proc/{app}")).exists() { Err("still there".to_string()) } else { Ok(()) }
    });
    writeln!(commands, "ls /var/www").expect("write to sftp");
    drop(commands);
    let mut stderr = String::new();
    open_session.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read sftp stderr");
    let mut rest = String::new();
    echoes.read_to_string(&mut rest).expect("read sftp stdout");
    let _ = open_session.wait();
    // OpenSSH's sftp prints only "Failure"/"Connection closed"; the reason is in the status
    // message (FileZilla and WinSCP show it) and in the sidecar's log.
    assert!(stderr.contains("Connection closed"), "the open session after the restart: {stderr}");
    assert!(!rest.contains("index.html"), "the dead container's files were listed after the restart: {rest}");
    let sidecar_log = run("kubectl", &["logs", "-n", APPS, pod["metadata"]["name"].as_str().expect("pod name"), "-c", "podsftp"]);
    assert!(sidecar_log.contains("has exited (restarted?)"), "sidecar log: {sidecar_log}");
    eventually("a session after the app restarted", WAIT, || {
        let restarted = pods_of("rootapp").iter().any(|p| p["status"]["containerStatuses"][0]["restartCount"].as_u64() > Some(0));
        if !restarted {
            return Err("app not restarted yet".into());
        }
        sftp(&host, port, &user, &Auth::Password(&password), "ls /var/www\n")
    });

    let (user, old) = login("legacy");
    let (host, port) = service_address("legacy");
    let new = "rotated-password-0123456789abcdef";
    // Each replica logs "credentials loaded" once per load: the rotation has arrived when every
    // replica has one more. Waiting for that instead of retrying logins matters: every failed
    // login adds to the client's per-source penalty (5 s each), and past 15 s the sidecar refuses
    // the source altogether for a while (OpenSSH's PerSourcePenalties).
    let loads = |pod: &str| kubectl(&["logs", pod, "-c", "podsftp", "-n", APPS]).matches("credentials loaded").count();
    let replicas: Vec<String> = pods_of("legacy").iter().filter_map(|p| p["metadata"]["name"].as_str().map(String::from)).collect();
    let loaded_before: Vec<usize> = replicas.iter().map(|pod| loads(pod)).collect();
    kubectl(&["patch", "secret", "legacy-sftp", "-n", APPS, "-p", &format!("{{\"stringData\":{{\"password\":\"{new}\"}}}}")]);
    // The kubelet refreshes the Secret volume within its sync period; no pod restarts.
    eventually("every replica loaded the rotated Secret", WAIT, || {
        let reloaded = replicas.iter().zip(&loaded_before).all(|(pod, before)| loads(pod) > *before);
        if reloaded { Ok(()) } else { Err(format!("replicas {replicas:?} not all reloaded")) }
    });
    sftp(&host, port, &user, &Auth::Password(new), "pwd\n").unwrap_or_else(|e| panic!("the new password was refused: {e}"));
    // One refusal: 5 s of penalty, below the 15 s that would refuse the source.
    assert!(sftp(&host, port, &user, &Auth::Password(&old), "pwd\n").is_err(), "the old password still works");
    assert!(
        pods_of("legacy")
            .iter()
            .all(|p| p["status"]["containerStatuses"].as_array().is_some_and(|cs| cs.iter().all(|c| c["restartCount"] == 0)))
    );

    // 6. An injected Job completes (native sidecar).
    kubectl_apply(&format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: batch\n  namespace: {APPS}\nspec:\n  backoffLimit: 0\n  template:\n\
         \x20   metadata:\n      labels: {{app: batch}}\n    spec:\n      restartPolicy: Never\n      securityContext: {{{uid_1000}}}\n\
         \x20     containers:\n        - name: app\n          image: localhost/podsftp/test-legacy:0.1.0\n          imagePullPolicy: IfNotPresent\n\
         \x20         command: [/bin/busybox, sh, -c, \"ls /srv/data && sleep 3\"]\n"
    ));
    kubectl(&["wait", "job/batch", "-n", APPS, "--for=condition=Complete", "--timeout=180s"]);
    assert!(
        pods_of("batch").iter().all(|p| p["metadata"]["annotations"]["podsftp.io/status"] == "injected"),
        "the Job's pod was not injected"
    );

    // 7. Delete a Deployment: its Service and Secret are garbage-collected.
    kubectl(&["delete", "deployment", "distroless", "-n", APPS]);
    eventually("Secret and Service distroless-sftp garbage-collected", WAIT, || {
        let left: Vec<&str> = ["secret", "service"].into_iter().filter(|k| exists(k, "distroless-sftp", Some(APPS))).collect();
        if left.is_empty() { Ok(()) } else { Err(format!("still there: {left:?}")) }
    });

    // 8. helm uninstall: new pods in the labelled namespace come without the sidecar; nothing blocks.
    release.uninstall();
    kubectl_apply(&deployment("after", "test-legacy", 1, uid_1000, ""));
    let pod = eventually("a pod after helm uninstall", WAIT, || {
        let pods = pods_of("after");
        pods.first().filter(|p| p["status"]["phase"] == "Running").cloned().ok_or_else(|| "not running yet".to_string())
    });
    assert!(pod["metadata"]["annotations"]["podsftp.io/status"].is_null(), "patched after uninstall: {}", pod["metadata"]);

    drop(apps);
    drop(system);
    let _ = std::fs::remove_dir_all(&work);
}
