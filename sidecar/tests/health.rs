//! The health listener when the process is out of file descriptors: it pauses between accept
//! attempts instead of spinning on the connection it cannot take, and answers again once
//! descriptors are free.

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Credentials, Server};

/// CPU seconds (user + system) the process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let (_, after_name) = stat.rsplit_once(')').unwrap();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); 12 and 13 after the name and state.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[test]
fn accept_errors_pause_instead_of_spinning() {
    let served = tempfile::tempdir().unwrap();
    let served_dir = served.path().to_str().unwrap();
    let server =
        Server::start_wrapped(Credentials::new(), &["prlimit", "--nofile=40", "--"], Path::new(common::bin()), &["--dir", served_dir]);
    // Connections that never send a request are held until the read deadline (5 s): together
    // they take every descriptor the process has left, and the rest wait in the backlog.
    let health = ("127.0.0.1", server.health_port);
    let idle: Vec<TcpStream> = (0..60).map(|_| TcpStream::connect(health).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_seconds(server.pid());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_seconds(server.pid()) - before;
    assert!(used < 0.5, "{used:.2} s of CPU in 2 s while out of descriptors: the accept loop spins\n{}", server.log());
    assert!(server.log().contains("accept failed"), "no accept error seen; the test did not exhaust descriptors\n{}", server.log());
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.http("/healthz").0 != 200 {
        assert!(Instant::now() < deadline, "health endpoint did not recover\n{}", server.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}
