//! The login: one username, a password and/or authorized keys, and the host key.
//!
//! In a pod they come from the Secret mounted as a directory (keys `username`, `password`,
//! `authorized_keys`, `ssh_host_ed25519_key`). Kubernetes swaps a `..data` symlink when the
//! Secret changes, so the directory is polled (its files are tiny) rather than single files
//! watched. Missing or broken credentials mean "serve nothing, not ready", never a crash.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use podsftp_contract::{password, secret};
use russh::keys::{Algorithm, PrivateKey, PublicKey};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::authorized_keys::{self, AuthorizedKey};

const POLL_INTERVAL: Duration = Duration::from_secs(2);

pub struct Credentials {
    pub username: String,
    password: Option<String>,
    authorized_keys: Vec<AuthorizedKey>,
    pub host_key: PrivateKey,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("authorized_keys", &self.authorized_keys.len())
            .finish()
    }
}

/// Current credentials, or why there are none.
pub type State = Result<Arc<Credentials>, String>;

/// Why the mounted Secret cannot be used; logged with Display only, so each message carries its
/// cause's text and the cause is not also a `source()` (a chain would print it twice).
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{0} is empty")]
    Empty(&'static str),
    #[error("ssh_host_ed25519_key is not an OpenSSH private key: {0}")]
    HostKey(russh::keys::ssh_key::Error),
    #[error("neither password nor authorized_keys is set: nobody could log in")]
    NoLogin,
}

impl Credentials {
    /// Constant-time in the password; the username comparison is folded in so a wrong user and
    /// a wrong password take the same path.
    pub fn password_matches(&self, user: &str, password: &str) -> bool {
        let Some(expected) = &self.password else { return false };
        let user_ok = user.as_bytes().ct_eq(self.username.as_bytes());
        let password_ok = password.as_bytes().ct_eq(expected.as_bytes());
        bool::from(user_ok & password_ok)
    }

    /// Whether `key` may log in as `user` from `client` now: listed, and its `from=` and
    /// `expiry-time=` allow it.
    pub fn key_matches(&self, user: &str, key: &PublicKey, client: IpAddr) -> bool {
        let user_ok = bool::from(user.as_bytes().ct_eq(self.username.as_bytes()));
        let mut listed = self.authorized_keys.iter().filter(|k| k.key.key_data() == key.key_data()).peekable();
        if listed.peek().is_none() {
            return false;
        }
        let allowed = listed.any(|k| k.allows(client, SystemTime::now()));
        if !allowed {
            tracing::info!(%client, "an authorized key was offered, but its from= or expiry-time= refuses this login");
        }
        user_ok && allowed
    }

    /// For local use without `--credentials`: a random password and host key.
    pub fn generate(username: String) -> Credentials {
        let host_key =
            PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519).expect("ed25519 key generation does not fail");
        Credentials { username, password: Some(random_password()), authorized_keys: Vec::new(), host_key }
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }
}

fn random_password() -> String {
    password::generate(|bytes| rustix::rand::getrandom(bytes, rustix::rand::GetRandomFlags::empty()).map(drop)).expect("getrandom")
}

/// Parses `authorized_keys`: comments and blank lines skipped; a line whose options podsftp
/// does not enforce (or holds no key) is refused with one log line saying why.
pub fn parse_authorized_keys(text: &str) -> Vec<AuthorizedKey> {
    let mut keys = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match authorized_keys::parse_line(line) {
            Ok(key) => {
                if let Some(restrictions) = key.restrictions() {
                    tracing::info!(line = index + 1, %restrictions, "authorized_keys: key restricted");
                }
                keys.push(key)
            }
            Err(reason) => tracing::warn!(line = index + 1, %reason, "authorized_keys: key refused"),
        }
    }
    keys
}

/// The raw files, compared between polls to notice changes.
#[derive(PartialEq, Eq)]
struct Snapshot(Vec<Option<Vec<u8>>>);

const FILES: [&str; 4] = [secret::USERNAME, secret::PASSWORD, secret::AUTHORIZED_KEYS, secret::HOST_KEY];

/// The files as they are now; `None` when one cannot be read for lack of resources (out of
/// descriptors or memory), which says nothing about the credentials: the poll is skipped.
fn snapshot(dir: &Path) -> Option<Snapshot> {
    let mut files = Vec::with_capacity(FILES.len());
    for file in FILES {
        match std::fs::read(dir.join(file)) {
            Ok(content) => files.push(Some(content)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM)) => {
                tracing::warn!(error = %e, "cannot read the credentials now; keeping the current ones");
                return None;
            }
            Err(_) => files.push(None),
        }
    }
    Some(Snapshot(files))
}

/// Descriptors set aside for reading the credentials: when connections and workers have used up
/// every descriptor, a reload must still open its files, or a rotated password would not take
/// effect (reading needs one at a time; the rest is margin).
struct Reserve(Vec<std::fs::File>);

const RESERVED_DESCRIPTORS: usize = 4;

impl Reserve {
    fn fill(&mut self) {
        while self.0.len() < RESERVED_DESCRIPTORS {
            match std::fs::File::open("/dev/null") {
                Ok(file) => self.0.push(file),
                Err(_) => return,
            }
        }
    }

    /// Frees the reserved descriptors for the duration of `read`.
    fn around<T>(&mut self, read: impl FnOnce() -> T) -> T {
        self.0.clear();
        let result = read();
        self.fill();
        result
    }
}

pub fn load(dir: &Path) -> Result<Credentials, CredentialsError> {
    let read = |name: &'static str, required: bool| -> Result<Option<String>, CredentialsError> {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(s) if s.trim().is_empty() && required => Err(CredentialsError::Empty(name)),
            Ok(s) if s.trim().is_empty() => Ok(None),
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(None),
            Err(error) => Err(CredentialsError::Read { path, error }),
        }
    };
    let username = read(secret::USERNAME, true)?.unwrap_or_default().trim().to_string();
    // A trailing newline (as `echo` writes) is not part of the password.
    let password = read(secret::PASSWORD, false)?.map(|p| p.trim_end_matches(['\n', '\r']).to_string());
    let authorized_keys = read(secret::AUTHORIZED_KEYS, false)?.map(|t| parse_authorized_keys(&t)).unwrap_or_default();
    let host_key_text = read(secret::HOST_KEY, true)?.unwrap_or_default();
    let host_key = PrivateKey::from_openssh(host_key_text.trim()).map_err(CredentialsError::HostKey)?;
    if password.is_none() && authorized_keys.is_empty() {
        return Err(CredentialsError::NoLogin);
    }
    Ok(Credentials { username, password, authorized_keys, host_key })
}

fn load_state(dir: &Path) -> State {
    if !dir.is_dir() {
        return Err(format!("credentials directory {} does not exist (yet)", dir.display()));
    }
    load(dir).map(Arc::new).map_err(|e| format!("credentials in {}: {e}", dir.display()))
}

/// Loads the directory now and keeps reloading it when its files change.
pub fn watch_dir(dir: PathBuf) -> watch::Receiver<State> {
    let first = load_state(&dir);
    report(&first);
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        let mut reserve = Reserve(Vec::new());
        reserve.fill();
        let mut last = snapshot(&dir);
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            let changed = reserve.around(|| {
                let now = snapshot(&dir)?;
                if Some(&now) == last.as_ref() {
                    return None;
                }
                last = Some(now);
                Some(load_state(&dir))
            });
            let Some(state) = changed else { continue };
            report(&state);
            if tx.send(state).is_err() {
                return;
            }
        }
    });
    rx
}

fn report(state: &State) {
    match state {
        Ok(c) => tracing::info!(
            username = %c.username,
            password = c.password.is_some(),
            authorized_keys = c.authorized_keys.len(),
            host_key = %c.host_key.public_key().fingerprint(Default::default()),
            "credentials loaded"
        ),
        Err(reason) => tracing::warn!(%reason, "no usable credentials: refusing every login"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHAQWEYjPIlQDW3ZmxYEL0s3fJc1ZA7MmbzNAXWXQpCd user@host";

    /// The cause is in the message and not also the source: a reporter that walks the chain
    /// prints it once.
    #[test]
    fn a_read_error_names_its_cause_once() {
        let cause = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let error = CredentialsError::Read { path: PathBuf::from("/etc/podsftp/credentials/password"), error: cause };
        assert!(std::error::Error::source(&error).is_none());
        assert_eq!(error.to_string(), "cannot read /etc/podsftp/credentials/password: permission denied");
    }

    #[test]
    fn authorized_keys_with_options_comments_and_garbage() {
        // A forced command cannot be honoured: that key is refused, not given SFTP.
        let text = format!("# comment\n\n{KEY}\nno-pty,command=\"echo a b\" {KEY}\nno-pty {KEY}\nnot a key\n");
        assert_eq!(parse_authorized_keys(&text).len(), 2);
    }

    #[test]
    fn wide_whitespace_before_a_key_is_skipped_not_a_crash() {
        // Found by the authorized_keys fuzz target: slicing after a 3-byte U+2000 panicked.
        let text = format!("no-pty\u{a0}{KEY}\nrestrict\u{2000}{KEY}\n+\u{2000}\u{3000}x\n");
        assert_eq!(parse_authorized_keys(&text).len(), 2);
    }

    #[test]
    fn wrong_user_and_wrong_password_both_fail() {
        let mut c = Credentials::generate("web".into());
        c.password = Some("secret".into());
        assert!(c.password_matches("web", "secret"));
        assert!(!c.password_matches("web", "secreT"));
        assert!(!c.password_matches("root", "secret"));
        assert!(!c.password_matches("web", ""));
    }

    #[test]
    fn missing_directory_and_files_are_reasons_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_state(&dir.path().join("nope")).unwrap_err().contains("does not exist"));
        assert!(load_state(dir.path()).unwrap_err().contains("username"));
        std::fs::write(dir.path().join("username"), "web\n").unwrap();
        std::fs::write(dir.path().join("ssh_host_ed25519_key"), "garbage").unwrap();
        assert!(load_state(dir.path()).unwrap_err().contains("OpenSSH private key"));
    }
}
