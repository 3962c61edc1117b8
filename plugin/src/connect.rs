//! `kubectl sftp connect`: the local OpenSSH `sftp` with the owner's generated client key and its
//! host key pinned, both in a private temporary directory that is removed afterwards. No prompt
//! and no trust on first use: a server showing any other host key is refused by `sftp` itself.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, ExitStatus};

use crate::login::Login;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot write the temporary key files")]
    TempFiles(#[source] std::io::Error),
    #[error("cannot run sftp (is OpenSSH's sftp client installed and on PATH?)")]
    Spawn(#[source] std::io::Error),
}

/// The known_hosts line pinning `host_key` for `host:port` (OpenSSH writes non-22 ports as
/// `[host]:port`).
pub fn known_hosts_line(host: &str, port: u16, host_key: &str) -> String {
    let pattern = if port == 22 { host.to_string() } else { format!("[{host}]:{port}") };
    format!("{pattern} {}\n", host_key.trim())
}

/// `sftp`'s arguments: the key, the pinned host key, `extra` (the user's own options, e.g.
/// `-b batchfile`), then `user@host`.
pub fn sftp_args(login: &Login, key: &Path, known_hosts: &Path, extra: &[String]) -> Vec<String> {
    let quoted = |path: &Path| format!("\"{}\"", path.display());
    let mut args: Vec<String> = [
        "-i".to_string(),
        key.display().to_string(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        format!("UserKnownHostsFile={}", quoted(known_hosts)),
        "-o".into(),
        "GlobalKnownHostsFile=/dev/null".into(),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        "HostKeyAlgorithms=ssh-ed25519".into(),
        "-P".into(),
        login.port.to_string(),
    ]
    .into();
    args.extend(extra.iter().cloned());
    let host = if login.host.contains(':') { format!("[{}]", login.host) } else { login.host.clone() };
    args.push(format!("{}@{host}", login.username));
    args
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(contents.as_bytes())?;
    // OpenSSH refuses a private key without its final newline in some versions.
    if !contents.ends_with('\n') {
        file.write_all(b"\n")?;
    }
    Ok(())
}

/// Runs `sftp` for `login` with `client_key` until it exits; the key files are gone afterwards.
pub fn run_sftp(login: &Login, client_key: &str, extra: &[String]) -> Result<ExitStatus, ConnectError> {
    // A directory of its own (mode 0700), so no other user can even see the file names.
    let dir = tempfile::Builder::new().prefix("kubectl-sftp-").tempdir().map_err(ConnectError::TempFiles)?;
    let key = dir.path().join("id_ed25519");
    let known_hosts = dir.path().join("known_hosts");
    write_private(&key, client_key).map_err(ConnectError::TempFiles)?;
    write_private(&known_hosts, &known_hosts_line(&login.host, login.port, &login.host_key)).map_err(ConnectError::TempFiles)?;
    let status = Command::new("sftp").args(sftp_args(login, &key, &known_hosts, extra)).status().map_err(ConnectError::Spawn)?;
    drop(dir);
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_lines_as_openssh_writes_them() {
        assert_eq!(known_hosts_line("10.0.0.1", 2222, "ssh-ed25519 AAAA x\n"), "[10.0.0.1]:2222 ssh-ed25519 AAAA x\n");
        assert_eq!(known_hosts_line("sftp.example.com", 22, "ssh-ed25519 AAAA"), "sftp.example.com ssh-ed25519 AAAA\n");
        assert_eq!(known_hosts_line("fd00::1", 2222, "ssh-ed25519 AAAA"), "[fd00::1]:2222 ssh-ed25519 AAAA\n");
    }

    #[test]
    fn sftp_pins_the_host_key_and_puts_the_users_options_before_the_destination() {
        let login = Login {
            namespace: "shop".into(),
            workload: "Deployment/web".into(),
            host: "fd00::1".into(),
            port: 2222,
            note: None,
            username: "web".into(),
            password: "pw".into(),
            host_key_fingerprint: "SHA256:x".into(),
            host_key: "ssh-ed25519 AAAA".into(),
            sftp_command: String::new(),
            url: String::new(),
        };
        let args = sftp_args(&login, Path::new("/tmp/d/key"), Path::new("/tmp/my dir/known_hosts"), &["-b".into(), "-".into()]);
        let joined = args.join(" ");
        assert!(
            joined.contains(
                "-o UserKnownHostsFile=\"/tmp/my dir/known_hosts\" -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes"
            ),
            "{joined}"
        );
        assert!(joined.starts_with("-i /tmp/d/key -o IdentitiesOnly=yes "), "{joined}");
        assert!(joined.ends_with("-P 2222 -b - web@[fd00::1]"), "{joined}");
    }

    #[test]
    fn private_files_are_mode_0600_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        write_private(&path, "secret").expect("write");
        assert_eq!(std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "secret\n");
        assert!(write_private(&path, "other").is_err(), "an existing file was overwritten");
    }
}
