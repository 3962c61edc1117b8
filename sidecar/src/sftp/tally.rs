//! What one SFTP session did, counted where it is known and reported to the front end, which
//! serves `/metrics` (`crate::metrics`): requests by kind (the request table's names) and the
//! status of their replies.
//!
//! Why counted here: the session runs in its own worker process, with the served container's
//! identity, and only the engine knows each request's kind and the status it got. The front end
//! relays the channel's bytes without parsing them; to learn the same it would have to frame
//! the stream in both directions and pair replies with request ids, on the data path of every
//! packet. Here it costs one relaxed atomic increment per reply (one session per worker process,
//! so the process-wide table is the session's), and a reporter thread writes the table as one
//! line to a pipe the front end gave the worker (`--report-fd`): every few seconds while it
//! changes, and once when the session ends. Reports are cumulative: the front end adds the
//! differences, so a report that never arrives (a killed worker) loses only what came after the
//! previous one.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use super::codec::{Response, StatusCode};
use super::requests::Kind;

/// How often a running session's counts reach the front end (Prometheus scrapes every 15-60 s).
const REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// The reporter only sleeps, copies the table and writes a line.
const REPORTER_STACK: usize = 64 * 1024;

/// The status label of each column; replies that are not a STATUS (a handle, data, names,
/// attributes) are successes and count as `ok`. Lower-case `SSH_FX_*` names.
pub const STATUSES: [&str; 7] = ["ok", "eof", "no_such_file", "permission_denied", "failure", "bad_message", "op_unsupported"];

const KINDS: usize = Kind::ALL.len();

/// Replies by request kind (row, `Kind as usize`) and status (column, [`column`]).
static REPLIES: [[AtomicU64; STATUSES.len()]; KINDS] = [const { [const { AtomicU64::new(0) }; STATUSES.len()] }; KINDS];

fn column(code: StatusCode) -> usize {
    match code {
        StatusCode::Ok => 0,
        StatusCode::Eof => 1,
        StatusCode::NoSuchFile => 2,
        StatusCode::PermissionDenied => 3,
        StatusCode::Failure => 4,
        StatusCode::BadMessage => 5,
        StatusCode::OpUnsupported => 6,
    }
}

/// Counts the reply to a request of `kind`.
pub fn count(kind: Kind, response: &Response) {
    let code = match response {
        Response::Status { code, .. } => *code,
        _ => StatusCode::Ok,
    };
    REPLIES[kind as usize][column(code)].fetch_add(1, Ordering::Relaxed);
}

/// Replies counted so far, by request kind and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts([[u64; STATUSES.len()]; KINDS]);

impl Default for Counts {
    fn default() -> Self {
        Counts([[0; STATUSES.len()]; KINDS])
    }
}

impl Counts {
    /// This process's table now.
    pub fn now() -> Counts {
        let mut counts = Counts::default();
        for (row, cells) in counts.0.iter_mut().zip(&REPLIES) {
            for (count, cell) in row.iter_mut().zip(cells) {
                *count = cell.load(Ordering::Relaxed);
            }
        }
        counts
    }

    /// One report line: `kind.status=count` for every non-zero cell, by table index.
    pub fn encode(&self) -> String {
        let mut line = String::new();
        for (kind, row) in self.0.iter().enumerate() {
            for (status, count) in row.iter().enumerate().filter(|(_, count)| **count > 0) {
                line.push_str(&format!("{kind}.{status}={count} "));
            }
        }
        line.push('\n');
        line
    }

    /// A report line back; cells it cannot read are left at zero.
    pub fn decode(line: &str) -> Counts {
        let mut counts = Counts::default();
        for cell in line.split_ascii_whitespace() {
            let parsed = cell.split_once('=').and_then(|(at, count)| {
                let (kind, status) = at.split_once('.')?;
                Some((kind.parse::<usize>().ok()?, status.parse::<usize>().ok()?, count.parse::<u64>().ok()?))
            });
            if let Some((kind, status, count)) = parsed
                && let Some(cell) = counts.0.get_mut(kind).and_then(|row| row.get_mut(status))
            {
                *cell = count;
            }
        }
        counts
    }

    /// `(kind, status label, increase)` for every cell that grew since `earlier`.
    pub fn increase_since<'a>(&'a self, earlier: &'a Counts) -> impl Iterator<Item = (Kind, &'static str, u64)> + 'a {
        Kind::ALL.into_iter().zip(self.0.iter().zip(&earlier.0)).flat_map(|(kind, (now, before))| {
            STATUSES
                .into_iter()
                .zip(now.iter().zip(before))
                .filter(|(_, (now, before))| now > before)
                .map(move |(status, (now, before))| (kind, status, now - before))
        })
    }
}

/// Runs `session` while a reporter thread writes this process's counts to `reports` whenever
/// they changed, every [`REPORT_INTERVAL`], and once more after the session ended.
pub fn reporting<T>(mut reports: File, session: impl FnOnce() -> T) -> T {
    let (done, stop) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let reporter = std::thread::Builder::new().name("report".into()).stack_size(REPORTER_STACK).spawn_scoped(scope, move || {
            let mut sent = Counts::default();
            loop {
                let last = !matches!(stop.recv_timeout(REPORT_INTERVAL), Err(mpsc::RecvTimeoutError::Timeout));
                let now = Counts::now();
                // A front end that stopped reading only loses counts: the session goes on.
                if now != sent && reports.write_all(now.encode().as_bytes()).is_err() {
                    return;
                }
                sent = now;
                if last {
                    return;
                }
            }
        });
        if let Err(e) = &reporter {
            // The session matters more than its counts.
            tracing::warn!(error = %e, "cannot start the thread reporting this session's operations");
        }
        let result = session();
        drop(done);
        if let Ok(reporter) = reporter {
            let _ = reporter.join();
        }
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_rows_are_the_request_kinds_in_order() {
        for (index, kind) in Kind::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, index, "{kind:?}");
        }
        for code in [
            StatusCode::Ok,
            StatusCode::Eof,
            StatusCode::NoSuchFile,
            StatusCode::PermissionDenied,
            StatusCode::Failure,
            StatusCode::BadMessage,
            StatusCode::OpUnsupported,
        ] {
            assert_eq!(STATUSES[column(code)].replace('_', ""), format!("{code:?}").to_lowercase());
        }
    }

    #[test]
    fn a_report_decodes_to_the_counts_it_was_made_from_and_garbage_to_nothing() {
        let mut counts = Counts::default();
        counts.0[Kind::Read as usize][column(StatusCode::Eof)] = 3;
        counts.0[Kind::UnknownExtended as usize][column(StatusCode::OpUnsupported)] = u64::MAX;
        assert_eq!(Counts::decode(&counts.encode()), counts);
        for garbage in ["", "\n", "99.0=1", "0.99=1", "x.0=1", "0.0=-1", "0.0", "=", "1.2.3=4 0.0=1x"] {
            assert_eq!(Counts::decode(garbage), Counts::default(), "{garbage:?}");
        }
    }

    #[test]
    fn increases_name_the_request_and_the_status() {
        let mut before = Counts::default();
        before.0[Kind::Open as usize][0] = 2;
        let mut now = before.clone();
        now.0[Kind::Open as usize][0] = 5;
        now.0[Kind::Stat as usize][column(StatusCode::NoSuchFile)] = 1;
        let increases: Vec<_> = now.increase_since(&before).collect();
        assert_eq!(increases, [(Kind::Open, "ok", 3), (Kind::Stat, "no_such_file", 1)]);
        assert_eq!(before.increase_since(&now).count(), 0, "a lower count is no increase");
    }
}
