//! Real clients besides OpenSSH's, paramiko and sshfs: asyncssh (PyPI, for the system python,
//! installed by tests/lib/install-deps under $PODSFTP_CACHE/python) and Debian 12's rclone 1.60
//! (an older pkg/sftp that pads WRITE packets).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn python_packages() -> PathBuf {
    let cache = std::env::var_os("PODSFTP_CACHE")
        .map_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/podsftp"), PathBuf::from);
    cache.join("python")
}

#[test]
fn asyncssh_creates_the_symlink_where_it_asked() {
    let served = tempfile::tempdir().unwrap();
    let server = Server::start(&["--dir", served.path().to_str().unwrap()]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scripts/asyncssh_client.py");
    let out = Command::new("/usr/bin/python3")
        .env("PYTHONPATH", python_packages())
        .arg(script)
        .args(["127.0.0.1", &server.port.to_string(), USER, PASSWORD])
        .output()
        .expect("run /usr/bin/python3 with asyncssh (tests/lib/install-deps)");
    assert_ok(&out, "asyncssh script");
    assert_eq!(std::fs::read_link(served.path().join("d/s.txt")).unwrap(), PathBuf::from("f.txt"));
    assert!(!served.path().join("f.txt").is_symlink(), "asyncssh made the link at the target's place");
}

#[test]
fn rclone_1_60_uploads_lists_and_downloads() {
    let served = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let server = Server::start(&["--dir", served.path().to_str().unwrap()]);
    random_file(&local.path().join("up.bin"), 3 * 1024 * 1024 + 17);
    std::fs::write(local.path().join("small.txt"), "small").unwrap();
    let remote = format!(
        ":sftp,host=127.0.0.1,port={},user={USER},key_file={},disable_hashcheck=true:",
        server.port,
        server.creds.client_key.display()
    );
    let rclone = |args: &[&str]| {
        let out = Command::new("rclone")
            .args(["--config", "/dev/null", "--retries", "1", "--low-level-retries", "1"])
            .args(args)
            .output()
            .expect("run rclone");
        assert_ok(&out, &format!("rclone {args:?}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let local_dir = local.path().to_str().unwrap();
    rclone(&["copy", local_dir, &format!("{remote}up")]);
    assert_eq!(sha256_file(&served.path().join("up/up.bin")), sha256_file(&local.path().join("up.bin")));
    let listing = rclone(&["lsf", &format!("{remote}up")]);
    assert_eq!(listing.lines().collect::<Vec<_>>(), ["small.txt", "up.bin"]);
    rclone(&["moveto", &format!("{remote}up/small.txt"), &format!("{remote}up/moved.txt")]);
    let back = tempfile::tempdir().unwrap();
    rclone(&["copy", &format!("{remote}up"), back.path().to_str().unwrap()]);
    assert_eq!(sha256_file(&back.path().join("up.bin")), sha256_file(&local.path().join("up.bin")));
    assert_eq!(std::fs::read(back.path().join("moved.txt")).unwrap(), b"small");
    rclone(&["purge", &format!("{remote}up")]);
    assert!(!served.path().join("up").exists());
}
