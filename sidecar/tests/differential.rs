//! Differential tests against OpenSSH: the same raw SFTP request sequences go to podsftp's
//! worker and to OpenSSH's `sftp-server`, both over pipes and each on its own copy of the same
//! tree. Replies (status codes, attributes, names, data) and the trees afterwards must match.
//! Paths are relative: sftp-server is not chrooted, it starts in its tree (`-d`).
//! Differences kept on purpose are listed in sidecar/README.md and tested on podsftp alone.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;
use std::process::{Command, Stdio};

use common::bin;
use common::raw_sftp::{RawSftp, string};

const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";

mod fxp {
    pub const OPEN: u8 = 3;
    pub const CLOSE: u8 = 4;
    pub const READ: u8 = 5;
    pub const WRITE: u8 = 6;
    pub const LSTAT: u8 = 7;
    pub const SETSTAT: u8 = 9;
    pub const OPENDIR: u8 = 11;
    pub const READDIR: u8 = 12;
    pub const REMOVE: u8 = 13;
    pub const MKDIR: u8 = 14;
    pub const RMDIR: u8 = 15;
    pub const REALPATH: u8 = 16;
    pub const STAT: u8 = 17;
    pub const RENAME: u8 = 18;
    pub const READLINK: u8 = 19;
    pub const SYMLINK: u8 = 20;
    pub const STATUS: u8 = 101;
    pub const HANDLE: u8 = 102;
    pub const DATA: u8 = 103;
    pub const NAME: u8 = 104;
    pub const ATTRS: u8 = 105;
    pub const EXTENDED: u8 = 200;
    pub const EXTENDED_REPLY: u8 = 201;
}

const READ: u32 = 0x01;
const WRITE: u32 = 0x02;
const CREAT: u32 = 0x08;
const PERMISSIONS: u32 = 0x04;
const NO_ATTRS: [u8; 4] = [0; 4];

fn u32b(v: u32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

fn u64b(v: u64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

fn mode_attrs(mode: u32) -> Vec<u8> {
    [u32b(PERMISSIONS), u32b(mode)].concat()
}

/// One SFTP server under test, and what it answered so far.
struct Peer {
    sftp: RawSftp,
    /// sftp-server answers absolute host paths: its tree's path reads as `/`.
    tree: Vec<u8>,
    next_id: u32,
    /// One line per request: what it was and what came back, normalized.
    log: Vec<String>,
}

struct Reply {
    kind: u8,
    payload: Vec<u8>,
}

/// Big-endian fields of a reply.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u32(&mut self) -> u32 {
        let (head, rest) = self.0.split_at(4);
        self.0 = rest;
        u32::from_be_bytes(head.try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        (u64::from(self.u32()) << 32) | u64::from(self.u32())
    }
    fn bytes(&mut self) -> Vec<u8> {
        let n = self.u32() as usize;
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }
    /// size, owner, mode, and times when a test set them.
    fn attrs(&mut self) -> String {
        let flags = self.u32();
        let mut out = Vec::new();
        if flags & 0x1 != 0 {
            out.push(format!("size={}", self.u64()));
        }
        if flags & 0x2 != 0 {
            out.push(format!("owner={}:{}", self.u32(), self.u32()));
        }
        if flags & 0x4 != 0 {
            out.push(format!("mode={:o}", self.u32()));
        }
        if flags & 0x8 != 0 {
            let (atime, mtime) = (self.u32(), self.u32());
            // Times the test set are compared; the fixture's own differ between the trees.
            if mtime < 10_000_000 {
                out.push(format!("times={atime},{mtime}"));
            }
        }
        out.join(" ")
    }
}

fn status_name(code: u32) -> &'static str {
    ["OK", "EOF", "NO_SUCH_FILE", "PERMISSION_DENIED", "FAILURE", "BAD_MESSAGE", "NO_CONNECTION", "CONNECTION_LOST", "OP_UNSUPPORTED"]
        .get(code as usize)
        .copied()
        .unwrap_or("unknown status")
}

impl Peer {
    /// Starts `server ARGS` with files limited to 1 MiB, so a runaway write ends the server
    /// instead of filling the disk.
    fn start(server: &str, args: &[&std::ffi::OsStr], tree: &Path) -> Peer {
        let mut command = Command::new("sh");
        command.args(["-c", "ulimit -f 1024 && exec \"$@\"", "sh", server]).args(args).stderr(Stdio::null());
        let sftp = RawSftp::spawn(&mut command);
        Peer { sftp, tree: tree.as_os_str().as_encoded_bytes().to_vec(), next_id: 1, log: Vec::new() }
    }

    fn podsftp(tree: &Path) -> Peer {
        let args = ["worker", "sftp", "--user", "tester", "--client", "differential", "--path"].map(std::ffi::OsStr::new);
        Peer::start(bin(), &[&args[..], &[tree.as_os_str()]].concat(), tree)
    }

    fn openssh(tree: &Path) -> Peer {
        Peer::start(SFTP_SERVER, &["-d".as_ref(), tree.as_os_str()], tree)
    }

    /// Sends a request, returns its reply (`None` when the server closed the stream).
    fn call(&mut self, kind: u8, fields: &[&[u8]]) -> Option<Reply> {
        let id = self.next_id;
        self.next_id += 1;
        self.sftp.request(kind, id, fields);
        let (kind, rest) = self.sftp.try_receive()?;
        let (reply_id, payload) = rest.split_at(4);
        assert_eq!(u32::from_be_bytes(reply_id.try_into().unwrap()), id, "replies out of order");
        Some(Reply { kind, payload: payload.to_vec() })
    }

    fn host_path_to_root(&self, name: Vec<u8>) -> String {
        let name = match name.strip_prefix(&self.tree[..]) {
            Some(b"") => b"/".to_vec(),
            Some(rest) if rest.starts_with(b"/") => rest.to_vec(),
            _ => name,
        };
        String::from_utf8_lossy(&name).into_owned()
    }

    fn describe(&self, reply: &Option<Reply>) -> String {
        let Some(Reply { kind, payload }) = reply else { return "session closed".into() };
        let mut f = Fields(payload);
        match *kind {
            fxp::STATUS => status_name(f.u32()).into(),
            fxp::HANDLE => "handle".into(),
            fxp::DATA => format!("data {:?}", String::from_utf8_lossy(&f.bytes())),
            fxp::ATTRS => format!("attrs {}", f.attrs()),
            fxp::NAME => {
                let names: Vec<String> = (0..f.u32())
                    .map(|_| {
                        let name = self.host_path_to_root(f.bytes());
                        f.bytes();
                        format!("{name} {}", f.attrs())
                    })
                    .collect();
                format!("names {names:?}")
            }
            other => format!("reply type {other}"),
        }
    }

    /// A request whose reply is logged; returns the handle if one came back.
    fn step(&mut self, what: &str, kind: u8, fields: &[&[u8]]) -> Option<Vec<u8>> {
        let reply = self.call(kind, fields);
        let line = format!("{what}: {}", self.describe(&reply));
        self.log.push(line);
        reply.filter(|r| r.kind == fxp::HANDLE).map(|r| Fields(&r.payload).bytes())
    }

    fn path_op(&mut self, name: &str, kind: u8, path: &str) {
        self.step(&format!("{name} {path}"), kind, &[&string(path.as_bytes())]);
    }

    fn two_paths(&mut self, name: &str, kind: u8, from: &str, to: &str) {
        self.step(&format!("{name} {from} {to}"), kind, &[&string(from.as_bytes()), &string(to.as_bytes())]);
    }

    fn extended(&mut self, name: &str, fields: &[&[u8]]) -> Option<Reply> {
        let name = string(name.as_bytes());
        self.call(fxp::EXTENDED, &[&[&name[..]], fields].concat())
    }

    fn extended_step(&mut self, what: &str, name: &str, fields: &[&[u8]]) {
        let reply = self.extended(name, fields);
        let line = format!("{what}: {}", self.describe(&reply));
        self.log.push(line);
    }

    fn open(&mut self, path: &str, pflags: u32) -> Vec<u8> {
        let handle = self.step(&format!("open {path} {pflags:#x}"), fxp::OPEN, &[&string(path.as_bytes()), &u32b(pflags), &NO_ATTRS]);
        handle.unwrap_or_else(|| panic!("open {path}: {:?}", self.log.last()))
    }

    fn close(&mut self, what: &str, handle: &[u8]) {
        self.step(&format!("close {what}"), fxp::CLOSE, &[&string(handle)]);
    }

    /// All names of a directory, sorted (servers list in directory order).
    fn list(&mut self, path: &str) {
        let Some(handle) = self.step(&format!("opendir {path}"), fxp::OPENDIR, &[&string(path.as_bytes())]) else { return };
        let mut names = Vec::new();
        while let Some(reply) = self.call(fxp::READDIR, &[&string(&handle)]).filter(|r| r.kind == fxp::NAME) {
            let mut f = Fields(&reply.payload);
            for _ in 0..f.u32() {
                let name = String::from_utf8_lossy(&f.bytes()).into_owned();
                f.bytes();
                let attrs = f.attrs();
                // The root's `..` is the host's directory above the tree for sftp-server.
                names.push(if name == ".." { name } else { format!("{name} {attrs}") });
            }
        }
        names.sort();
        self.log.push(format!("readdir {path}: {names:?}"));
        self.close(path, &handle);
    }
}

/// The tree both servers start from.
fn fixture(dir: &Path) {
    std::fs::write(dir.join("file"), "0123456789").unwrap();
    std::fs::create_dir(dir.join("dir")).unwrap();
    std::fs::write(dir.join("dir/file.txt"), "hello\n").unwrap();
    std::fs::create_dir(dir.join("dir/sub")).unwrap();
    std::fs::create_dir(dir.join("empty_dir")).unwrap();
    symlink("dir", dir.join("link_dir")).unwrap();
    symlink("file", dir.join("link_file")).unwrap();
    symlink("missing", dir.join("dangling")).unwrap();
}

/// Every entry under `dir`: its type, mode, and content or link target.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let what = if meta.is_symlink() {
                format!("link -> {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                pending.push(path.clone());
                format!("dir {:o}", meta.mode() & 0o7777)
            } else {
                format!("file {:o} {:?}", meta.mode() & 0o7777, String::from_utf8_lossy(&std::fs::read(&path).unwrap()))
            };
            out.insert(path.strip_prefix(dir).unwrap().display().to_string(), what);
        }
    }
    out
}

/// Runs `case` against both servers, each on a fresh copy of the fixture, and compares.
fn compare(case: impl Fn(&mut Peer)) {
    let trees = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let paths: Vec<_> = trees.iter().map(|t| t.path().canonicalize().unwrap()).collect();
    let mut logs = Vec::new();
    for (path, start) in paths.iter().zip([Peer::podsftp as fn(&Path) -> Peer, Peer::openssh]) {
        fixture(path);
        let mut peer = start(path);
        case(&mut peer);
        logs.push(peer.log);
    }
    // Steps depend on earlier answers (a handle or none): after the first difference in the
    // number of steps, the rest is compared as one block.
    let aligned = logs[0].iter().zip(&logs[1]).take_while(|(ours, theirs)| ours.split(':').next() == theirs.split(':').next()).count();
    let mut differences: Vec<String> = logs[0][..aligned]
        .iter()
        .zip(&logs[1][..aligned])
        .filter(|(ours, theirs)| ours != theirs)
        .map(|(ours, theirs)| format!("  podsftp {ours}\n  openssh {theirs}"))
        .collect();
    if logs[0][aligned..] != logs[1][aligned..] {
        differences.push(format!("  then podsftp: {:#?}\n  and openssh: {:#?}", &logs[0][aligned..], &logs[1][aligned..]));
    }
    let [ours, theirs] = [snapshot(&paths[0]), snapshot(&paths[1])];
    for name in ours.keys().chain(theirs.keys()).collect::<std::collections::BTreeSet<_>>() {
        if ours.get(name) != theirs.get(name) {
            differences.push(format!("  tree {name}: podsftp {:?}, openssh {:?}", ours.get(name), theirs.get(name)));
        }
    }
    assert!(differences.is_empty(), "podsftp differs from OpenSSH's sftp-server:\n{}", differences.join("\n"));
}

#[test]
fn trailing_slash_means_directory_and_follows_a_final_symlink() {
    compare(|p| {
        for path in ["file/", "link_dir/", "link_file/", "dangling/", "dir/", "dir/file.txt/", "link_dir/file.txt"] {
            p.path_op("lstat", fxp::LSTAT, path);
            p.path_op("stat", fxp::STAT, path);
            p.path_op("readlink", fxp::READLINK, path);
        }
        p.path_op("readlink", fxp::READLINK, "link_dir");
        p.path_op("remove", fxp::REMOVE, "dir/file.txt/");
        p.path_op("remove", fxp::REMOVE, "link_file/");
        p.path_op("remove", fxp::REMOVE, "link_dir/");
        p.path_op("rmdir", fxp::RMDIR, "link_dir/");
        p.path_op("rmdir", fxp::RMDIR, "empty_dir/");
        p.two_paths("rename", fxp::RENAME, "file/", "renamed");
        p.two_paths("rename", fxp::RENAME, "file/", "dir");
        p.two_paths("rename", fxp::RENAME, "file", "renamed/");
        p.two_paths("rename", fxp::RENAME, "link_dir/", "renamed");
        p.step("symlink file new_link/", fxp::SYMLINK, &[&string(b"file"), &string(b"new_link/")]);
        p.step("mkdir new_dir/", fxp::MKDIR, &[&string(b"new_dir/"), &NO_ATTRS]);
        p.step("setstat file/", fxp::SETSTAT, &[&string(b"file/"), &mode_attrs(0o600)]);
        for (from, to) in [("file/", "hard"), ("file", "hard/"), ("link_dir/", "hard"), ("dir/", "hard")] {
            p.extended_step(
                &format!("posix-rename {from} {to}"),
                "posix-rename@openssh.com",
                &[&string(from.as_bytes()), &string(to.as_bytes())],
            );
            p.extended_step(&format!("hardlink {from} {to}"), "hardlink@openssh.com", &[&string(from.as_bytes()), &string(to.as_bytes())]);
        }
        for path in ["file/", "link_dir/", "dir/sub/"] {
            p.extended_step(&format!("lsetstat {path}"), "lsetstat@openssh.com", &[&string(path.as_bytes()), &mode_attrs(0o700)]);
        }
        p.step("open file/", fxp::OPEN, &[&string(b"file/"), &u32b(READ), &NO_ATTRS]);
        p.step("open new/ for writing", fxp::OPEN, &[&string(b"new/"), &u32b(WRITE | CREAT), &NO_ATTRS]);
        p.list("link_dir/");
        p.two_paths("rename", fxp::RENAME, "dir/", "dir2");
    });
}

#[test]
fn copy_data_refuses_the_same_file_and_copies_others() {
    compare(|p| {
        let source = p.open("file", READ | WRITE);
        let same_path = p.open("file", READ);
        let target = p.open("dir/file.txt", READ | WRITE);
        let copy = |p: &mut Peer, what: &str, from: &[u8], read_offset: u64, len: u64, to: &[u8], write_offset: u64| {
            let fields = [string(from), u64b(read_offset), u64b(len), string(to), u64b(write_offset)];
            p.extended_step(what, "copy-data", &fields.iter().map(Vec::as_slice).collect::<Vec<_>>());
        };
        copy(p, "copy-data one handle onto itself", &source, 0, 0, &source, 5);
        copy(p, "copy-data between two handles of one path", &same_path, 0, 0, &source, 5);
        copy(p, "copy-data to EOF into another file", &source, 2, 0, &target, 3);
        copy(p, "copy-data past the source's end", &source, 8, 100, &target, 0);
        // Pipelined: the copy must see the WRITE sent before it on its source handle.
        p.sftp.request(fxp::WRITE, 1000, &[&string(&source), &u64b(0), &string(b"WXYZ")]);
        let copy_fields = [string(b"copy-data"), string(&source), u64b(0), u64b(4), string(&target), u64b(20)];
        p.sftp.request(fxp::EXTENDED, 1001, &copy_fields.iter().map(Vec::as_slice).collect::<Vec<_>>());
        for _ in 0..2 {
            let (kind, id, payload) = p.sftp.reply();
            p.log.push(format!("pipelined WRITE then copy-data: {id} answered {}", p.describe(&Some(Reply { kind, payload }))));
        }
        for (what, handle) in [("file", &source), ("file again", &same_path), ("dir/file.txt", &target)] {
            p.close(what, handle);
        }
    });
}

#[test]
fn trailing_bytes_in_a_packet_are_ignored_like_openssh() {
    compare(|p| {
        p.step("stat with 3 trailing bytes", fxp::STAT, &[&string(b"file"), b"xyz"]);
        p.step("lstat with trailing bytes", fxp::LSTAT, &[&string(b"link_dir"), &[0u8; 16]]);
        let handle = p.step("open with trailing bytes", fxp::OPEN, &[&string(b"file"), &u32b(READ | WRITE), &NO_ATTRS, b"pad"]).unwrap();
        // Debian 12's rclone (pkg/sftp) pads WRITE packets like this.
        p.step("write with trailing bytes", fxp::WRITE, &[&string(&handle), &u64b(2), &string(b"ab"), &[0u8; 7]]);
        p.step("read with trailing bytes", fxp::READ, &[&string(&handle), &u64b(0), &u32b(6), b"\x00"]);
        p.step("close with trailing bytes", fxp::CLOSE, &[&string(&handle), b"\x01\x02"]);
        p.extended_step("statvfs with trailing bytes", "statvfs@openssh.com", &[&string(b"."), b"more"]);
        p.extended_step("unknown extension", "nobody@example.com", &[b"anything"]);
        p.sftp.send(1, &[&u32b(3)]);
        let again = p.sftp.try_receive().map(|(kind, _)| kind);
        p.log.push(format!("INIT again: {again:?}"));
        p.path_op("stat after INIT again", fxp::STAT, "file");
        // A string running past the packet's end: both end the session.
        p.step("stat with a truncated name", fxp::STAT, &[&u32b(50), b"file"]);
    });
}

#[test]
fn statvfs_flags_are_the_protocols_not_linux_mount_flags() {
    compare(|p| {
        for path in [".", "dir"] {
            let reply = p.extended("statvfs@openssh.com", &[&string(path.as_bytes())]).unwrap();
            assert_eq!(reply.kind, fxp::EXTENDED_REPLY);
            let mut f = Fields(&reply.payload);
            let v: Vec<u64> = (0..11).map(|_| f.u64()).collect();
            // bsize, frsize, blocks, files, fsid, flag, namemax; free counts change as tests run.
            p.log.push(format!("statvfs {path}: {:?} flag={:#x} namemax={}", [v[0], v[1], v[2], v[5], v[8]], v[9], v[10]));
        }
    });
}

#[test]
fn error_codes_match_openssh() {
    compare(|p| {
        let long = "n".repeat(300);
        for op in [("stat", fxp::STAT), ("lstat", fxp::LSTAT), ("remove", fxp::REMOVE), ("rmdir", fxp::RMDIR), ("readlink", fxp::READLINK)]
        {
            // (`..` of the root is kept out: podsftp's root has no parent.)
            for path in [".", "dir/.", "dir/..", "dir/sub/..", long.as_str(), "file", "dir", "missing", "file/x"] {
                p.path_op(op.0, op.1, path);
            }
        }
        for path in [
            ".",
            "dir/sub",
            "dir/sub/..",
            "missing",
            "missing/",
            "missing//",
            "dir/missing/",
            "missing/x",
            "missing/x/y",
            "file/x",
            "dir/../file",
            "link_dir/sub",
            "dangling",
            "dangling/",
            "dangling/x",
            "",
        ] {
            p.path_op("realpath", fxp::REALPATH, path);
        }
        for (from, to) in [(".", "x"), ("dir", "."), ("missing", "x"), ("file", "dir"), ("dir", "file"), ("dir", "dir/sub/in")] {
            p.two_paths("rename", fxp::RENAME, from, to);
        }
        for path in [".", "dir/..", "dir", "file"] {
            p.step(&format!("mkdir {path}"), fxp::MKDIR, &[&string(path.as_bytes()), &NO_ATTRS]);
        }
        p.extended_step("lsetstat with a size", "lsetstat@openssh.com", &[&string(b"file"), &u32b(1), &u64b(3)]);
        let handle = p.open("file", READ);
        p.close("file", &handle);
        p.close("file again", &handle);
        p.step("read a closed handle", fxp::READ, &[&string(&handle), &u64b(0), &u32b(4)]);
        p.step("close a handle never opened", fxp::CLOSE, &[&string(b"no such handle")]);
        let dir = p.step("opendir dir", fxp::OPENDIR, &[&string(b"dir")]).unwrap();
        p.step("read a directory handle", fxp::READ, &[&string(&dir), &u64b(0), &u32b(4)]);
        p.step("write a read-only handle", fxp::WRITE, &[&string(&handle), &u64b(0), &string(b"x")]);
        let write_only = p.open("write-only", WRITE | CREAT);
        p.step("read 0 bytes of a write-only handle", fxp::READ, &[&string(&write_only), &u64b(0), &u32b(0)]);
        p.step("read 4 bytes of a write-only handle", fxp::READ, &[&string(&write_only), &u64b(0), &u32b(4)]);
        p.step("read 0 bytes at the largest offset", fxp::READ, &[&string(&write_only), &u64b(u64::MAX), &u32b(0)]);
        p.close("write-only file", &write_only);
        p.close("dir", &dir);
        p.list(".");
        p.list("dir");
    });
}

#[test]
fn paths_of_path_max_bytes_or_more_are_refused_like_openssh() {
    compare(|p| {
        // A name padded with slashes to `len` bytes: 4096 is not a path (PATH_MAX counts the
        // terminating NUL), 262,000 nearly fills a packet; 4000 is one.
        for len in [4000, 4096, 262_000] {
            for name in ["dir", "file", "missing", "newdir"] {
                let path = format!("{name}{}", "/".repeat(len - name.len()));
                let field = string(path.as_bytes());
                let ops = [("stat", fxp::STAT), ("lstat", fxp::LSTAT), ("readlink", fxp::READLINK), ("realpath", fxp::REALPATH)];
                for (op, kind) in ops {
                    p.step(&format!("{op} {name} padded to {len}"), kind, &[&field]);
                }
                p.step(&format!("mkdir {name} padded to {len}"), fxp::MKDIR, &[&field, &NO_ATTRS]);
                p.step(&format!("rename {name} padded to {len}"), fxp::RENAME, &[&field, &string(b"renamed")]);
                p.step(&format!("rename file to {name} padded to {len}"), fxp::RENAME, &[&string(b"file"), &field]);
            }
        }
        p.list(".");
    });
}

/// Kept difference: OpenSSH compares handles and paths only, so a copy between two names of
/// one file (a hard link) onto a later offset "to the end" grows the file until the disk is
/// full. podsftp compares inodes and refuses.
#[test]
fn copy_data_through_two_names_of_one_file_is_refused() {
    let tree = tempfile::tempdir().unwrap();
    fixture(tree.path());
    std::fs::hard_link(tree.path().join("file"), tree.path().join("alias")).unwrap();
    let mut p = Peer::podsftp(tree.path());
    let source = p.open("file", READ);
    let alias = p.open("alias", READ | WRITE);
    let fields = [string(&source), u64b(0), u64b(0), string(&alias), u64b(5)];
    p.extended_step("copy-data onto a later offset of itself", "copy-data", &fields.iter().map(Vec::as_slice).collect::<Vec<_>>());
    assert_eq!(p.log.last().unwrap(), "copy-data onto a later offset of itself: FAILURE");
    assert_eq!(std::fs::read(tree.path().join("file")).unwrap(), b"0123456789");
}

/// The stock `sftp` client's commands, its server started directly over pipes (`sftp -D`):
/// what it prints (paths normalized) and the trees afterwards must match.
#[test]
fn stock_sftp_client_commands_match() {
    // `-` goes on after an error, so every command's outcome is compared.
    let batch = "\
        -pwd\n-ls -1a\n-ls -1 link_dir/\n-cd dir\n-pwd\n-get file.txt LOCAL/got.txt\n-put LOCAL/up.txt\n\
        -rename up.txt up2.txt\n-ln -s up2.txt up-link\n-ln up2.txt hard\n-chmod 600 up2.txt\n-mkdir new\n-rmdir new\n\
        -rm file.txt/\n-rm sub/\n-rmdir sub/\n-mkdir sub/x/\n-cd ..\n-ls -1 dir dir/\n-get missing LOCAL/\n-rename dir/hard file\n\
        -cd file\n-cd link_dir/\n-pwd\n-ln -s nowhere/ dangling2\n-rm dangling\n-ls -1\n";
    let trees = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut outputs = Vec::new();
    for (i, tree) in trees.iter().enumerate() {
        let tree = tree.path().canonicalize().unwrap();
        fixture(&tree);
        let local = tempfile::tempdir().unwrap();
        std::fs::write(local.path().join("up.txt"), "uploaded").unwrap();
        let server = match i {
            0 => format!("{} worker sftp --user tester --client differential --path {}", bin(), tree.display()),
            _ => format!("{SFTP_SERVER} -d {}", tree.display()),
        };
        let local_path = local.path().display().to_string();
        let mut sftp = Command::new("sftp")
            .args(["-b", "-", "-D", &server])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sftp");
        use std::io::Write;
        sftp.stdin.take().unwrap().write_all(batch.replace("LOCAL", &local_path).as_bytes()).unwrap();
        let out = sftp.wait_with_output().unwrap();
        let tree = tree.display().to_string();
        let normalize = |text: &[u8]| {
            let text = String::from_utf8_lossy(text).replace(&format!("{tree}/"), "/").replace(&tree, "/").replace(&local_path, "LOCAL");
            // The worker's audit lines share sftp's stderr.
            text.split_inclusive('\n').filter(|line| !line.contains(" INFO audit: ")).collect::<String>()
        };
        outputs.push((
            normalize(&out.stdout),
            normalize(&out.stderr),
            snapshot(Path::new(&tree)),
            std::fs::read(local.path().join("got.txt")).ok(),
        ));
    }
    let [ours, theirs] = [&outputs[0], &outputs[1]];
    assert_eq!(ours.0, theirs.0, "what sftp printed (podsftp left, OpenSSH right)");
    assert_eq!(ours.1, theirs.1, "sftp's errors (podsftp left, OpenSSH right)");
    assert_eq!(ours.2, theirs.2, "the trees afterwards (podsftp left, OpenSSH right)");
    assert_eq!(ours.3, theirs.3, "the downloaded file");
}

#[test]
fn file_and_directory_operations_match() {
    const APPEND: u32 = 0x04;
    const TRUNC: u32 = 0x10;
    const EXCL: u32 = 0x20;
    compare(|p| {
        for (path, pflags) in [
            ("file", CREAT | EXCL | WRITE),
            ("new", CREAT | EXCL | WRITE),
            ("dir", READ),
            ("dir", WRITE),
            ("missing", READ),
            ("dangling", CREAT | WRITE),
            ("link_file", WRITE | TRUNC),
            ("", READ),
            ("file", 0),
        ] {
            if let Some(handle) =
                p.step(&format!("open {path:?} {pflags:#x}"), fxp::OPEN, &[&string(path.as_bytes()), &u32b(pflags), &NO_ATTRS])
            {
                p.step("fstat", 8, &[&string(&handle)]);
                p.step("read", fxp::READ, &[&string(&handle), &u64b(0), &u32b(100)]);
                p.step("write", fxp::WRITE, &[&string(&handle), &u64b(0), &string(b"written")]);
                p.step("readdir", fxp::READDIR, &[&string(&handle)]);
                p.step("fsetstat size", 10, &[&string(&handle), &u32b(1), &u64b(4)]);
                p.close(path, &handle);
            }
        }
        let append = p.open("dir/file.txt", WRITE | APPEND);
        p.step("append write at offset 0", fxp::WRITE, &[&string(&append), &u64b(0), &string(b"+appended")]);
        p.close("dir/file.txt", &append);
        let created = p.step("open with mode 0600", fxp::OPEN, &[&string(b"private"), &u32b(WRITE | CREAT), &mode_attrs(0o600)]).unwrap();
        p.close("private", &created);
        p.step("mkdir with mode 0700", fxp::MKDIR, &[&string(b"dir700"), &mode_attrs(0o700)]);
        p.step("setstat size", fxp::SETSTAT, &[&string(b"file"), &u32b(1), &u64b(3)]);
        p.step("setstat size of a directory", fxp::SETSTAT, &[&string(b"dir"), &u32b(1), &u64b(3)]);
        p.step("setstat mode through a link", fxp::SETSTAT, &[&string(b"link_file"), &mode_attrs(0o640)]);
        p.step("setstat missing", fxp::SETSTAT, &[&string(b"missing"), &mode_attrs(0o640)]);
        p.path_op("stat", fxp::STAT, "file");
        for (from, to) in
            [("file", "dir/file.txt"), ("dir/sub", "empty_dir"), ("empty_dir", "dir"), ("dir/file.txt", "moved"), ("link_dir", "link_dir2")]
        {
            p.two_paths("rename", fxp::RENAME, from, to);
        }
        for (from, to) in [("moved", "file"), ("empty_dir", "dir"), ("dir/sub", "dir2")] {
            p.extended_step(
                &format!("posix-rename {from} {to}"),
                "posix-rename@openssh.com",
                &[&string(from.as_bytes()), &string(to.as_bytes())],
            );
        }
        for (from, to) in [("file", "hard"), ("file", "hard"), ("dir", "hard_dir"), ("missing", "x"), ("link_file", "hard_link")] {
            p.extended_step(&format!("hardlink {from} {to}"), "hardlink@openssh.com", &[&string(from.as_bytes()), &string(to.as_bytes())]);
        }
        for (target, link) in [("/absolute/target", "abs"), ("file", "file"), ("x", "missing/link"), ("", "empty_target")] {
            p.step(&format!("symlink {link} -> {target}"), fxp::SYMLINK, &[&string(target.as_bytes()), &string(link.as_bytes())]);
        }
        p.path_op("readlink", fxp::READLINK, "abs");
        p.path_op("rmdir", fxp::RMDIR, "dir");
        p.path_op("rmdir", fxp::RMDIR, "file");
        p.path_op("remove", fxp::REMOVE, "dir");
        p.path_op("opendir", fxp::OPENDIR, "file");
        p.path_op("opendir", fxp::OPENDIR, "missing");
        p.list("dir2");
        p.list("link_dir2");
    });
}

#[test]
fn reads_writes_and_extensions_match() {
    compare(|p| {
        let file = p.open("file", READ | WRITE);
        for (offset, len) in [(0u64, 0u32), (8, 100), (10, 5), (1 << 40, 5), (0, 300_000)] {
            p.step(&format!("read {offset} {len}"), fxp::READ, &[&string(&file), &u64b(offset), &u32b(len)]);
        }
        p.step("write past the end", fxp::WRITE, &[&string(&file), &u64b(20), &string(b"hole")]);
        p.step("write nothing", fxp::WRITE, &[&string(&file), &u64b(3), &string(b"")]);
        p.extended_step("fsync", "fsync@openssh.com", &[&string(&file)]);
        p.step("fsetstat mode", 10, &[&string(&file), &mode_attrs(0o751)]);
        p.step("fsetstat times", 10, &[&string(&file), &u32b(8), &u32b(1_000_000), &u32b(2_000_000)]);
        p.step("fstat", 8, &[&string(&file)]);
        let fstatvfs = p.extended("fstatvfs@openssh.com", &[&string(&file)]).map(|r| r.kind);
        p.log.push(format!("fstatvfs: {fstatvfs:?}"));
        p.close("file", &file);
        let dir = p.step("opendir dir", fxp::OPENDIR, &[&string(b"dir")]).unwrap();
        p.step("fsetstat a directory handle", 10, &[&string(&dir), &mode_attrs(0o711)]);
        p.extended_step("fsync a directory handle", "fsync@openssh.com", &[&string(&dir)]);
        for _ in 0..3 {
            let reply = p.call(fxp::READDIR, &[&string(&dir)]);
            let kind = reply.map(|r| if r.kind == fxp::NAME { "names".to_string() } else { p.describe(&Some(r)) });
            p.log.push(format!("readdir: {kind:?}"));
        }
        p.close("dir", &dir);
        p.path_op("stat after fsetstat", fxp::STAT, "dir");
        p.step("setstat times", fxp::SETSTAT, &[&string(b"dir/file.txt"), &u32b(8), &u32b(1_000_000), &u32b(2_000_000)]);
        p.step("stat", fxp::STAT, &[&string(b"dir/file.txt")]);
        p.extended_step("lsetstat mode of a symlink", "lsetstat@openssh.com", &[&string(b"link_file"), &mode_attrs(0o600)]);
        p.extended_step(
            "lsetstat times of a symlink",
            "lsetstat@openssh.com",
            &[&string(b"link_file"), &u32b(8), &u32b(1_000_000), &u32b(2_000_000)],
        );
        p.extended_step("fsync of a handle never opened", "fsync@openssh.com", &[&string(b"zz")]);
        p.step("rename with v5 flags", fxp::RENAME, &[&string(b"dir/file.txt"), &string(b"renamed"), &u32b(1)]);
    });
}
