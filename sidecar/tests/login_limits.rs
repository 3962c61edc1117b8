//! The login limits of a port that faces the internet, against `serve` on loopback: idle
//! unauthenticated connections from one address neither lock out a login from another nor
//! outlive the login deadline, and password guessing from one address is cut to a handful of
//! checks while a login from another address still works.

mod common;

use std::io::Read;
use std::net::{Ipv4Addr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Reads until the server closes the connection; false if it is still open at `deadline`.
fn closed_by(mut stream: TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn idle_unauthenticated_connections_neither_lock_out_nor_outlive_the_deadline() {
    let served = tempfile::tempdir().unwrap();
    let server = Server::start(&["--dir", served.path().to_str().unwrap(), "--login-grace-seconds", "3"]);
    let opened = Instant::now();
    let idle: Vec<TcpStream> = (0..200).map(|_| connect_from(ATTACKER, server.port)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let out = server.sftp_batch_key("ls\n");
    eprintln!("key login from 127.0.0.1 with 200 idle connections from {ATTACKER} open: {:?}", started.elapsed());
    assert_ok(&out, "key login while another address holds 200 idle connections");
    // Refused at once beyond the per-source cap, closed by the 3 s login deadline otherwise.
    let deadline = opened + Duration::from_secs(3 + 3);
    let still_open = idle.into_iter().filter(|s| !closed_by(s.try_clone().unwrap(), deadline)).count();
    assert_eq!(still_open, 0, "idle unauthenticated connections still open after the login deadline\nlog:\n{}", server.log());
}

/// Runs `threads` loops of a stock `ssh` from `source` trying wrong passwords (6 per
/// connection) for `seconds`.
fn guess_passwords(server: &Server, source: Ipv4Addr, threads: usize, seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let port = server.port.to_string();
    let destination = server.destination();
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let (port, destination) = (&port, &destination);
            scope.spawn(move || {
                while Instant::now() < deadline {
                    let _ = Command::new("timeout")
                        .arg(deadline.saturating_duration_since(Instant::now()).as_secs_f64().max(0.1).to_string())
                        .args(["sshpass", "-p", &format!("guess-{thread}"), "ssh", "-b", &source.to_string(), "-p", port])
                        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=QUIET"])
                        .args(["-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password"])
                        .args(["-o", "NumberOfPasswordPrompts=6", "-s", destination, "sftp"])
                        .stdin(std::process::Stdio::null())
                        .output();
                }
            });
        }
    });
}

#[test]
fn password_guessing_from_one_address_is_cut_off_while_others_log_in() {
    let served = tempfile::tempdir().unwrap();
    let server = Server::start(&["--dir", served.path().to_str().unwrap()]);
    let (threads, seconds) = (16, 12);
    let login = std::thread::scope(|scope| {
        scope.spawn(|| guess_passwords(&server, ATTACKER, threads, seconds));
        std::thread::sleep(Duration::from_secs(seconds / 2));
        server.sftp_batch("ls\n")
    });
    assert_ok(&login, "password login from 127.0.0.1 during the attack from 127.0.0.2");
    let log = server.log();
    let checked = log.lines().filter(|l| l.contains("authentication failed") && l.contains(&format!("client={ATTACKER}:"))).count();
    eprintln!("{seconds} s of {threads} parallel ssh password guessers from {ATTACKER}: the server checked {checked} passwords");
    // 8 connections may be logging in at once from one address, each with a check in flight
    // when the penalty starts; after that none until it has run out (40 s).
    assert!(checked <= 16, "{checked} passwords checked from one address in {seconds} s\nlog:\n{log}");
}

#[test]
fn rekeying_before_login_is_bounded() {
    let served = tempfile::tempdir().unwrap();
    let server = Server::start(&["--dir", served.path().to_str().unwrap()]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scripts/rekey_flood.py");
    let out = Command::new("timeout")
        .args(["120", "/usr/bin/python3", script, "127.0.0.1", &server.port.to_string(), "500"])
        .output()
        .expect("run /usr/bin/python3 (python3-paramiko)");
    let printed = String::from_utf8_lossy(&out.stdout);
    let rekeys: usize = printed.trim().strip_prefix("rekeys ").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{printed:?}"));
    eprintln!("key exchanges before the server closed an unauthenticated connection: {rekeys}");
    // Each of paramiko's key exchanges sends about 1.5 KiB; the budget is 64 KiB.
    assert!(rekeys < 100, "{rekeys} key exchanges before logging in\nlog:\n{}", server.log());
    assert!(server.log().contains("before logging in"), "{}", server.log());
}

#[test]
fn a_connection_past_key_exchange_that_never_logs_in_is_closed_at_the_deadline() {
    let served = tempfile::tempdir().unwrap();
    let server = Server::start(&["--dir", served.path().to_str().unwrap(), "--login-grace-seconds", "3"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scripts/kex_then_idle.py");
    let out = Command::new("timeout")
        .args(["60", "/usr/bin/python3", script, "127.0.0.1", &server.port.to_string(), "10"])
        .output()
        .expect("run /usr/bin/python3 (python3-paramiko)");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.starts_with("closed"), "{printed:?}\nlog:\n{}", server.log());
    assert!(server.log().contains("not logged in within 3 s"), "{}", server.log());
}
