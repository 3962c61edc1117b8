//! podsftp-sidecar: an SSH server offering only the `sftp` subsystem, serving a directory, a
//! process's root (`/proc/<pid>/root`) or a container's root found by `PODSFTP_CONTAINER`.
//!
//! Layout: `ssh` (front end: russh, auth, piping channels to workers), `admission` (who may
//! connect and try to log in), `access` (resolving the
//! target and starting workers), `worker` (one SFTP session in its own process, after taking
//! the target's identity), `sftp` (protocol), `confined` (every path operation), `target`
//! (finding and describing the process to serve), `privilege` (dropping to the target's
//! identity), `credentials` (the watched credentials directory), `authorized_keys` (its key lines and
//! their options), `health` (probes), `listener` (accepting connections), `visible`
//! (client bytes in log lines), `metrics` (what `/metrics` shows), `ring` (requests and replies
//! between the front end and a worker, in shared memory).

pub mod access;
pub mod admission;
pub mod authorized_keys;
pub mod confined;
pub mod credentials;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod privilege;
pub mod ring;
pub mod sftp;
pub mod ssh;
pub mod target;
pub mod visible;
pub mod worker;

/// A mutex's guard even if a thread panicked holding it: a panic aborts the process (release
/// profile), so a poisoned lock only occurs in tests.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
