//! Test harness: a podsftp-sidecar on a free loopback port with its own credentials directory,
//! and helpers that drive the real OpenSSH clients (`sftp`, `scp`, `ssh`) against it.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod app;
pub mod raw_sftp;

pub const USER: &str = "tester";
pub const PASSWORD: &str = "correct-horse-battery-staple-42";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_podsftp-sidecar")
}

pub use podsftp_test_support::free_port;

fn keygen(path: &Path) {
    let status =
        Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"]).arg(path).status().expect("ssh-keygen");
    assert!(status.success());
}

/// A credentials directory laid out like the mounted Secret (files mode 0444).
pub struct Credentials {
    pub dir: tempfile::TempDir,
    /// The client's private key (outside the credentials directory, mode 0600 as ssh wants).
    pub client_key: PathBuf,
    _client_dir: tempfile::TempDir,
}

impl Credentials {
    pub fn new() -> Credentials {
        let dir = tempfile::tempdir().unwrap();
        let client_dir = tempfile::tempdir().unwrap();
        let client_key = client_dir.path().join("id_ed25519");
        keygen(&client_key);
        keygen(&dir.path().join("ssh_host_ed25519_key"));
        std::fs::write(dir.path().join("username"), USER).unwrap();
        std::fs::write(dir.path().join("password"), PASSWORD).unwrap();
        std::fs::copy(client_key.with_extension("pub"), dir.path().join("authorized_keys")).unwrap();
        for f in ["username", "password", "authorized_keys", "ssh_host_ed25519_key"] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path().join(f), std::fs::Permissions::from_mode(0o444)).unwrap();
        }
        Credentials { dir, client_key, _client_dir: client_dir }
    }
}

pub struct Server {
    pub port: u16,
    pub health_port: u16,
    pub creds: Credentials,
    child: Child,
    pub log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Server {
    /// Starts `serve` with `extra` target arguments (e.g. `--dir X`) and waits until it listens.
    pub fn start(extra: &[&str]) -> Server {
        Self::start_with(Credentials::new(), extra)
    }

    pub fn start_with(creds: Credentials, extra: &[&str]) -> Server {
        Self::start_wrapped(creds, &[], Path::new(bin()), extra)
    }

    /// Starts `binary serve ...` through `wrapper` (e.g. `setpriv ... --`, which execs it, so
    /// `pid()` is the server's).
    ///
    /// A port `free_port` found free may be taken by another test's outgoing connection (its
    /// source port comes from the same range) before the server binds it: then new ports.
    pub fn start_wrapped(creds: Credentials, wrapper: &[&str], binary: &Path, extra: &[&str]) -> Server {
        for _ in 0..3 {
            let (port, health_port) = (free_port(), free_port());
            let log_dir = tempfile::tempdir().unwrap();
            let log = log_dir.path().join("server.log");
            let mut command = match wrapper.split_first() {
                Some((program, args)) => {
                    let mut command = Command::new(program);
                    command.args(args).arg(binary);
                    command
                }
                None => Command::new(binary),
            };
            let mut child = command
                .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--health-listen", &format!("127.0.0.1:{health_port}")])
                .arg("--credentials")
                .arg(creds.dir.path())
                .args(extra)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("start podsftp-sidecar");
            if listens(&mut child, port, &log) {
                return Server { port, health_port, creds, child, log, _log_dir: log_dir };
            }
        }
        panic!("three times a port taken before the server could bind it");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's SFTP worker processes right now.
    pub fn workers(&self) -> Vec<u32> {
        let parent = format!("PPid:\t{}\n", self.pid());
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if status.contains(&parent) && cmdline.windows(6).any(|w| w == b"\0sftp\0") {
                found.push(pid);
            }
        }
        found
    }

    /// Waits up to `timeout` until no SFTP worker is left; panics naming the survivors.
    pub fn wait_no_workers(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = self.workers();
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "{} worker(s) still running after {timeout:?}: {left:?}\nlog:\n{}", left.len(), self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the server to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ssh_options(&self) -> Vec<String> {
        ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// An OpenSSH client command logging in with the password through sshpass.
    pub fn with_password(&self, program: &str, password: &str) -> Command {
        let mut cmd = Command::new("sshpass");
        cmd.arg("-p").arg(password).arg(program).args(self.ssh_options());
        cmd.args(["-o", "BatchMode=no", "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password"]);
        cmd.args(["-o", "NumberOfPasswordPrompts=1"]);
        cmd
    }

    /// An OpenSSH client command logging in with the client key.
    pub fn with_key(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(self.ssh_options());
        cmd.args(["-o", "BatchMode=yes", "-o", "PasswordAuthentication=no", "-o", "IdentitiesOnly=yes", "-i"]);
        cmd.arg(&self.creds.client_key);
        cmd
    }

    pub fn destination(&self) -> String {
        format!("{USER}@127.0.0.1")
    }

    /// Runs an `sftp -b` batch with the password; returns the output.
    pub fn sftp_batch(&self, script: &str) -> Output {
        let mut cmd = self.with_password("sftp", PASSWORD);
        self.run_batch(&mut cmd, script)
    }

    pub fn sftp_batch_key(&self, script: &str) -> Output {
        let mut cmd = self.with_key("sftp");
        self.run_batch(&mut cmd, script)
    }

    fn run_batch(&self, cmd: &mut Command, script: &str) -> Output {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(script.as_bytes()).unwrap();
        cmd.arg("-P").arg(self.port.to_string()).arg("-b").arg(file.path()).arg(self.destination());
        cmd.output().expect("run sftp")
    }

    /// Status and body of a GET on the health port (status 0: no HTTP answer).
    pub fn http(&self, path: &str) -> (u16, String) {
        podsftp_test_support::http_get(SocketAddr::from(([127, 0, 0, 1], self.health_port)), path).unwrap_or_default()
    }

    /// Waits until /readyz answers `code` (the server probes every few seconds).
    pub fn wait_ready(&self, code: u16) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (c, body) = self.http("/readyz");
            if c == code {
                return body;
            }
            assert!(Instant::now() < deadline, "readyz stayed {c}: {body}\nlog:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Waits until `child` listens on `port` (true), or exits because the port was taken (false).
fn listens(child: &mut Child, port: u16, log: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    let logged = || std::fs::read_to_string(log).unwrap_or_default();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if child.try_wait().unwrap().is_some() && logged().contains("Address already in use") {
            return false;
        }
        assert!(Instant::now() < deadline, "server did not listen; log:\n{}", logged());
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut f = std::fs::File::open(path).unwrap();
    std::io::copy(&mut f, &mut hasher).unwrap();
    format!("{:x}", hasher.finalize())
}

/// Writes `size` bytes of deterministic pseudo-random data.
pub fn random_file(path: &Path, size: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = size as u64 ^ 0x243f6a8885a308d3;
    let mut written = 0;
    while written < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        let n = bytes.len().min(size - written);
        f.write_all(&bytes[..n]).unwrap();
        written += n;
    }
}

/// A TCP connection to the server from `source` (any 127/8 address is local).
pub fn connect_from(source: Ipv4Addr, port: u16) -> TcpStream {
    let address = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    let size = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a fresh socket, owned by the TcpStream from here; the addresses live across the calls.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let local = address(source, 0);
        assert_eq!(libc::bind(fd, (&raw const local).cast(), size), 0, "bind {source}: {}", std::io::Error::last_os_error());
        let remote = address(Ipv4Addr::LOCALHOST, port);
        assert_eq!(libc::connect(fd, (&raw const remote).cast(), size), 0, "connect: {}", std::io::Error::last_os_error());
        stream
    }
}
