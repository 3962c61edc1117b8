//! Requests on different handles run concurrently: a READ stuck on a slow disk (a FUSE
//! filesystem whose reads take seconds) must not hold up requests on other handles or paths
//! in the same session. Asserts the order of the replies, not timings.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SLOW_SECONDS: &str = "3";
const FXP_INIT: u8 = 1;
const FXP_OPEN: u8 = 3;
const FXP_READ: u8 = 5;
const FXP_STAT: u8 = 17;
const FXP_HANDLE: u8 = 102;
const FXP_DATA: u8 = 103;
const FXP_ATTRS: u8 = 105;

/// `tests/scripts/slowfs.py` mounted at a directory; unmounted on drop.
struct SlowFs {
    mount: PathBuf,
    process: Child,
}

impl SlowFs {
    fn mount(at: &Path) -> SlowFs {
        std::fs::create_dir(at).unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scripts/slowfs.py");
        let process = Command::new("/usr/bin/python3")
            .args([script, at.to_str().unwrap(), SLOW_SECONDS])
            .spawn()
            .expect("run /usr/bin/python3 (python3-fusepy)");
        let fs = SlowFs { mount: at.to_path_buf(), process };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !at.join("slow.bin").exists() {
            assert!(Instant::now() < deadline, "slowfs.py did not mount {} (is /dev/fuse there?)", at.display());
            std::thread::sleep(Duration::from_millis(100));
        }
        fs
    }
}

impl Drop for SlowFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn string(bytes: &[u8]) -> Vec<u8> {
    [&(bytes.len() as u32).to_be_bytes()[..], bytes].concat()
}

/// An SFTP client speaking raw packets through `ssh -s sftp`, so the test controls exactly
/// which requests are in flight.
struct RawSftp {
    ssh: Child,
    input: ChildStdin,
    output: ChildStdout,
}

impl RawSftp {
    fn connect(server: &Server) -> RawSftp {
        let mut ssh = server
            .with_key("ssh")
            .args(["-p", &server.port.to_string(), "-s", &server.destination(), "sftp"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run ssh");
        let (input, output) = (ssh.stdin.take().unwrap(), ssh.stdout.take().unwrap());
        let mut client = RawSftp { ssh, input, output };
        client.send(FXP_INIT, &[&3u32.to_be_bytes()]);
        let (kind, _) = client.receive();
        assert_eq!(kind, 2, "expected SSH_FXP_VERSION");
        client
    }

    fn send(&mut self, kind: u8, fields: &[&[u8]]) {
        let body: Vec<u8> = fields.concat();
        let packet = [&((body.len() + 1) as u32).to_be_bytes()[..], &[kind], &body].concat();
        self.input.write_all(&packet).unwrap();
    }

    fn request(&mut self, kind: u8, id: u32, fields: &[&[u8]]) {
        let id = id.to_be_bytes();
        let fields: Vec<&[u8]> = [&id[..]].into_iter().chain(fields.iter().copied()).collect();
        self.send(kind, &fields);
    }

    /// The next packet: its type and everything after the type byte.
    fn receive(&mut self) -> (u8, Vec<u8>) {
        let mut len = [0u8; 4];
        self.output.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        self.output.read_exact(&mut body).unwrap();
        (body[0], body[1..].to_vec())
    }

    /// The next reply: its type, request id and payload after the id.
    fn reply(&mut self) -> (u8, u32, Vec<u8>) {
        let (kind, rest) = self.receive();
        (kind, u32::from_be_bytes(rest[..4].try_into().unwrap()), rest[4..].to_vec())
    }

    fn open_read(&mut self, id: u32, path: &[u8]) -> Vec<u8> {
        self.request(FXP_OPEN, id, &[&string(path), &1u32.to_be_bytes(), &0u32.to_be_bytes()]);
        let (kind, reply_id, payload) = self.reply();
        assert_eq!((kind, reply_id), (FXP_HANDLE, id), "open {}: {payload:?}", String::from_utf8_lossy(path));
        payload[4..].to_vec()
    }

    fn read(&mut self, id: u32, handle: &[u8], len: u32) {
        self.request(FXP_READ, id, &[&string(handle), &0u64.to_be_bytes(), &len.to_be_bytes()]);
    }
}

impl Drop for RawSftp {
    fn drop(&mut self) {
        let _ = self.ssh.kill();
        let _ = self.ssh.wait();
    }
}

#[test]
fn slow_read_does_not_hold_up_other_handles() {
    let served = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("fast.txt"), b"fast disk\n").unwrap();
    let _slow = SlowFs::mount(&served.path().join("slow"));
    let server = Server::start(&["--dir", served.path().to_str().unwrap()]);
    let mut client = RawSftp::connect(&server);
    let slow = client.open_read(1, b"/slow/slow.bin");
    let fast = client.open_read(2, b"/fast.txt");

    client.read(10, &slow, 4096);
    client.read(11, &fast, 4096);
    client.request(FXP_STAT, 12, &[&string(b"/fast.txt")]);

    let (kind, id, payload) = client.reply();
    assert_eq!((kind, id), (FXP_DATA, 11), "the fast READ must be answered first (got {} bytes)", payload.len());
    assert_eq!(&payload[4..], b"fast disk\n");
    let (kind, id, _) = client.reply();
    assert_eq!((kind, id), (FXP_ATTRS, 12), "the STAT must be answered before the slow READ");
    let (kind, id, payload) = client.reply();
    assert_eq!((kind, id), (FXP_DATA, 10), "then the slow READ (got {} bytes)", payload.len());
    assert_eq!(&payload[4..], &b"slow disk\n".repeat(410)[..4096]);

    // Same handle: replies keep the order of the requests even though each READ is slow.
    client.read(20, &slow, 10);
    client.read(21, &slow, 10);
    let first = client.reply();
    let second = client.reply();
    assert_eq!((first.0, first.1, second.0, second.1), (FXP_DATA, 20, FXP_DATA, 21));
}
