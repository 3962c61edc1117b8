//! Executes SFTP requests against a confined root.
//!
//! Concurrency model: one reader loop decodes packets; requests on the same handle go through
//! that handle's queue and run in order (what clients rely on), requests on different handles
//! and path requests run in parallel on the blocking pool. In-flight work is bounded by bytes
//! (a semaphore whose permits are bytes: request size plus expected response size) and the
//! permit is only released once the response has been written, so a slow reader slows the
//! reader loop instead of growing memory. Responses are written by one writer task.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use rustix::fs::{AtFlags, Dir, OFlags};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::codec::{self, Attrs, NameEntry, Packet, Request, Response, StatVfs, StatusCode, pflags};
use super::listing;
use crate::confined::Root;

/// Bytes of requests plus expected responses in flight per session.
const IN_FLIGHT_BYTES: usize = 2 * 1024 * 1024;
const MAX_HANDLES: usize = 512;
const READDIR_BATCH: usize = 128;

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub read_only: bool,
    /// Who is connected (`user` and `client` address), repeated on every audit line.
    pub user: String,
    pub client: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client sent a {0}-byte packet, more than the {max} allowed", max = codec::MAX_INCOMING_PACKET)]
    Oversized(u32),
    #[error("client closed the stream in the middle of a packet")]
    Truncated,
    #[error("malformed packet: {0}")]
    Malformed(#[from] codec::DecodeError),
    #[error("first packet was not SSH_FXP_INIT")]
    NoInit,
    #[error("i/o on the SFTP stream: {0}")]
    Io(#[from] io::Error),
}

type Reply = (Response, OwnedSemaphorePermit);

/// What a handle refers to; owned by the handle's task.
enum Object {
    File { file: Arc<File>, path: Vec<u8>, written: u64 },
    Dir { fd: OwnedFd, dir: Dir, is_root: bool },
}

struct Job {
    id: u32,
    request: Request,
    permit: OwnedSemaphorePermit,
}

struct HandleEntry {
    queue: mpsc::UnboundedSender<Job>,
    /// Set for files, so copy-data can use two handles at once.
    file: Option<Arc<File>>,
}

struct Shared {
    root: Root,
    options: Options,
    handles: Mutex<HashMap<Vec<u8>, HandleEntry>>,
    next_handle: std::sync::atomic::AtomicU64,
    replies: mpsc::UnboundedSender<Reply>,
}

/// Serves one SFTP session until the client closes the stream or sends something malformed.
pub async fn serve<R, W>(root: Root, options: Options, mut input: R, output: W) -> Result<(), SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (replies, reply_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_replies(reply_rx, output));
    let budget = Arc::new(Semaphore::new(IN_FLIGHT_BYTES));
    let shared = Arc::new(Shared {
        root,
        options,
        handles: Mutex::new(HashMap::new()),
        next_handle: 0.into(),
        replies,
    });
    let result = read_requests(&shared, &budget, &mut input).await;
    // Dropping the handle queues lets handle tasks finish their work and exit; the writer ends
    // once every reply sender (held by in-flight tasks) is gone.
    shared.handles.lock().unwrap_or_else(|e| e.into_inner()).clear();
    drop(shared);
    let written = writer.await.map_err(|e| io::Error::other(e.to_string()))?;
    result?;
    written?;
    Ok(())
}

async fn read_packet<R: AsyncRead + Unpin>(input: &mut R) -> Result<Option<Bytes>, SessionError> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len);
    if len > codec::MAX_INCOMING_PACKET {
        return Err(SessionError::Oversized(len));
    }
    let mut body = BytesMut::zeroed(len as usize);
    input.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof { SessionError::Truncated } else { e.into() }
    })?;
    Ok(Some(body.freeze()))
}

fn extensions() -> Vec<(&'static str, &'static str)> {
    vec![
        ("posix-rename@openssh.com", "1"),
        ("statvfs@openssh.com", "2"),
        ("fstatvfs@openssh.com", "2"),
        ("hardlink@openssh.com", "1"),
        ("fsync@openssh.com", "1"),
        ("lsetstat@openssh.com", "1"),
        ("limits@openssh.com", "1"),
        ("expand-path@openssh.com", "1"),
        ("copy-data", "1"),
        ("home-directory", "1"),
    ]
}

async fn read_requests<R: AsyncRead + Unpin>(shared: &Arc<Shared>, budget: &Arc<Semaphore>, input: &mut R) -> Result<(), SessionError> {
    let Some(first) = read_packet(input).await? else { return Ok(()) };
    match codec::decode(&first)? {
        Packet::Init { .. } => {
            let permit = budget.clone().acquire_many_owned(64).await.map_err(io::Error::other)?;
            let _ = shared.replies.send((Response::Version { extensions: extensions() }, permit));
        }
        Packet::Request { .. } => return Err(SessionError::NoInit),
    }
    while let Some(body) = read_packet(input).await? {
        let (id, request) = match codec::decode(&body)? {
            Packet::Init { .. } => return Err(SessionError::NoInit),
            Packet::Request { id, request } => (id, request),
        };
        let expected = match &request {
            Request::Read { len, .. } => (*len).min(codec::MAX_IO) as usize + 13,
            Request::Readdir { .. } => 32 * 1024,
            _ => 256,
        };
        let cost = (body.len() + expected).min(IN_FLIGHT_BYTES) as u32;
        let permit = budget.clone().acquire_many_owned(cost).await.map_err(io::Error::other)?;
        dispatch(shared, Job { id, request, permit });
    }
    Ok(())
}

fn status(id: u32, code: StatusCode, message: impl Into<String>) -> Response {
    Response::Status { id, code, message: message.into() }
}

fn ok(id: u32) -> Response {
    status(id, StatusCode::Ok, "Success")
}

fn error_status(id: u32, e: &io::Error) -> Response {
    let code = match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::EBADF) | Some(libc::ELOOP) => StatusCode::NoSuchFile,
        Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::EROFS) | Some(libc::EXDEV) => StatusCode::PermissionDenied,
        _ => match e.kind() {
            io::ErrorKind::NotFound => StatusCode::NoSuchFile,
            io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
            io::ErrorKind::Unsupported => StatusCode::OpUnsupported,
            _ => StatusCode::Failure,
        },
    };
    // Messages look like strerror(3) output, without Rust's " (os error N)" suffix.
    let message = e.to_string();
    let message = message.split(" (os error").next().unwrap_or(&message).to_string();
    status(id, code, message)
}

fn handle_of(request: &Request) -> Option<&[u8]> {
    use Request::*;
    match request {
        Close { handle } | Read { handle, .. } | Write { handle, .. } | Fstat { handle } | Fsetstat { handle, .. }
        | Readdir { handle } | Fstatvfs { handle } | Fsync { handle } => Some(handle),
        _ => None,
    }
}

fn audit(who: &Options, op: &str, path: &[u8], outcome: Result<(), &io::Error>) {
    let path = String::from_utf8_lossy(path);
    let (user, client) = (&who.user, &who.client);
    match outcome {
        Ok(()) => tracing::info!(target: "audit", user, client, op, path = %path, "ok"),
        Err(e) => tracing::info!(target: "audit", user, client, op, path = %path, error = %e, "failed"),
    }
}

fn dispatch(shared: &Arc<Shared>, job: Job) {
    let reply = |resp: Response, permit| {
        let _ = shared.replies.send((resp, permit));
    };
    if shared.options.read_only && job.request.is_modifying() {
        return reply(status(job.id, StatusCode::PermissionDenied, "read-only: this server refuses changes"), job.permit);
    }
    match &job.request {
        Request::Limits => {
            return reply(
                Response::Limits {
                    id: job.id,
                    max_packet: codec::MAX_PACKET as u64,
                    max_read: codec::MAX_IO as u64,
                    max_write: codec::MAX_IO as u64,
                    max_handles: MAX_HANDLES as u64,
                },
                job.permit,
            );
        }
        Request::HomeDirectory => {
            return reply(Response::Name { id: job.id, entries: vec![name_only(b"/".to_vec())] }, job.permit);
        }
        Request::Unknown { kind } => {
            let message = format!("unsupported request type {kind}");
            return reply(status(job.id, StatusCode::OpUnsupported, message), job.permit);
        }
        Request::UnknownExtended { name } => {
            let message = format!("unsupported extension {}", String::from_utf8_lossy(name));
            return reply(status(job.id, StatusCode::OpUnsupported, message), job.permit);
        }
        _ => {}
    }
    if let Some(handle) = handle_of(&job.request) {
        let mut handles = shared.handles.lock().unwrap_or_else(|e| e.into_inner());
        let entry = if matches!(job.request, Request::Close { .. }) { handles.remove(handle) } else { None };
        let queue = match &entry {
            Some(entry) => Some(&entry.queue),
            None => handles.get(handle).map(|e| &e.queue),
        };
        match queue {
            Some(queue) => {
                if let Err(mpsc::error::SendError(job)) = queue.send(job) {
                    reply(status(job.id, StatusCode::Failure, "handle is closing"), job.permit);
                }
            }
            None => reply(status(job.id, StatusCode::Failure, "invalid handle"), job.permit),
        }
        return;
    }
    if matches!(job.request, Request::CopyData { .. }) {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || {
            let Job { id, request, permit } = job;
            let response = run_path_request(&shared, id, request);
            let _ = shared.replies.send((response, permit));
        });
    } else {
        // Metadata operations are single quick syscalls on a local filesystem: handing them to
        // another thread costs more than it saves (each worker process serves one session).
        let Job { id, request, permit } = job;
        let response = run_path_request(shared, id, request);
        reply(response, permit);
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

/// Requests that name paths (plus OPEN/OPENDIR, which create handles and copy-data, which uses two).
fn run_path_request(shared: &Arc<Shared>, id: u32, request: Request) -> Response {
    let root = &shared.root;
    let done = |op: &str, path: &[u8], r: io::Result<()>| {
        audit(&shared.options, op, path, r.as_ref().map(|_| ()));
        match r {
            Ok(()) => ok(id),
            Err(e) => error_status(id, &e),
        }
    };
    match request {
        Request::Open { path, pflags, attrs } => {
            let modifying = pflags & (pflags::WRITE | pflags::APPEND | pflags::CREAT | pflags::TRUNC) != 0;
            match root.open_file(&path, open_flags(pflags), attrs.permissions.unwrap_or(0o666)) {
                Ok(file) => {
                    if modifying {
                        audit(&shared.options, "open-write", &path, Ok(()));
                    }
                    let file = Arc::new(file);
                    register(shared, id, Object::File { file: file.clone(), path, written: 0 }, Some(file))
                }
                Err(e) => {
                    if modifying {
                        audit(&shared.options, "open-write", &path, Err(&e));
                    }
                    error_status(id, &e)
                }
            }
        }
        Request::Opendir { path } => {
            let opened = root.open_dir(&path).and_then(|fd| {
                let dir = Dir::new(fd.try_clone()?).map_err(io::Error::from)?;
                let is_root = rustix::fs::fstat(&fd).is_ok_and(|st| root.is_root(&st));
                Ok(Object::Dir { fd, dir, is_root })
            });
            match opened {
                Ok(object) => register(shared, id, object, None),
                Err(e) => error_status(id, &e),
            }
        }
        Request::Stat { path } => attrs_reply(id, root.stat(&path)),
        Request::Lstat { path } => attrs_reply(id, root.lstat(&path)),
        Request::Setstat { path, attrs } => done("setstat", &path, root.setstat(&path, &attrs, true)),
        Request::Lsetstat { path, attrs } => done("lsetstat", &path, root.setstat(&path, &attrs, false)),
        Request::Remove { path } => done("remove", &path, root.remove(&path)),
        Request::Mkdir { path, attrs } => done("mkdir", &path, root.mkdir(&path, attrs.permissions.unwrap_or(0o777))),
        Request::Rmdir { path } => done("rmdir", &path, root.rmdir(&path)),
        Request::Rename { from, to } => done("rename", &[&from[..], b" -> ", &to[..]].concat(), root.rename(&from, &to, false)),
        Request::PosixRename { from, to } => {
            done("rename", &[&from[..], b" -> ", &to[..]].concat(), root.rename(&from, &to, true))
        }
        Request::Hardlink { from, to } => done("hardlink", &[&from[..], b" -> ", &to[..]].concat(), root.hardlink(&from, &to)),
        Request::Symlink { target, link } => {
            done("symlink", &[&link[..], b" -> ", &target[..]].concat(), root.symlink(&target, &link))
        }
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
        Request::CopyData { read_handle, read_offset, len, write_handle, write_offset } => {
            let files = {
                let handles = shared.handles.lock().unwrap_or_else(|e| e.into_inner());
                let file = |h: &[u8]| handles.get(h).and_then(|e| e.file.clone());
                (file(&read_handle), file(&write_handle))
            };
            match files {
                (Some(from), Some(to)) => match copy_data(&from, read_offset, len, &to, write_offset) {
                    Ok(()) => ok(id),
                    Err(e) => error_status(id, &e),
                },
                _ => status(id, StatusCode::Failure, "invalid handle"),
            }
        }
        other => status(id, StatusCode::BadMessage, format!("unexpected request {other:?}")),
    }
}

fn copy_data(from: &File, mut read_offset: u64, len: u64, to: &File, mut write_offset: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = if len == 0 { u64::MAX } else { len };
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
    }
    Ok(())
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
                flag: s.f_flag.bits(),
                namemax: s.f_namemax,
            },
        },
        Err(e) => error_status(id, &e),
    }
}

fn register(shared: &Arc<Shared>, id: u32, object: Object, file: Option<Arc<File>>) -> Response {
    let mut handles = shared.handles.lock().unwrap_or_else(|e| e.into_inner());
    if handles.len() >= MAX_HANDLES {
        return status(id, StatusCode::Failure, "too many open handles");
    }
    let handle = shared.next_handle.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_string().into_bytes();
    let (queue, jobs) = mpsc::unbounded_channel();
    handles.insert(handle.clone(), HandleEntry { queue, file });
    tokio::runtime::Handle::current().spawn(run_handle(object, jobs, shared.clone()));
    Response::Handle { id, handle }
}

/// Runs one handle's requests in arrival order; ends at CLOSE or when the session ends.
async fn run_handle(object: Object, mut jobs: mpsc::UnboundedReceiver<Job>, shared: Arc<Shared>) {
    let replies = shared.replies.clone();
    let who = shared.options.clone();
    // The handle task must not keep the session's handle table alive.
    drop(shared);
    let mut object = Some(object);
    while let Some(Job { id, request, permit }) = jobs.recv().await {
        let Some(mut current) = object.take() else { break };
        let closing = matches!(request, Request::Close { .. });
        let (current, response) = if matches!(request, Request::Close { .. } | Request::Fstat { .. } | Request::Fsetstat { .. }) {
            // Quick metadata calls run inline; data transfer and listing go to the blocking pool
            // so other handles keep moving.
            let response = run_handle_request(&who, &mut current, id, request);
            (current, response)
        } else {
            let task_who = who.clone();
            let work = tokio::task::spawn_blocking(move || {
                let response = run_handle_request(&task_who, &mut current, id, request);
                (current, response)
            });
            let Ok(done) = work.await else { break };
            done
        };
        let _ = replies.send((response, permit));
        if closing {
            finish(&who, current);
            break;
        }
        object = Some(current);
    }
    if let Some(current) = object {
        finish(&who, current);
    }
}

/// Logs the audit line for a file that was written through a handle.
fn finish(who: &Options, object: Object) {
    if let Object::File { path, written, .. } = object
        && written > 0
    {
        let path = String::from_utf8_lossy(&path);
        let (user, client) = (&who.user, &who.client);
        tracing::info!(target: "audit", user, client, op = "write", path = %path, bytes = written, "ok");
    }
}

fn run_handle_request(who: &Options, object: &mut Object, id: u32, request: Request) -> Response {
    match (object, request) {
        (_, Request::Close { .. }) => ok(id),
        (Object::File { file, .. }, Request::Read { offset, len, .. }) => {
            let len = len.min(codec::MAX_IO) as usize;
            let mut buf = BytesMut::zeroed(len);
            match file.read_at(&mut buf, offset) {
                Ok(0) if len > 0 => status(id, StatusCode::Eof, "End of file"),
                Ok(n) => {
                    buf.truncate(n);
                    Response::Data { id, data: buf.freeze() }
                }
                Err(e) => error_status(id, &e),
            }
        }
        (Object::File { file, written, .. }, Request::Write { offset, data, .. }) => match file.write_all_at(&data, offset) {
            Ok(()) => {
                *written += data.len() as u64;
                ok(id)
            }
            Err(e) => error_status(id, &e),
        },
        (Object::File { file, .. }, Request::Fstat { .. }) => attrs_reply(id, rustix::fs::fstat(&**file).map_err(io::Error::from)),
        (Object::Dir { fd, .. }, Request::Fstat { .. }) => attrs_reply(id, rustix::fs::fstat(&*fd).map_err(io::Error::from)),
        (Object::File { file, path, .. }, Request::Fsetstat { attrs, .. }) => {
            let r = fsetstat(&**file, &attrs);
            audit(who, "setstat", path, r.as_ref().map(|_| ()));
            match r {
                Ok(()) => ok(id),
                Err(e) => error_status(id, &e),
            }
        }
        (Object::Dir { fd, .. }, Request::Fsetstat { attrs, .. }) => match fsetstat(&*fd, &attrs) {
            Ok(()) => ok(id),
            Err(e) => error_status(id, &e),
        },
        (Object::File { file, .. }, Request::Fsync { .. }) => match file.sync_all() {
            Ok(()) => ok(id),
            Err(e) => error_status(id, &e),
        },
        (Object::File { file, .. }, Request::Fstatvfs { .. }) => {
            statvfs_reply(id, rustix::fs::fstatvfs(&**file).map_err(io::Error::from))
        }
        (Object::Dir { fd, .. }, Request::Fstatvfs { .. }) => statvfs_reply(id, rustix::fs::fstatvfs(&*fd).map_err(io::Error::from)),
        (Object::Dir { fd, dir, is_root }, Request::Readdir { .. }) => readdir(id, fd, dir, *is_root),
        (_, other) => status(id, StatusCode::Failure, format!("request not valid for this handle: {}", request_name(&other))),
    }
}

fn request_name(request: &Request) -> &'static str {
    match request {
        Request::Read { .. } => "read",
        Request::Write { .. } => "write",
        Request::Readdir { .. } => "readdir",
        Request::Fsync { .. } => "fsync",
        _ => "request",
    }
}

fn fsetstat(fd: impl std::os::fd::AsFd, attrs: &Attrs) -> io::Result<()> {
    let fd = fd.as_fd();
    if let Some(size) = attrs.size {
        rustix::fs::ftruncate(fd, size)?;
    }
    if let Some(perm) = attrs.permissions {
        rustix::fs::fchmod(fd, rustix::fs::Mode::from_raw_mode(perm & 0o7777))?;
    }
    if let Some((atime, mtime)) = attrs.times {
        let ts = |secs: u32| rustix::fs::Timespec { tv_sec: secs as i64, tv_nsec: 0 };
        rustix::fs::futimens(fd, &rustix::fs::Timestamps { last_access: ts(atime), last_modification: ts(mtime) })?;
    }
    if let Some((uid, gid)) = attrs.uid_gid {
        rustix::fs::fchown(fd, Some(rustix::fs::Uid::from_raw(uid)), Some(rustix::fs::Gid::from_raw(gid)))?;
    }
    Ok(())
}

fn readdir(id: u32, fd: &OwnedFd, dir: &mut Dir, is_root: bool) -> Response {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let mut entries = Vec::new();
    while entries.len() < READDIR_BATCH {
        let entry = match dir.read() {
            None => break,
            Some(Ok(entry)) => entry,
            Some(Err(e)) => return error_status(id, &e.into()),
        };
        let name = entry.file_name().to_bytes().to_vec();
        // The root's `..` would describe the directory above the root: show the root instead.
        let stat_name: &[u8] = if is_root && name == b".." { b"." } else { &name };
        let Ok(st) = rustix::fs::statat(fd, stat_name, AtFlags::SYMLINK_NOFOLLOW) else { continue };
        entries.push(NameEntry { longname: listing::longname(&name, &st, now), attrs: listing::attrs(&st), filename: name });
    }
    if entries.is_empty() { status(id, StatusCode::Eof, "End of file") } else { Response::Name { id, entries } }
}

async fn write_replies<W: AsyncWrite + Unpin>(mut replies: mpsc::UnboundedReceiver<Reply>, mut output: W) -> io::Result<()> {
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut permits = Vec::new();
    while let Some(first) = replies.recv().await {
        let mut next = Some(first);
        while let Some((response, permit)) = next.take() {
            if let Some(payload) = codec::encode(&response, &mut out) {
                out.extend_from_slice(&payload);
            }
            permits.push(permit);
            if out.len() >= 64 * 1024 {
                output.write_all(&out).await?;
                out.clear();
                permits.clear();
            }
            next = replies.try_recv().ok();
        }
        if !out.is_empty() {
            output.write_all(&out).await?;
            out.clear();
        }
        output.flush().await?;
        permits.clear();
    }
    output.flush().await?;
    output.shutdown().await
}
