//! `/metrics` on the health listener after real OpenSSH clients: a failed login, a session with
//! an upload and a download, and the SFTP operations its worker reported; the chart's dashboard
//! queries only what is exposed, and a real Prometheus scraping the sidecar gets data for them.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The value of the sample `series` (name with labels, as exposed), if present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Scrapes until `done` holds for the exposition (counts arrive as sessions end), or panics.
fn scrape_until(server: &Server, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, metrics) = server.http("/metrics");
        assert_eq!(code, 200, "/metrics: {metrics}");
        if done(&metrics) {
            return metrics;
        }
        assert!(Instant::now() < deadline, "{what} never showed in /metrics:\n{metrics}\nlog:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A sidecar serving a directory with a 1,000,000-byte file, and a 700,000-byte local file to upload.
struct Files {
    server: Server,
    _served: tempfile::TempDir,
    local: tempfile::TempDir,
}

impl Files {
    fn serve() -> Files {
        let served = tempfile::tempdir().unwrap();
        let local = tempfile::tempdir().unwrap();
        random_file(&served.path().join("down.bin"), 1_000_000);
        random_file(&local.path().join("up.bin"), 700_000);
        let server = Server::start(&["--dir", served.path().to_str().unwrap()]);
        Files { server, _served: served, local }
    }

    /// A failed password login, then a session with the upload, the download, a listing and a
    /// failed `rm`; the exposition once the session's counts are in.
    fn session_and_failed_login(&self) -> String {
        let server = &self.server;
        // A failed password login under a user name that must not become a label.
        let mut intruder = server.with_password("sftp", "not-the-password");
        intruder.args(["-P", &server.port.to_string(), "-b", "/dev/null", "intruder-name-7f3a@127.0.0.1"]);
        assert!(!intruder.output().unwrap().status.success(), "a wrong password logged in");

        let l = self.local.path().display();
        let out = server.sftp_batch(&format!("put {l}/up.bin up.bin\nget down.bin {l}/down.bin\nls -l\nrm missing.bin\n"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("up.bin"), "the batch did not run: {stdout}");

        scrape_until(server, "the ended session and its operations", |m| {
            sample(m, r#"podsftp_sidecar_sessions_ended_total{reason="closed"}"#) == Some(1.0)
                && sample(m, r#"podsftp_sidecar_sftp_operations_total{operation="remove",status="no_such_file"}"#) == Some(1.0)
        })
    }
}

fn scrape_after_a_session_and_a_failed_login() -> String {
    Files::serve().session_and_failed_login()
}

#[test]
fn a_session_its_bytes_and_a_failed_login_show_in_metrics() {
    let metrics = scrape_after_a_session_and_a_failed_login();
    let value = |series: &str| sample(&metrics, series).unwrap_or_else(|| panic!("no {series} in\n{metrics}"));
    assert_eq!(value(r#"podsftp_sidecar_auth_attempts_total{method="password",result="rejected"}"#), 1.0);
    assert_eq!(value(r#"podsftp_sidecar_auth_attempts_total{method="password",result="accepted"}"#), 1.0);
    assert_eq!(value("podsftp_sidecar_sessions_started_total"), 1.0);
    assert_eq!(value("podsftp_sidecar_sessions_active"), 0.0);
    // File data plus SFTP framing: a little more than the files, far less than twice.
    let received = value("podsftp_sidecar_received_bytes_total");
    let sent = value("podsftp_sidecar_sent_bytes_total");
    assert!((700_000.0..800_000.0).contains(&received), "received {received}");
    assert!((1_000_000.0..1_100_000.0).contains(&sent), "sent {sent}");
    // Every write and read succeeded (at most 256 KiB each, `limits@openssh.com`); reading hit the end.
    assert!(value(r#"podsftp_sidecar_sftp_operations_total{operation="write",status="ok"}"#) >= 3.0, "{metrics}");
    assert!(value(r#"podsftp_sidecar_sftp_operations_total{operation="read",status="ok"}"#) >= 4.0, "{metrics}");
    assert!(value(r#"podsftp_sidecar_sftp_operations_total{operation="read",status="eof"}"#) >= 1.0, "{metrics}");
    assert!(value(r#"podsftp_sidecar_sftp_operations_total{operation="open",status="ok"}"#) >= 2.0, "{metrics}");
    assert!(value(r#"podsftp_sidecar_sftp_operations_total{operation="readdir",status="eof"}"#) >= 1.0, "{metrics}");
    assert_eq!(value("podsftp_sidecar_worker_spawn_failures_total"), 0.0);
    assert_eq!(value("podsftp_sidecar_ready"), 1.0);
    assert!(!metrics.contains("intruder"), "a failed attempt's user name is in /metrics:\n{metrics}");
    assert!(!metrics.contains(USER), "the user name is in /metrics:\n{metrics}");
}

/// Every `podsftp_sidecar_` metric the chart's Grafana dashboard queries is one the sidecar
/// exposes (the webhook's are checked by its own tests).
#[test]
fn the_dashboard_queries_only_metrics_the_sidecar_exposes() {
    let metrics = scrape_after_a_session_and_a_failed_login();
    let problems = podsftp_test_support::dashboard::problems(&metrics, |name| name.starts_with("podsftp_sidecar_"));
    assert!(problems.is_empty(), "{}\n/metrics:\n{metrics}", problems.join("\n"));
}

#[test]
fn a_credential_reload_is_counted() {
    let served = tempfile::tempdir().unwrap();
    let server = Server::start(&["--dir", served.path().to_str().unwrap()]);
    let password = server.creds.dir.path().join("password");
    std::fs::remove_file(&password).unwrap();
    std::fs::write(&password, "a-rotated-password-of-some-length").unwrap();
    scrape_until(&server, "the reload", |m| sample(m, r#"podsftp_sidecar_credential_reloads_total{result="ok"}"#) == Some(1.0));
}

/// A real Prometheus (Debian 12's 2.42, installed by `tests/lib/install-deps`) scraping one
/// sidecar's `/metrics` every second, as the chart's PodMonitor would (labels `namespace`, `pod`),
/// its data in a temporary directory; stopped when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target_port: u16) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\nscrape_configs:\n  - job_name: podsftp-sidecar\n    \
                 static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n        labels: {{namespace: shop, pod: web-0}}\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus (Debian package `prometheus`, see tests/lib/install-deps)");
        Prometheus { child, port, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The result of an API call (`/api/v1/query` with `query`, ...); `None` while Prometheus does
    /// not answer.
    fn api(&self, path: &str, parameters: &[(&str, &str)]) -> Option<Value> {
        let mut curl = Command::new("curl");
        curl.args(["-sfG", "--max-time", "5"]).arg(format!("http://127.0.0.1:{}{path}", self.port));
        for (name, value) in parameters {
            curl.arg("--data-urlencode").arg(format!("{name}={value}"));
        }
        let out = curl.output().expect("curl");
        let answer: Value = serde_json::from_slice(&out.stdout).ok()?;
        (answer["status"] == "success").then(|| answer["data"].clone())
    }

    /// The samples of an instant query.
    fn query(&self, promql: &str) -> Vec<Value> {
        self.api("/api/v1/query", &[("query", promql)]).and_then(|data| data["result"].as_array().cloned()).unwrap_or_default()
    }

    /// Waits until `promql` has a sample.
    fn wait_for(&self, promql: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.query(promql).is_empty() {
            assert!(Instant::now() < deadline, "Prometheus never had {promql}\nlog:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Grafana's variables as the dashboard uses them: the namespace of the scrape config, rate
/// windows that span several one-second scrapes.
fn as_grafana_sends(expr: &str) -> String {
    expr.replace("$namespace", "shop").replace("$__rate_interval", "1m").replace("$__range", "5m")
}

/// The value of a sample of an instant query.
fn value_of(sample: &Value) -> f64 {
    sample["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

/// A real Prometheus scrapes a sidecar through a session and a failed login: every dashboard
/// query on the sidecar's metrics returns data, and the rates of login failures, bytes and
/// operations are not zero.
#[test]
fn a_real_prometheus_scrapes_the_sidecar_and_the_dashboard_queries_return_data() {
    let files = Files::serve();
    let prometheus = Prometheus::start(files.server.health_port);
    prometheus.wait_for(r#"up{job="podsftp-sidecar"} == 1"#);
    files.session_and_failed_login();
    // Two scrapes of the final counts, so rate() has a window to work on.
    prometheus.wait_for(r#"count_over_time(podsftp_sidecar_sftp_operations_total{operation="remove",status="no_such_file"}[1m]) >= 2"#);

    let sidecar_queries: Vec<String> = podsftp_test_support::dashboard::expressions()
        .into_iter()
        .filter(|expr| podsftp_test_support::dashboard::metric_names(expr).all(|name| name.starts_with("podsftp_sidecar_")))
        .collect();
    assert!(sidecar_queries.len() >= 10, "{sidecar_queries:?}");
    let mut empty = Vec::new();
    for expr in &sidecar_queries {
        if let Some(variable) = expr.strip_prefix("label_values(") {
            // A Grafana function, not PromQL: the label's values among the metric's series.
            let (metric, label) = variable.trim_end_matches(')').split_once(", ").expect("label_values(metric, label)");
            let values = prometheus.api(&format!("/api/v1/label/{label}/values"), &[("match[]", metric)]);
            if !values.and_then(|v| v.as_array().cloned()).unwrap_or_default().contains(&Value::from("shop")) {
                empty.push(expr.clone());
            }
            continue;
        }
        let samples = prometheus.query(&as_grafana_sends(expr));
        if samples.is_empty() {
            empty.push(expr.clone());
        }
        let busy = ["sum by (method, result)", "_bytes_total", "sum by (operation) ("].iter().any(|panel| expr.contains(panel));
        if busy {
            assert!(samples.iter().any(|s| value_of(s) > 0.0), "{expr} is zero after a session and a failed login: {samples:?}");
        }
    }
    assert!(empty.is_empty(), "dashboard queries without data:\n{}\nlog:\n{}", empty.join("\n"), prometheus.log());
}

/// Whether `fd` reads end-of-file (or data) within `wait`.
fn readable_within(fd: &std::os::fd::OwnedFd, wait: Duration) -> bool {
    let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
    let timeout = rustix::event::Timespec { tv_sec: wait.as_secs() as i64, tv_nsec: i64::from(wait.subsec_nanos()) };
    rustix::event::poll(&mut fds, Some(&timeout)).unwrap() > 0
}

/// The front end hands each session's report pipe down without close-on-exec, so a worker
/// started at the same moment for another session inherits it too. A worker closes every
/// descriptor it did not ask for: another session's pipe must not stay open in it (that pipe's
/// reader would wait for the end of an unrelated session), its own must.
#[test]
fn a_worker_keeps_its_report_pipe_and_closes_descriptors_it_did_not_ask_for() {
    use std::os::fd::AsRawFd;
    let served = tempfile::tempdir().unwrap();
    // Without close-on-exec: both are inherited by the worker.
    let (stray, stray_writer) = rustix::pipe::pipe().unwrap();
    let (reports, report_writer) = rustix::pipe::pipe().unwrap();
    let mut worker = Command::new(bin())
        .args(["worker", "sftp", "--path", served.path().to_str().unwrap(), "--user", "u", "--client", "c"])
        .arg(format!("--report-fd={}", report_writer.as_raw_fd()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    drop((stray_writer, report_writer));
    // The worker holds the only write ends left.
    assert!(readable_within(&stray, Duration::from_secs(10)), "the worker kept a descriptor it did not ask for");
    assert!(!readable_within(&reports, Duration::from_millis(500)), "the worker closed its report pipe");
    assert_eq!(worker.try_wait().unwrap(), None, "the worker ended early");
    drop(worker.stdin.take());
    assert!(worker.wait().unwrap().success());
    assert!(readable_within(&reports, Duration::from_secs(1)), "the report pipe outlived the worker");
}
