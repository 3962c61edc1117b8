//! Refusals: wrong logins, shell/exec, malformed SFTP streams. Each is refused clearly and the
//! server keeps serving the next session.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

fn still_serves(server: &Server) {
    let out = server.sftp_batch("ls /\n");
    assert_ok(&out, "a normal session after bad input");
}

#[test]
fn wrong_password_unknown_user_and_wrong_key_are_refused() {
    let served = tempfile::tempdir().unwrap();
    let server = Server::start(&["--dir", served.path().to_str().unwrap()]);
    let port = server.port.to_string();

    let out =
        server.with_password("sftp", "wrong-password").args(["-P", &port, "-b", "/dev/null"]).arg(server.destination()).output().unwrap();
    assert!(!out.status.success(), "wrong password accepted");
    let out = server.with_password("sftp", PASSWORD).args(["-P", &port, "-b", "/dev/null", "root@127.0.0.1"]).output().unwrap();
    assert!(!out.status.success(), "unknown user accepted with the right password");

    let other = tempfile::tempdir().unwrap();
    let key = other.path().join("k");
    assert!(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status().unwrap().success());
    let out = Command::new("sftp")
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
        ])
        .arg(&key)
        .args(["-P", &port, "-b", "/dev/null"])
        .arg(server.destination())
        .output()
        .unwrap();
    assert!(!out.status.success(), "unknown key accepted");
    let log = server.log();
    assert!(log.contains("authentication failed"), "{log}");
    assert!(!log.contains("wrong-password"), "a password reached the log");
    still_serves(&server);
}

#[test]
fn shell_exec_and_other_subsystems_are_refused() {
    let served = tempfile::tempdir().unwrap();
    let server = Server::start(&["--dir", served.path().to_str().unwrap()]);
    let port = server.port.to_string();
    let out = server.with_key("ssh").args(["-p", &port]).arg(server.destination()).arg("touch /tmp/podsftp-exec-test").output().unwrap();
    assert!(!out.status.success(), "exec accepted");
    assert!(!std::path::Path::new("/tmp/podsftp-exec-test").exists());
    let out = server.with_key("ssh").args(["-p", &port, "-tt"]).arg(server.destination()).stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success(), "shell accepted");
    let out =
        server.with_key("ssh").args(["-p", &port, "-s"]).arg(server.destination()).arg("netconf").stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success(), "unknown subsystem accepted");
    let out = server
        .with_key("ssh")
        .args(["-p", &port, "-N", "-L", "0:127.0.0.1:22", "-o", "ExitOnForwardFailure=yes"])
        .arg(server.destination())
        .output()
        .unwrap();
    assert!(!out.status.success(), "TCP forwarding accepted");
    still_serves(&server);
}

/// Sends raw bytes into the sftp subsystem and returns how the session ended.
fn raw_sftp(server: &Server, bytes: &[u8]) -> std::process::Output {
    let mut child = raw_sftp::subsystem(server).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(bytes);
    drop(stdin);
    child.wait_with_output().unwrap()
}

const INIT: &[u8] = &[0, 0, 0, 5, 1, 0, 0, 0, 3];

#[test]
fn oversized_and_truncated_packets_close_only_that_session() {
    let served = tempfile::tempdir().unwrap();
    let server = Server::start(&["--dir", served.path().to_str().unwrap()]);

    let mut oversized = INIT.to_vec();
    oversized.extend_from_slice(&0x1000_0000u32.to_be_bytes());
    oversized.extend_from_slice(&[17; 64]);
    let out = raw_sftp(&server, &oversized);
    assert!(!out.status.success(), "oversized packet: session ended with success");
    // The VERSION reply came before the bad packet.
    assert_eq!(out.stdout.get(4), Some(&2), "no VERSION reply: {:?}", out.stdout);

    let mut truncated = INIT.to_vec();
    truncated.extend_from_slice(&100u32.to_be_bytes());
    truncated.extend_from_slice(&[17, 0, 0, 0, 1]);
    let out = raw_sftp(&server, &truncated);
    assert!(!out.status.success(), "truncated packet: session ended with success");

    // A packet whose fields run past its length.
    let mut garbage = INIT.to_vec();
    garbage.extend_from_slice(&[0, 0, 0, 9, 17, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);
    let out = raw_sftp(&server, &garbage);
    assert!(!out.status.success(), "malformed packet: session ended with success");

    let log = server.log();
    assert!(log.contains("more than the"), "{log}");
    assert!(log.contains("in the middle of a packet"), "{log}");
    assert!(log.contains("malformed packet"), "{log}");
    still_serves(&server);
}
