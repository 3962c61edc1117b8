//! An SFTP client speaking raw packets (through `ssh -s sftp`, or to a server process over
//! pipes), for tests that must control exactly which requests are in flight.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use super::Server;

pub const FXP_INIT: u8 = 1;
pub const FXP_OPEN: u8 = 3;
pub const FXP_READ: u8 = 5;
pub const FXP_OPENDIR: u8 = 11;
pub const FXP_READDIR: u8 = 12;
pub const FXP_MKDIR: u8 = 14;
pub const FXP_REALPATH: u8 = 16;
pub const FXP_STAT: u8 = 17;
pub const FXP_STATUS: u8 = 101;
pub const FXP_HANDLE: u8 = 102;
pub const FXP_DATA: u8 = 103;
pub const FXP_NAME: u8 = 104;
pub const FXP_ATTRS: u8 = 105;
pub const FXP_EXTENDED: u8 = 200;
pub const FXP_EXTENDED_REPLY: u8 = 201;

pub fn string(bytes: &[u8]) -> Vec<u8> {
    [&(bytes.len() as u32).to_be_bytes()[..], bytes].concat()
}

/// `ssh -s ... sftp` to the server with key login, stdin and stdout piped: raw SFTP bytes in
/// and out.
pub fn subsystem(server: &Server) -> Command {
    let mut ssh = server.with_key("ssh");
    ssh.args(["-p", &server.port.to_string(), "-s", &server.destination(), "sftp"]).stdin(Stdio::piped()).stdout(Stdio::piped());
    ssh
}

/// A logged-in session (key login) past INIT/VERSION.
pub struct RawSftp {
    peer: Child,
    input: ChildStdin,
    output: ChildStdout,
}

impl RawSftp {
    pub fn connect(server: &Server) -> RawSftp {
        RawSftp::spawn(&mut subsystem(server))
    }

    /// Starts `command` (stdin and stdout piped) and says INIT to it.
    pub fn spawn(command: &mut Command) -> RawSftp {
        let mut peer = command.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("start the SFTP peer");
        let (input, output) = (peer.stdin.take().unwrap(), peer.stdout.take().unwrap());
        let mut client = RawSftp { peer, input, output };
        client.send(FXP_INIT, &[&3u32.to_be_bytes()]);
        let (kind, _) = client.receive();
        assert_eq!(kind, 2, "expected SSH_FXP_VERSION");
        client
    }

    pub fn send(&mut self, kind: u8, fields: &[&[u8]]) {
        let body: Vec<u8> = fields.concat();
        let packet = [&((body.len() + 1) as u32).to_be_bytes()[..], &[kind], &body].concat();
        // A peer that closed the stream shows up as a missing reply.
        let _ = self.input.write_all(&packet);
    }

    pub fn request(&mut self, kind: u8, id: u32, fields: &[&[u8]]) {
        let id = id.to_be_bytes();
        let fields: Vec<&[u8]> = [&id[..]].into_iter().chain(fields.iter().copied()).collect();
        self.send(kind, &fields);
    }

    /// The next packet: its type and everything after the type byte.
    pub fn receive(&mut self) -> (u8, Vec<u8>) {
        self.try_receive().expect("the server closed the SFTP stream")
    }

    /// The next packet, or `None` when the server closed the stream.
    pub fn try_receive(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut len = [0u8; 4];
        if self.output.read_exact(&mut len).is_err() {
            return None;
        }
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        self.output.read_exact(&mut body).ok()?;
        let (kind, rest) = body.split_first()?;
        Some((*kind, rest.to_vec()))
    }

    /// The next reply: its type, request id and payload after the id.
    pub fn reply(&mut self) -> (u8, u32, Vec<u8>) {
        let (kind, rest) = self.receive();
        (kind, u32::from_be_bytes(rest[..4].try_into().unwrap()), rest[4..].to_vec())
    }

    pub fn open_read(&mut self, id: u32, path: &[u8]) -> Vec<u8> {
        self.request(FXP_OPEN, id, &[&string(path), &1u32.to_be_bytes(), &0u32.to_be_bytes()]);
        let (kind, reply_id, payload) = self.reply();
        assert_eq!((kind, reply_id), (FXP_HANDLE, id), "open {}: {payload:?}", String::from_utf8_lossy(path));
        payload[4..].to_vec()
    }

    pub fn read(&mut self, id: u32, handle: &[u8], len: u32) {
        self.request(FXP_READ, id, &[&string(handle), &0u64.to_be_bytes(), &len.to_be_bytes()]);
    }
}

impl Drop for RawSftp {
    fn drop(&mut self) {
        let _ = self.peer.kill();
        let _ = self.peer.wait();
    }
}
