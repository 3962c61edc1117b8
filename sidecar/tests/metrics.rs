//! `/metrics` on the health listener after real OpenSSH clients: a failed login, a session with
//! an upload and a download, and the SFTP operations its worker reported; the chart's dashboard
//! queries only what is exposed.

mod common;

use std::time::{Duration, Instant};

use common::*;

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

/// A failed password login, then a session with a 700,000-byte upload, a 1,000,000-byte
/// download, a listing and a failed `rm`; the exposition once the session's counts are in.
fn scrape_after_a_session_and_a_failed_login() -> String {
    let served = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    random_file(&served.path().join("down.bin"), 1_000_000);
    random_file(&local.path().join("up.bin"), 700_000);
    let server = Server::start(&["--dir", served.path().to_str().unwrap()]);

    // A failed password login under a user name that must not become a label.
    let mut intruder = server.with_password("sftp", "not-the-password");
    intruder.args(["-P", &server.port.to_string(), "-b", "/dev/null", "intruder-name-7f3a@127.0.0.1"]);
    assert!(!intruder.output().unwrap().status.success(), "a wrong password logged in");

    let l = local.path().display();
    let out = server.sftp_batch(&format!("put {l}/up.bin up.bin\nget down.bin {l}/down.bin\nls -l\nrm missing.bin\n"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("up.bin"), "the batch did not run: {stdout}");

    scrape_until(&server, "the ended session and its operations", |m| {
        sample(m, r#"podsftp_sidecar_sessions_ended_total{reason="closed"}"#) == Some(1.0)
            && sample(m, r#"podsftp_sidecar_sftp_operations_total{operation="remove",status="no_such_file"}"#) == Some(1.0)
    })
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
