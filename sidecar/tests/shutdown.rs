//! SIGTERM: no new connections, `/readyz` says so, the running transfer finishes, then the
//! process exits.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;

#[test]
fn sigterm_lets_the_running_transfer_finish() {
    let served = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    random_file(&served.path().join("file.bin"), 16 * 1024 * 1024);
    let mut server = Server::start(&["--dir", served.path().to_str().unwrap()]);
    let mut script = tempfile::NamedTempFile::new().unwrap();
    writeln!(script, "get file.bin {}/file.bin", local.path().display()).unwrap();
    // -l: 40 Mbit/s, so the 16 MiB transfer takes about 3 s.
    let transfer = server
        .with_key("sftp")
        .args(["-l", "40000", "-P", &server.port.to_string(), "-b"])
        .arg(script.path())
        .arg(server.destination())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(std::process::Command::new("kill").args(["-TERM", &server.pid().to_string()]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(300));
    assert!(TcpStream::connect(("127.0.0.1", server.port)).is_err(), "still accepting after SIGTERM");
    let (code, body) = server.http("/readyz");
    assert_eq!((code, body.trim()), (503, "shutting down"), "/readyz during the grace period");
    let out = transfer.wait_with_output().unwrap();
    assert_ok(&out, "transfer running during SIGTERM");
    assert_eq!(sha256_file(&local.path().join("file.bin")), sha256_file(&served.path().join("file.bin")));
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status after SIGTERM: {status}");
}
