//! The sidecar's Prometheus metrics, served as `/metrics` on the health listener (`health`), in
//! the webhook's style (`prometheus-client`, text format).
//!
//! Each count is taken where it is known, by the process that knows it:
//! - logins, sessions (a logged-in connection) and worker starts in the front end (`ssh`), as
//!   they happen;
//! - bytes are what the front end relays between a client's SFTP channels and their workers
//!   (file data plus SFTP framing), counted beside the per-connection totals of the audit line,
//!   so they are live during long transfers;
//! - SFTP operations in the worker that runs the session, a separate process with the app's
//!   identity: it reports them over a pipe (`sftp::tally` says why there and how);
//! - credential reloads from the credentials watch, readiness from the readiness loop.
//!
//! Every label value is a fixed string of this program: nothing a client sends (a user name,
//! a path, an extension name) becomes a label, so no client can grow the series.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::watch;

use crate::credentials::State;
use crate::sftp::requests::Kind;
use crate::sftp::tally::{Counts, STATUSES};

type Labels = Vec<(&'static str, &'static str)>;

/// Login methods, as the `method` label.
pub const METHODS: [&str; 2] = ["password", "publickey"];
/// Outcomes of a login attempt, as the `result` label: the credentials matched; they did not;
/// not checked (the source is penalized, password checks are over their rate, or no session
/// slot is free).
pub const AUTH_RESULTS: [&str; 3] = ["accepted", "rejected", "refused"];
/// Why a logged-in session ended, as the `reason` label (see [`end_reason`]).
pub const END_REASONS: [&str; 4] = ["closed", "disconnected", "timeout", "error"];

/// Longest report line read from a worker (a full table is below 5 KiB).
const REPORT_LINE_LIMIT: u64 = 64 * 1024;

pub struct Metrics {
    registry: Registry,
    sessions_started: Counter,
    sessions_active: Gauge,
    sessions_ended: Family<Labels, Counter>,
    auth_attempts: Family<Labels, Counter>,
    received: Counter,
    sent: Counter,
    operations: Family<Labels, Counter>,
    worker_spawn_failures: Counter,
    credential_reloads: Family<Labels, Counter>,
    ready: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("podsftp_sidecar");
        let sessions_started = Counter::default();
        registry.register("sessions_started", "Logins that opened a session", sessions_started.clone());
        let sessions_active = Gauge::default();
        registry.register("sessions_active", "Sessions (logged-in connections) open now", sessions_active.clone());
        let sessions_ended = Family::<Labels, Counter>::default();
        registry.register(
            "sessions_ended",
            "Sessions ended, by reason: closed by the client, disconnected (hang-up), timeout (inactivity or keepalive), error",
            sessions_ended.clone(),
        );
        let auth_attempts = Family::<Labels, Counter>::default();
        registry.register(
            "auth_attempts",
            "Login attempts by method and result: accepted, rejected (wrong credentials), refused (not checked: penalty, rate or no session slot)",
            auth_attempts.clone(),
        );
        let received = Counter::default();
        registry.register("received_bytes", "Bytes received from clients on SFTP channels", received.clone());
        let sent = Counter::default();
        registry.register("sent_bytes", "Bytes sent to clients on SFTP channels", sent.clone());
        let operations = Family::<Labels, Counter>::default();
        registry.register("sftp_operations", "SFTP requests answered, by operation and status", operations.clone());
        let worker_spawn_failures = Counter::default();
        registry.register(
            "worker_spawn_failures",
            "SFTP channels refused because no worker could be started (served process not found or unreachable, spawn error)",
            worker_spawn_failures.clone(),
        );
        let credential_reloads = Family::<Labels, Counter>::default();
        registry.register("credential_reloads", "Changed credentials read, by result (ok, error)", credential_reloads.clone());
        let ready = Gauge::default();
        registry.register("ready", "1 when /readyz answers 200 (credentials loaded, served root reachable)", ready.clone());
        // Series that alerts take rates of exist from the start, so their first increase counts.
        for method in METHODS {
            for result in AUTH_RESULTS {
                let _ = auth_attempts.get_or_create(&vec![("method", method), ("result", result)]);
            }
        }
        for reason in END_REASONS {
            let _ = sessions_ended.get_or_create(&vec![("reason", reason)]);
        }
        for result in ["ok", "error"] {
            let _ = credential_reloads.get_or_create(&vec![("result", result)]);
        }
        // Likewise the successes of every request we implement: a series born at its first count
        // would hide that count from rate() (a real Prometheus showed it). Other statuses appear
        // when they first occur, so a pod's series stay few.
        for kind in Kind::ALL.into_iter().filter(|kind| !matches!(kind, Kind::Unknown | Kind::UnknownExtended)) {
            let _ = operations.get_or_create(&vec![("operation", kind.row().name), ("status", STATUSES[0])]);
        }
        Metrics {
            registry,
            sessions_started,
            sessions_active,
            sessions_ended,
            auth_attempts,
            received,
            sent,
            operations,
            worker_spawn_failures,
            credential_reloads,
            ready,
        }
    }
}

/// The `reason` label for how a logged-in session's connection ended.
pub fn end_reason(result: &Result<(), russh::Error>) -> &'static str {
    match result {
        Ok(()) | Err(russh::Error::Disconnect) => "closed",
        Err(russh::Error::HUP) => "disconnected",
        Err(russh::Error::InactivityTimeout | russh::Error::KeepaliveTimeout | russh::Error::ConnectionTimeout) => "timeout",
        Err(_) => "error",
    }
}

impl Metrics {
    /// `method` is one of [`METHODS`], `result` one of [`AUTH_RESULTS`].
    pub fn auth_attempt(&self, method: &'static str, result: &'static str) {
        self.auth_attempts.get_or_create(&vec![("method", method), ("result", result)]).inc();
    }

    pub fn session_started(&self) {
        self.sessions_started.inc();
        self.sessions_active.inc();
    }

    pub fn session_ended(&self, reason: &'static str) {
        self.sessions_active.dec();
        self.sessions_ended.get_or_create(&vec![("reason", reason)]).inc();
    }

    pub fn received(&self, bytes: usize) {
        self.received.inc_by(bytes as u64);
    }

    pub fn sent(&self, bytes: usize) {
        self.sent.inc_by(bytes as u64);
    }

    pub fn worker_spawn_failed(&self) {
        self.worker_spawn_failures.inc();
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Adds a worker's reports (`sftp::tally`) until its pipe closes.
    pub async fn add_reports(&self, reports: tokio::net::unix::pipe::Receiver) {
        let mut reports = BufReader::new(reports);
        let mut line = Vec::new();
        let mut counted = Counts::default();
        loop {
            line.clear();
            match (&mut reports).take(REPORT_LINE_LIMIT).read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let now = Counts::decode(&String::from_utf8_lossy(&line));
            for (kind, status, increase) in now.increase_since(&counted) {
                self.operations.get_or_create(&vec![("operation", kind.row().name), ("status", status)]).inc_by(increase);
            }
            counted = now;
        }
    }

    /// Counts every change of the credentials from now on (the first load is no reload).
    pub fn count_reloads(self: Arc<Self>, mut credentials: watch::Receiver<State>) {
        tokio::spawn(async move {
            while credentials.changed().await.is_ok() {
                let result = if credentials.borrow_and_update().is_ok() { "ok" } else { "error" };
                self.credential_reloads.get_or_create(&vec![("result", result)]).inc();
            }
        });
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
