//! Executes SFTP requests against a confined root.
//!
//! Threads (leader/followers): whoever holds the input lock reads the next request and claims
//! it before letting go; the next thread waiting on the lock takes over reading while this one
//! runs the request and writes the reply itself, so a request never waits for a thread to wake
//! up (the next reader wakes off the critical path). Metadata requests, which are single quick
//! syscalls, are run by the reader itself without any hand-off. A slow disk holds up only its
//! own handle: a thread is added (up to `MAX_THREADS`) whenever nobody is left waiting
//! to read. Requests on one handle run in arrival order (clients rely on it); requests that
//! name paths run in arrival order among themselves.
//!
//! In-flight work is bounded by bytes (request size plus expected response size), released
//! only once the response is written, so a slow reader slows the reading of requests instead
//! of growing memory.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, BufReader, IoSlice, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, Scope};

use bytes::{Bytes, BytesMut};
use rustix::fs::{AtFlags, Dir, OFlags};

use super::accounts::Accounts;
use super::codec::{self, Attrs, NameEntry, Packet, Request, Response, StatVfs, StatusCode, pflags};
use super::listing;
use crate::confined::Root;
use crate::target::Liveness;

/// Bytes of requests plus expected responses in flight per session.
const IN_FLIGHT_BYTES: usize = 2 * 1024 * 1024;
const MAX_HANDLES: usize = 512;
const READDIR_BATCH: usize = 128;
/// Threads per session: how many slow requests (on different handles) can wait on the disk
/// at once while the session keeps reading.
const MAX_THREADS: usize = 8;
/// Requests need little stack: paths are resolved by the kernel, buffers live on the heap.
const THREAD_STACK: usize = 256 * 1024;
/// Requests are small; buffering saves a read per request (large WRITEs bypass the buffer).
const INPUT_BUFFER: usize = 64 * 1024;

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
    #[error("{TARGET_EXITED}")]
    TargetExited,
}

const TARGET_EXITED: &str = "the served container's process has exited (restarted?); reconnect to reach the new one";

/// What a handle refers to; owned by whichever thread runs the handle's requests.
enum Object {
    File { file: Arc<File>, path: Vec<u8>, written: u64 },
    Dir { fd: OwnedFd, dir: Dir, is_root: bool },
}

struct Job {
    id: u32,
    request: Request,
    /// Bytes of the in-flight budget held until the response is written.
    cost: usize,
}

struct HandleEntry {
    /// `None` while a thread runs this handle's requests; later ones wait in `queue`.
    object: Option<Object>,
    queue: VecDeque<Job>,
    /// Set for files, so copy-data can use two handles at once.
    file: Option<Arc<File>>,
    /// CLOSE was received: later requests on this handle are refused.
    closing: bool,
}

#[derive(Default)]
struct State {
    handles: HashMap<Vec<u8>, HandleEntry>,
    next_handle: u64,
    /// A thread is running path requests; later ones wait in `paths_queue`.
    paths_busy: bool,
    paths_queue: VecDeque<Job>,
}

/// What the thread that claimed a request runs: the request and then its lane's queue.
enum Work {
    Paths(Job),
    Handle { handle: Vec<u8>, object: Object, job: Job },
}

impl Work {
    /// Metadata requests are single quick syscalls on a local filesystem; data transfer,
    /// listing, fsync and copy-data may wait on the disk.
    fn is_quick(&self) -> bool {
        let (Work::Paths(job) | Work::Handle { job, .. }) = self;
        !matches!(
            job.request,
            Request::Read { .. } | Request::Write { .. } | Request::Readdir { .. } | Request::Fsync { .. } | Request::CopyData { .. }
        )
    }
}

/// The part of a session that request execution sees.
struct Shared {
    root: Root,
    options: Options,
    state: Mutex<State>,
}

struct Input<R> {
    reader: BufReader<R>,
    /// Set when the stream ended; holds why if it ended badly.
    ended: Option<Result<(), SessionError>>,
}

struct Output<W> {
    writer: W,
    /// The other side went away: later replies are dropped.
    failed: bool,
}

/// Bytes of requests and their expected responses in flight.
#[derive(Default)]
struct Budget {
    state: Mutex<BudgetState>,
    freed: Condvar,
}

#[derive(Default)]
struct BudgetState {
    used: usize,
    /// The reader waits for bytes to be freed (so only then is there someone to wake).
    reader_waiting: bool,
}

struct Session<R, W> {
    shared: Shared,
    input: Mutex<Input<R>>,
    output: Mutex<Output<W>>,
    budget: Budget,
    /// Threads waiting to take over reading; when none is left, the reader starts one.
    waiting_readers: AtomicUsize,
    threads: AtomicUsize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic aborts the process (release profile), so a poisoned lock only occurs in tests.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves one SFTP session until the client closes the stream or sends something malformed.
/// Blocks the calling thread, which becomes the session's first thread.
pub fn serve<R: Read + Send, W: Write + Send>(root: Root, options: Options, input: R, output: W) -> Result<(), SessionError> {
    let session = Session {
        shared: Shared { root, options, state: Mutex::new(State::default()) },
        input: Mutex::new(Input { reader: BufReader::with_capacity(INPUT_BUFFER, input), ended: None }),
        output: Mutex::new(Output { writer: output, failed: false }),
        budget: Budget::default(),
        waiting_readers: AtomicUsize::new(0),
        threads: AtomicUsize::new(1),
    };
    session.handshake()?;
    thread::scope(|scope| session.run_thread(scope));
    // Every thread is gone: handles still open were never closed by the client.
    let state = std::mem::take(&mut *lock(&session.shared.state));
    for entry in state.handles.into_values() {
        if let Some(object) = entry.object {
            finish(&session.shared.options, object);
        }
    }
    let ended = lock(&session.input).ended.take();
    ended.unwrap_or(Ok(()))
}

impl<R: Read + Send, W: Write + Send> Session<R, W> {
    fn handshake(&self) -> Result<(), SessionError> {
        let mut input = lock(&self.input);
        let Some(first) = read_packet(&mut input.reader)? else {
            input.ended = Some(Ok(()));
            return Ok(());
        };
        match codec::decode(&first)? {
            Packet::Init { .. } => self.reply(&Response::Version { extensions: extensions() }, 0),
            Packet::Request { .. } => return Err(SessionError::NoInit),
        }
        Ok(())
    }

    fn run_thread<'scope>(&'scope self, scope: &'scope Scope<'scope, '_>) {
        while let Some(work) = self.next_work(scope) {
            self.run(work);
        }
    }

    /// Waits to be the reader, then reads until a request is claimed by this thread (or the
    /// stream ends). Requests queued behind a busy lane do not end the turn.
    fn next_work<'scope>(&'scope self, scope: &'scope Scope<'scope, '_>) -> Option<Work> {
        self.waiting_readers.fetch_add(1, Ordering::SeqCst);
        let mut input = lock(&self.input);
        self.waiting_readers.fetch_sub(1, Ordering::SeqCst);
        while input.ended.is_none() {
            match self.read_job(&mut input.reader) {
                Ok(Some(job)) => match self.claim(job) {
                    // Still the reader: waking another thread would cost more than the request.
                    Some(work) if work.is_quick() => self.run(work),
                    Some(work) => {
                        if self.waiting_readers.load(Ordering::SeqCst) == 0 {
                            self.add_thread(scope);
                        }
                        return Some(work);
                    }
                    None => {}
                },
                Ok(None) => input.ended = Some(Ok(())),
                Err(e) => input.ended = Some(Err(e)),
            }
        }
        None
    }

    fn add_thread<'scope>(&'scope self, scope: &'scope Scope<'scope, '_>) {
        if self.threads.fetch_add(1, Ordering::SeqCst) >= MAX_THREADS {
            self.threads.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let started = thread::Builder::new().name("sftp".into()).stack_size(THREAD_STACK).spawn_scoped(scope, move || self.run_thread(scope));
        if let Err(e) = started {
            // The session still works, with less concurrency.
            self.threads.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(error = %e, "cannot start another SFTP thread");
        }
    }

    /// The next request that needs a thread; requests answered on the spot are answered here.
    fn read_job(&self, reader: &mut BufReader<R>) -> Result<Option<Job>, SessionError> {
        loop {
            let Some(body) = read_packet(reader)? else { return Ok(None) };
            let (id, request) = match codec::decode(&body)? {
                Packet::Init { .. } => return Err(SessionError::NoInit),
                Packet::Request { id, request } => (id, request),
            };
            if self.shared.options.target.as_ref().is_some_and(Liveness::exited) {
                // Answer so the client shows why, then end the session: new sessions find the
                // new process.
                self.reply(&status(id, StatusCode::Failure, TARGET_EXITED), 0);
                return Err(SessionError::TargetExited);
            }
            if let Some(response) = immediate_response(&self.shared.options, id, &request) {
                self.reply(&response, 0);
                continue;
            }
            let expected = match &request {
                Request::Read { len, .. } => (*len).min(codec::MAX_IO) as usize + 13,
                Request::Readdir { .. } => 32 * 1024,
                _ => 256,
            };
            let cost = (body.len() + expected).min(IN_FLIGHT_BYTES);
            self.budget.acquire(cost);
            return Ok(Some(Job { id, request, cost }));
        }
    }

    /// Takes the job's lane if it is free, else queues the job behind the lane's running work.
    fn claim(&self, job: Job) -> Option<Work> {
        let mut state = lock(&self.shared.state);
        let Some(handle) = handle_of(&job.request) else {
            if state.paths_busy {
                state.paths_queue.push_back(job);
                return None;
            }
            state.paths_busy = true;
            return Some(Work::Paths(job));
        };
        let Some(entry) = state.handles.get_mut(handle).filter(|e| !e.closing) else {
            drop(state);
            self.reply(&status(job.id, StatusCode::Failure, "invalid handle"), job.cost);
            return None;
        };
        entry.closing = matches!(job.request, Request::Close { .. });
        match entry.object.take() {
            Some(object) => Some(Work::Handle { handle: handle.to_vec(), object, job }),
            None => {
                entry.queue.push_back(job);
                None
            }
        }
    }

    /// Runs the claimed request, then whatever queued up behind it in the same lane.
    fn run(&self, work: Work) {
        let shared = &self.shared;
        match work {
            Work::Paths(mut job) => loop {
                let response = run_path_request(shared, job.id, job.request);
                self.reply(&response, job.cost);
                let mut state = lock(&shared.state);
                match state.paths_queue.pop_front() {
                    Some(next) => job = next,
                    None => {
                        state.paths_busy = false;
                        return;
                    }
                }
            },
            Work::Handle { handle, mut object, mut job } => loop {
                let closing = matches!(job.request, Request::Close { .. });
                let response = run_handle_request(&shared.options, &mut object, job.id, job.request);
                if closing {
                    // Close the file before answering, as a client may act on it right away.
                    lock(&shared.state).handles.remove(&handle);
                    finish(&shared.options, object);
                    self.reply(&response, job.cost);
                    return;
                }
                self.reply(&response, job.cost);
                let mut state = lock(&shared.state);
                let Some(entry) = state.handles.get_mut(&handle) else { return };
                match entry.queue.pop_front() {
                    Some(next) => job = next,
                    None => {
                        entry.object = Some(object);
                        return;
                    }
                }
            },
        }
    }

    /// Writes one response and gives its bytes back to the budget.
    fn reply(&self, response: &Response, cost: usize) {
        let mut header = BytesMut::new();
        let payload = codec::encode(response, &mut header);
        {
            let mut output = lock(&self.output);
            if !output.failed
                && let Err(e) = write_all_vectored(&mut output.writer, &header, payload.as_deref().unwrap_or_default())
            {
                output.failed = true;
                tracing::debug!(error = %e, "cannot write SFTP responses");
            }
        }
        self.budget.release(cost);
    }
}

impl Budget {
    fn acquire(&self, cost: usize) {
        let mut state = lock(&self.state);
        // An empty budget always admits one request, however large.
        while state.used > 0 && state.used + cost > IN_FLIGHT_BYTES {
            state.reader_waiting = true;
            state = self.freed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.reader_waiting = false;
        state.used += cost;
    }

    fn release(&self, cost: usize) {
        if cost == 0 {
            return;
        }
        let mut state = lock(&self.state);
        state.used -= cost;
        if state.reader_waiting {
            self.freed.notify_one();
        }
    }
}

fn write_all_vectored(writer: &mut impl Write, header: &[u8], payload: &[u8]) -> io::Result<()> {
    let mut slices = [IoSlice::new(header), IoSlice::new(payload)];
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match writer.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    writer.flush()
}

fn read_packet(input: &mut impl Read) -> Result<Option<Bytes>, SessionError> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len);
    if len > codec::MAX_INCOMING_PACKET {
        return Err(SessionError::Oversized(len));
    }
    let mut body = BytesMut::zeroed(len as usize);
    input.read_exact(&mut body).map_err(|e| {
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
        ("users-groups-by-id@openssh.com", "1"),
    ]
}

/// Requests answered without touching the filesystem.
fn immediate_response(options: &Options, id: u32, request: &Request) -> Option<Response> {
    if options.read_only && request.is_modifying() {
        return Some(status(id, StatusCode::PermissionDenied, "read-only: this server refuses changes"));
    }
    Some(match request {
        Request::Limits => Response::Limits {
            id,
            max_packet: codec::MAX_PACKET as u64,
            max_read: codec::MAX_IO as u64,
            max_write: codec::MAX_IO as u64,
            max_handles: MAX_HANDLES as u64,
        },
        Request::HomeDirectory => Response::Name { id, entries: vec![name_only(b"/".to_vec())] },
        Request::UsersGroupsById { uids, gids } => {
            Response::UsersGroups { id, users: options.accounts.user_names(uids), groups: options.accounts.group_names(gids) }
        }
        Request::Unknown { kind } => status(id, StatusCode::OpUnsupported, format!("unsupported request type {kind}")),
        Request::UnknownExtended { name } => {
            status(id, StatusCode::OpUnsupported, format!("unsupported extension {}", String::from_utf8_lossy(name)))
        }
        _ => return None,
    })
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
fn run_path_request(shared: &Shared, id: u32, request: Request) -> Response {
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
                let state = lock(&shared.state);
                let file = |h: &[u8]| state.handles.get(h).and_then(|e| e.file.clone());
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

fn register(shared: &Shared, id: u32, object: Object, file: Option<Arc<File>>) -> Response {
    let mut state = lock(&shared.state);
    if state.handles.len() >= MAX_HANDLES {
        return status(id, StatusCode::Failure, "too many open handles");
    }
    let handle = state.next_handle.to_string().into_bytes();
    state.next_handle += 1;
    state.handles.insert(handle.clone(), HandleEntry { object: Some(object), queue: VecDeque::new(), file, closing: false });
    Response::Handle { id, handle }
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
        (Object::Dir { fd, dir, is_root }, Request::Readdir { .. }) => readdir(id, fd, dir, *is_root, &who.accounts),
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

fn readdir(id: u32, fd: &OwnedFd, dir: &mut Dir, is_root: bool, accounts: &Accounts) -> Response {
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
        entries.push(NameEntry { longname: listing::longname(&name, &st, now, accounts), attrs: listing::attrs(&st), filename: name });
    }
    if entries.is_empty() { status(id, StatusCode::Eof, "End of file") } else { Response::Name { id, entries } }
}

