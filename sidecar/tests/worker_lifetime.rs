//! Every worker ends when its channel or its connection ends, whatever it was waiting for:
//! a stock `sftp` frozen mid-download and then killed, channels closed while their replies wait
//! on a window the client never opens, a TCP drop while the worker has stopped reading (the
//! client flooded requests without reading replies); and a
//! connection's channels stay bounded while closed channels' workers are still exiting.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// "No worker left within a few seconds."
const REAPED_WITHIN: Duration = Duration::from_secs(8);

fn served_big_file(size: usize) -> tempfile::TempDir {
    let served = tempfile::tempdir().unwrap();
    random_file(&served.path().join("big.bin"), size);
    served
}

/// Signals the process group `group` (like Ctrl-Z / closing a terminal does to `sftp` and `ssh`).
fn signal_group(group: u32, name: &str) {
    assert!(Command::new("kill").args([&format!("-{name}"), "--", &format!("-{group}")]).status().unwrap().success());
}

/// Runs tests/scripts/stuck_channels.py in `mode` until it prints "done ...": its line, and the
/// process (still connected until its stdin closes or it is killed).
fn stuck_channels(server: &Server, mode: &str) -> (String, Child) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scripts/stuck_channels.py");
    let mut child = Command::new("/usr/bin/python3")
        .arg(script)
        .args(["127.0.0.1", &server.port.to_string(), USER, PASSWORD, mode])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/python3 (python3-paramiko)");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(120)).unwrap_or_default();
    if !line.starts_with("done") {
        let _ = child.kill();
        panic!("{mode}: {line:?}\nlog:\n{}", server.log());
    }
    (line.trim().to_string(), child)
}

#[test]
fn frozen_then_killed_sftp_leaves_no_worker() {
    let served = served_big_file(64 * 1024 * 1024);
    let local = tempfile::tempdir().unwrap();
    let server = Server::start(&["--dir", served.path().to_str().unwrap()]);
    let mut batch = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut batch, format!("get big.bin {}/big.bin\n", local.path().display()).as_bytes()).unwrap();
    let mut sftp = server
        .with_key("sftp")
        .args(["-P", &server.port.to_string(), "-b"])
        .arg(batch.path())
        .arg(server.destination())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !local.path().join("big.bin").metadata().is_ok_and(|m| m.len() > 0) {
        assert!(std::time::Instant::now() < deadline, "the download did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // sftp and its ssh, as a terminal's Ctrl-Z does.
    signal_group(sftp.id(), "STOP");
    // Long enough for every window and pipe between the worker and the frozen client to fill.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(server.workers().len(), 1, "the download's worker is waiting");
    signal_group(sftp.id(), "KILL");
    let _ = sftp.wait();
    server.wait_no_workers(REAPED_WITHIN);
}

#[test]
fn closed_channels_with_replies_pending_leave_no_worker() {
    let served = served_big_file(4 * 1024 * 1024);
    let server = Server::start(&["--dir", served.path().to_str().unwrap()]);
    // 30 channels in a row on one connection, each closed with its replies unread: more than
    // the 10 a connection may hold, so lingering workers would also make the opens fail.
    let (_, mut client) = stuck_channels(&server, "close-many");
    // The connection is still open: the workers ended because their channels did.
    server.wait_no_workers(REAPED_WITHIN);
    drop(client.stdin.take());
    let _ = client.wait();
}

#[test]
fn channels_stay_bounded_while_workers_wait_after_eof() {
    let served = served_big_file(4 * 1024 * 1024);
    let server = Server::start(&["--dir", served.path().to_str().unwrap()]);
    let (line, mut client) = stuck_channels(&server, "eof-many");
    assert_eq!(line, "done eleventh-refused", "10 channels with a worker each are the limit");
    assert_eq!(server.workers().len(), 10);
    drop(client.stdin.take());
    let _ = client.wait();
    server.wait_no_workers(REAPED_WITHIN);
}

#[test]
fn tcp_drop_while_the_worker_stopped_reading_leaves_no_worker() {
    let served = served_big_file(4 * 1024 * 1024);
    let server = Server::start(&["--dir", served.path().to_str().unwrap()]);
    let (_, mut client) = stuck_channels(&server, "drop");
    assert_eq!(server.workers().len(), 1);
    client.kill().unwrap();
    let _ = client.wait();
    // Its FIN queues behind data the server no longer reads: the stall limit (10 s) ends it.
    server.wait_no_workers(Duration::from_secs(20));
}
