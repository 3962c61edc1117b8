//! The credentials directory as Kubernetes fills and updates it: empty at start (not ready,
//! every login refused, no crash), filled later through a `..data` symlink swap, rotated.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// Publishes `files` like the kubelet: a new timestamped directory, `..data` swapped to it,
/// and top-level symlinks through `..data`.
fn publish(dir: &Path, generation: u32, files: &[(&str, Vec<u8>)]) {
    let data = dir.join(format!("..{generation}"));
    std::fs::create_dir(&data).unwrap();
    for (name, content) in files {
        std::fs::write(data.join(name), content).unwrap();
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
    let tmp = dir.join("..data_tmp");
    symlink(format!("..{generation}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

#[test]
fn credentials_appear_later_and_rotate_without_restart() {
    let served = tempfile::tempdir().unwrap();
    // Take the generated keys, then start from an empty directory.
    let creds = Credentials::new();
    let read = |name: &str| std::fs::read(creds.dir.path().join(name)).unwrap();
    let (username, keys, host_key) = (read("username"), read("authorized_keys"), read("ssh_host_ed25519_key"));
    let files = |password: &str| {
        vec![
            ("username", username.clone()),
            ("password", password.as_bytes().to_vec()),
            ("authorized_keys", keys.clone()),
            ("ssh_host_ed25519_key", host_key.clone()),
        ]
    };
    let all = files(PASSWORD);
    for f in ["username", "password", "authorized_keys", "ssh_host_ed25519_key"] {
        std::fs::remove_file(creds.dir.path().join(f)).unwrap();
    }
    let server = Server::start_with(creds, &["--dir", served.path().to_str().unwrap()]);
    assert_eq!(server.http("/healthz").0, 200);
    let body = server.wait_ready(503);
    assert!(body.contains("username"), "readyz names what is missing: {body}");
    let out = server.sftp_batch("ls\n");
    assert!(!out.status.success(), "login without credentials");

    publish(server.creds.dir.path(), 1, &all);
    server.wait_ready(200);
    assert_ok(&server.sftp_batch("ls\n"), "login after the Secret appeared");
    assert_ok(&server.sftp_batch_key("ls\n"), "key login after the Secret appeared");

    publish(server.creds.dir.path(), 2, &files("rotated-password-0123456789"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let new = server
            .with_password("sftp", "rotated-password-0123456789")
            .args(["-P", &server.port.to_string(), "-b", "/dev/null"])
            .arg(server.destination())
            .output()
            .unwrap();
        if new.status.success() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "rotated password never worked");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(!server.sftp_batch("ls\n").status.success(), "old password still works");
}

/// Out of descriptors (idle connections hold every one the process may have), a rotated
/// password still takes effect: the reload has descriptors set aside, and a file it cannot open
/// for lack of descriptors never replaces working credentials with "none".
#[test]
fn rotation_takes_effect_while_connections_hold_every_descriptor() {
    let served = tempfile::tempdir().unwrap();
    let creds = Credentials::new();
    let server =
        Server::start_wrapped(creds, &["prlimit", "--nofile=48", "--"], Path::new(bin()), &["--dir", served.path().to_str().unwrap()]);
    // 32 connections may be logging in at once (8 per address), two descriptors each.
    let idle: Vec<_> = (2..=6)
        .flat_map(|last| (0..8).map(move |_| std::net::Ipv4Addr::new(127, 0, 0, last)))
        .map(|source| connect_from(source, server.port))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("Too many open files") {
        assert!(Instant::now() < deadline, "descriptors were not exhausted\n{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(server.creds.dir.path().join("password"), "rotated-while-exhausted-42").unwrap();
    while server.log().matches("credentials loaded").count() < 2 {
        assert!(Instant::now() < deadline + Duration::from_secs(10), "rotation not loaded while out of descriptors\n{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(idle);
    let login = server
        .with_password("sftp", "rotated-while-exhausted-42")
        .args(["-P", &server.port.to_string(), "-b", "/dev/null"])
        .arg(server.destination())
        .output()
        .unwrap();
    assert_ok(&login, "login with the rotated password once descriptors are free");
    assert!(!server.log().contains("no usable credentials"), "{}", server.log());
}
