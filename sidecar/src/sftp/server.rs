//! The operations: what each SFTP request does against a [`crate::confined::Root`], request in,
//! response out, with the audit lines of modifying requests. When and on which thread a
//! request runs is the engine's business (`engine.rs`).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;

use rustix::buffer::spare_capacity;
use rustix::fs::{AtFlags, Dir, OFlags};

use super::accounts::Accounts;
use super::codec::{self, Attrs, NameEntry, Request, Response, StatVfs, StatusCode, pflags};
pub use super::engine::SessionError;
use super::engine::{self, MAX_HANDLES, Operations, Outcome, status};
use super::framing::Packets;
use super::listing;
use super::requests;
use crate::confined::{self, Metadata, Root};
use crate::target::Liveness;
use crate::visible::Visible;

const READDIR_BATCH: usize = 128;
/// A READDIR reply stops taking entries once it holds this many bytes. One entry is below
/// 132 KiB (a name fits a dirent's 16-bit record length and appears twice), so every reply
/// stays below the 256 KiB OpenSSH clients accept, whatever names a FUSE filesystem returns.
const READDIR_REPLY_BYTES: usize = 64 * 1024;

#[derive(Debug)]
pub struct Options {
    pub read_only: bool,
    /// Who is connected (`user` and `client` address), repeated on every audit line.
    pub user: String,
    pub client: String,
    /// Names for uids and gids, from the served filesystem.
    pub accounts: Accounts,
    /// The served process, when serving one: once it has exited, requests are refused.
    pub target: Option<Liveness>,
}

/// Serves one SFTP session on `input`/`output` until the client closes the stream or sends
/// something malformed. Blocks the calling thread.
pub fn serve<R: Packets, W: io::Write + Send>(root: Root, options: Options, input: R, output: W) -> Result<(), SessionError> {
    engine::serve(Server { root, options }, input, output)
}

struct Server {
    root: Root,
    options: Options,
}

/// What a handle refers to: a file with the path it was opened by (for audit), or a directory
/// being listed. Like OpenSSH, only READDIR and CLOSE take a directory's handle.
pub enum Object {
    File { file: File, path: Vec<u8>, written: u64 },
    Dir { fd: OwnedFd, dir: Dir, is_root: bool },
}

impl Operations for Server {
    type Object = Object;

    fn target_exited(&self) -> bool {
        self.options.target.as_ref().is_some_and(Liveness::exited)
    }

    fn refusal(&self, id: u32, request: &Request) -> Option<Response> {
        (self.options.read_only && request.modifies())
            .then(|| status(id, StatusCode::PermissionDenied, "read-only: this server refuses changes"))
    }

    fn answer(&self, id: u32, request: Request) -> Response {
        match request {
            Request::Limits => Response::Limits {
                id,
                max_packet: codec::MAX_PACKET as u64,
                max_read: codec::MAX_IO as u64,
                max_write: codec::MAX_IO as u64,
                max_handles: MAX_HANDLES as u64,
            },
            Request::HomeDirectory => Response::Name { id, entries: vec![name_only(b"/".to_vec())] },
            Request::UsersGroupsById { uids, gids } => Response::UsersGroups {
                id,
                users: self.options.accounts.user_names(&uids),
                groups: self.options.accounts.group_names(&gids),
            },
            Request::Unknown { kind } => status(id, StatusCode::OpUnsupported, format!("unsupported request type {kind}")),
            Request::UnknownExtended { name } => {
                status(id, StatusCode::OpUnsupported, format!("unsupported extension {}", String::from_utf8_lossy(&name)))
            }
            other => unexpected(id, &other),
        }
    }

    fn run_paths(&self, id: u32, request: Request) -> Outcome<Object> {
        let root = &self.root;
        let modifies = request.modifies();
        let done = |op: &str, path: &[u8], r: io::Result<()>| {
            self.audit(op, path, r.as_ref().map(|_| ()));
            Outcome::Reply(match r {
                Ok(()) => ok(id),
                Err(e) => error_status(id, &e),
            })
        };
        let reply = match request {
            Request::Open { path, pflags, attrs } => {
                let opened = root.open_file(&path, open_flags(pflags), attrs.permissions.unwrap_or(0o666));
                if modifies {
                    self.audit("open-write", &path, opened.as_ref().map(|_| ()));
                }
                match opened {
                    Ok(file) => return Outcome::Opened(Object::File { file, path, written: 0 }),
                    Err(e) => error_status(id, &e),
                }
            }
            Request::Opendir { path } => {
                let opened = root.open_dir(&path).and_then(|fd| {
                    let dir = Dir::new(fd.try_clone()?).map_err(io::Error::from)?;
                    let is_root = rustix::fs::fstat(&fd).is_ok_and(|st| root.is_root(&st));
                    Ok(Object::Dir { fd, dir, is_root })
                });
                match opened {
                    Ok(object) => return Outcome::Opened(object),
                    Err(e) => error_status(id, &e),
                }
            }
            Request::Stat { path } => attrs_reply(id, root.stat(&path)),
            Request::Lstat { path } => attrs_reply(id, root.lstat(&path)),
            Request::Setstat { path, attrs } => return done("setstat", &path, root.setstat(&path, &metadata(&attrs), true)),
            Request::Lsetstat { path, attrs } => return done("lsetstat", &path, root.setstat(&path, &metadata(&attrs), false)),
            Request::Remove { path } => return done("remove", &path, root.remove(&path)),
            Request::Mkdir { path, attrs } => return done("mkdir", &path, root.mkdir(&path, attrs.permissions.unwrap_or(0o777))),
            Request::Rmdir { path } => return done("rmdir", &path, root.rmdir(&path)),
            Request::Rename { from, to } => return done("rename", &arrow(&from, &to), root.rename(&from, &to, false)),
            Request::PosixRename { from, to } => return done("rename", &arrow(&from, &to), root.rename(&from, &to, true)),
            Request::Hardlink { from, to } => return done("hardlink", &arrow(&from, &to), root.hardlink(&from, &to)),
            Request::Symlink { target, link } => return done("symlink", &arrow(&link, &target), root.symlink(&target, &link)),
            Request::Readlink { path } => match root.readlink(&path) {
                Ok(target) => Response::Name { id, entries: vec![name_only(target)] },
                Err(e) => error_status(id, &e),
            },
            Request::Realpath { path } | Request::ExpandPath { path } => {
                // `~` and `~/x` mean the served root: there is no other home.
                let path = match path.strip_prefix(b"~") {
                    Some(rest) if rest.is_empty() || rest[0] == b'/' => rest.to_vec(),
                    _ => path,
                };
                match root.realpath(&path) {
                    Ok(real) => Response::Name { id, entries: vec![name_only(real)] },
                    Err(e) => error_status(id, &e),
                }
            }
            Request::Statvfs { path } => statvfs_reply(id, root.statvfs(&path)),
            other => unexpected(id, &other),
        };
        Outcome::Reply(reply)
    }

    fn run_handles(&self, object: &mut Object, second: Option<&mut Object>, id: u32, request: Request) -> Response {
        match (object, second, request) {
            (
                Object::File { file: from, .. },
                Some(Object::File { file: to, written, .. }),
                Request::CopyData { read_offset, len, write_offset, .. },
            ) => match copy_data(from, read_offset, len, to, write_offset) {
                Ok(copied) => {
                    *written += copied;
                    ok(id)
                }
                Err(e) => error_status(id, &e),
            },
            (_, Some(_), request) => status(id, StatusCode::Failure, format!("{} needs two file handles", request.name())),
            (_, None, Request::Close { .. }) => ok(id),
            (Object::File { file, .. }, None, Request::Read { offset, len, .. }) => {
                let len = len.min(codec::MAX_IO) as usize;
                // Read into memory that is not zeroed first. A READ of 0 bytes only seeks, as in
                // OpenSSH's sftp-server: empty data even from a handle open only for writing, an
                // error for an offset past the largest one (every other access is positional).
                let mut buf = Vec::with_capacity(len);
                let read = match len {
                    0 => io::Seek::seek(&mut &*file, io::SeekFrom::Start(offset)).map(|_| 0),
                    _ => rustix::io::pread(&*file, spare_capacity(&mut buf), offset).map_err(io::Error::from),
                };
                match read {
                    Ok(0) if len > 0 => status(id, StatusCode::Eof, "End of file"),
                    Ok(_) => Response::Data { id, data: buf.into() },
                    Err(e) => error_status(id, &e),
                }
            }
            (Object::File { file, written, .. }, None, Request::Write { offset, data, .. }) => match file.write_all_at(&data, offset) {
                Ok(()) => {
                    *written += data.len() as u64;
                    ok(id)
                }
                Err(e) => error_status(id, &e),
            },
            (Object::File { file, .. }, None, Request::Fstat { .. }) => attrs_reply(id, rustix::fs::fstat(file).map_err(io::Error::from)),
            (Object::File { file, path, .. }, None, Request::Fsetstat { attrs, .. }) => {
                let r = confined::set_metadata(file.as_fd(), &metadata(&attrs));
                self.audit("setstat", path, r.as_ref().map(|_| ()));
                match r {
                    Ok(()) => ok(id),
                    Err(e) => error_status(id, &e),
                }
            }
            (Object::File { file, .. }, None, Request::Fsync { .. }) => match file.sync_all() {
                Ok(()) => ok(id),
                Err(e) => error_status(id, &e),
            },
            (Object::File { file, .. }, None, Request::Fstatvfs { .. }) => {
                statvfs_reply(id, rustix::fs::fstatvfs(file).map_err(io::Error::from))
            }
            (Object::Dir { fd, dir, is_root, .. }, None, Request::Readdir { .. }) => readdir(id, fd, dir, *is_root, &self.options.accounts),
            (_, None, other) => {
                status(id, requests::invalid_handle(other.kind()), format!("request not valid for this handle: {}", other.name()))
            }
        }
    }

    /// Logs the audit line for a file that was written through a handle.
    fn close(&self, object: Object) {
        if let Object::File { path, written, .. } = object
            && written > 0
        {
            let (user, client, path) = (&self.options.user, &self.options.client, Visible(&path));
            tracing::info!(target: "audit", user, client, op = "write", path = %path, bytes = written, "ok");
        }
    }
}

impl Server {
    /// Paths are shown escaped (`Visible`): a name holding a newline must not forge a line.
    fn audit(&self, op: &str, path: &[u8], outcome: Result<(), &io::Error>) {
        let (user, client, path) = (&self.options.user, &self.options.client, Visible(path));
        match outcome {
            Ok(()) => tracing::info!(target: "audit", user, client, op, path = %path, "ok"),
            Err(e) => tracing::info!(target: "audit", user, client, op, path = %path, error = %e, "failed"),
        }
    }
}

/// A request the engine should not have given to this lane (a bug, answered, not crashed on).
fn unexpected(id: u32, request: &Request) -> Response {
    status(id, StatusCode::BadMessage, format!("unexpected request {}", request.name()))
}

fn arrow(from: &[u8], to: &[u8]) -> Vec<u8> {
    [from, b" -> ", to].concat()
}

fn ok(id: u32) -> Response {
    status(id, StatusCode::Ok, "Success")
}

fn error_status(id: u32, e: &io::Error) -> Response {
    // Messages look like strerror(3) output, without Rust's " (os error N)" suffix.
    let message = e.to_string();
    let message = message.split(" (os error").next().unwrap_or(&message).to_string();
    status(id, requests::status_code(e), message)
}

fn metadata(attrs: &Attrs) -> Metadata {
    Metadata {
        size: attrs.size,
        mode: attrs.permissions,
        times: attrs.times.map(|(atime, mtime)| (atime.into(), mtime.into())),
        owner: attrs.uid_gid,
    }
}

fn name_only(name: Vec<u8>) -> NameEntry {
    NameEntry { longname: name.clone(), filename: name, attrs: Attrs::default() }
}

fn open_flags(p: u32) -> OFlags {
    let mut flags = match (p & pflags::READ != 0, p & (pflags::WRITE | pflags::APPEND) != 0) {
        (true, true) => OFlags::RDWR,
        (false, true) => OFlags::WRONLY,
        _ => OFlags::RDONLY,
    };
    if p & pflags::APPEND != 0 {
        flags |= OFlags::APPEND;
    }
    if p & pflags::CREAT != 0 {
        flags |= OFlags::CREATE;
        if p & pflags::EXCL != 0 {
            flags |= OFlags::EXCL;
        }
    }
    if p & pflags::TRUNC != 0 {
        flags |= OFlags::TRUNC;
    }
    // A FIFO or device must not park a worker thread forever; regular files ignore NONBLOCK.
    flags | OFlags::NONBLOCK
}

/// copy-data: `len` bytes (0: to the end) from one file into another. A copy within one file
/// is refused, as OpenSSH refuses one handle or one path (we compare inodes, so two names of
/// one file count too): onto a later offset of itself "to the end" would never end. The copy
/// ends at the source's size when it starts. Returns the bytes written.
fn copy_data(from: &File, mut read_offset: u64, len: u64, to: &File, mut write_offset: u64) -> io::Result<u64> {
    let (source, target) = (rustix::fs::fstat(from)?, rustix::fs::fstat(to)?);
    if (source.st_dev, source.st_ino) == (target.st_dev, target.st_ino) {
        return Err(io::Error::other("copy-data within one file"));
    }
    let available = (source.st_size as u64).saturating_sub(read_offset);
    let mut left = if len == 0 { available } else { len.min(available) };
    let mut buf = vec![0u8; (256 * 1024).min(left) as usize];
    let mut copied = 0;
    while left > 0 {
        let want = (buf.len() as u64).min(left) as usize;
        let n = from.read_at(&mut buf[..want], read_offset)?;
        if n == 0 {
            break;
        }
        to.write_all_at(&buf[..n], write_offset)?;
        read_offset += n as u64;
        write_offset += n as u64;
        left -= n as u64;
        copied += n as u64;
    }
    Ok(copied)
}

/// The protocol's statvfs flags: only read-only and nosuid are defined (not Linux's others).
fn statvfs_flags(flags: rustix::fs::StatVfsMountFlags) -> u64 {
    const RDONLY: u64 = 0x1;
    const NOSUID: u64 = 0x2;
    let has = |flag| flags.contains(flag);
    (if has(rustix::fs::StatVfsMountFlags::RDONLY) { RDONLY } else { 0 })
        | (if has(rustix::fs::StatVfsMountFlags::NOSUID) { NOSUID } else { 0 })
}

fn attrs_reply(id: u32, st: io::Result<rustix::fs::Stat>) -> Response {
    match st {
        Ok(st) => Response::Attrs { id, attrs: listing::attrs(&st) },
        Err(e) => error_status(id, &e),
    }
}

fn statvfs_reply(id: u32, st: io::Result<rustix::fs::StatVfs>) -> Response {
    match st {
        Ok(s) => Response::StatVfs {
            id,
            stat: StatVfs {
                bsize: s.f_bsize,
                frsize: s.f_frsize,
                blocks: s.f_blocks,
                bfree: s.f_bfree,
                bavail: s.f_bavail,
                files: s.f_files,
                ffree: s.f_ffree,
                favail: s.f_favail,
                fsid: s.f_fsid,
                flag: statvfs_flags(s.f_flag),
                namemax: s.f_namemax,
            },
        },
        Err(e) => error_status(id, &e),
    }
}

fn readdir(id: u32, fd: &OwnedFd, dir: &mut Dir, is_root: bool, accounts: &Accounts) -> Response {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let mut entries = Vec::new();
    let mut bytes = 0;
    while entries.len() < READDIR_BATCH && bytes < READDIR_REPLY_BYTES {
        let entry = match dir.read() {
            None => break,
            Some(Ok(entry)) => entry,
            Some(Err(e)) => return error_status(id, &e.into()),
        };
        let name = entry.file_name().to_bytes().to_vec();
        // The root's `..` would describe the directory above the root: show the root instead.
        let stat_name: &[u8] = if is_root && name == b".." { b"." } else { &name };
        let Ok(st) = rustix::fs::statat(fd, stat_name, AtFlags::SYMLINK_NOFOLLOW) else { continue };
        let longname = listing::longname(&name, &st, now, accounts);
        // Both names, their lengths and the attributes (at most 32 bytes).
        bytes += name.len() + longname.len() + 64;
        entries.push(NameEntry { longname, attrs: listing::attrs(&st), filename: name });
    }
    if entries.is_empty() { status(id, StatusCode::Eof, "End of file") } else { Response::Name { id, entries } }
}
