//! The session engine: lanes, the in-flight byte budget and threads (packets from `framing.rs`). It knows what
//! each request is from the request table (`requests.rs`) and leaves what requests do to an
//! [`Operations`] implementation (`server.rs` against a confined root; a fake in the tests).
//!
//! Threads (leader/followers): whoever holds the input lock reads the next request and claims
//! it before letting go; the next thread waiting on the lock takes over reading while this one
//! runs the request and writes the reply itself, so a request never waits for a thread to wake
//! up (the next reader wakes off the critical path). Quick requests (metadata, WRITE)
//! are run by the reader itself without any hand-off. A slow disk holds up only its own
//! handle: a thread is added (up to `MAX_THREADS`) whenever nobody is left waiting to read.
//!
//! Lanes: requests on one handle run in arrival order (clients rely on it); requests that name
//! paths run in arrival order among themselves. A request on two handles (copy-data) takes its
//! place in both handles' lanes and runs once it is first in both.
//!
//! In-flight work is bounded by bytes (request size plus expected response size), released
//! only once the response is written, so a slow reader slows the reading of requests instead
//! of growing memory.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread::{self, Scope};

use bytes::BytesMut;

use super::codec::{self, Packet, Request, Response, StatusCode};
use super::framing::Packets;
use super::requests::{self, Kind, Lane};
use super::tally;
use crate::lock;

/// Bytes of requests plus expected responses in flight per session.
const IN_FLIGHT_BYTES: usize = 2 * 1024 * 1024;
pub const MAX_HANDLES: usize = 512;
/// Threads per session: how many slow requests (on different handles) can wait on the disk
/// at once while the session keeps reading.
const MAX_THREADS: usize = 8;
/// Requests need little stack: paths are resolved by the kernel, buffers live on the heap.
const THREAD_STACK: usize = 256 * 1024;

/// Why a session ended early; logged with Display only, so each message carries its cause's text
/// and the cause is not also a `source()` (a chain would print it twice).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client sent a {0}-byte packet, more than the {max} allowed", max = codec::MAX_INCOMING_PACKET)]
    Oversized(u32),
    #[error("client closed the stream in the middle of a packet")]
    Truncated,
    #[error("malformed packet: {0}")]
    Malformed(codec::DecodeError),
    #[error("first packet was not SSH_FXP_INIT")]
    NoInit,
    #[error("i/o on the SFTP stream: {0}")]
    Io(io::Error),
    #[error("{TARGET_EXITED}")]
    TargetExited,
}

impl From<codec::DecodeError> for SessionError {
    fn from(error: codec::DecodeError) -> Self {
        SessionError::Malformed(error)
    }
}

impl From<io::Error> for SessionError {
    fn from(error: io::Error) -> Self {
        SessionError::Io(error)
    }
}

const TARGET_EXITED: &str = "the served container's process has exited (restarted?); reconnect to reach the new one";

/// What requests do; the engine decides when and on which thread.
pub trait Operations: Sync {
    /// What a handle refers to (an open file or directory).
    type Object: Send;
    /// The served process has exited: the session answers once and ends.
    fn target_exited(&self) -> bool;
    /// A refusal decided before the request gets a lane (read-only mode).
    fn refusal(&self, id: u32, request: &Request) -> Option<Response>;
    /// A request of [`Lane::Reply`].
    fn answer(&self, id: u32, request: Request) -> Response;
    /// A request of [`Lane::Paths`]; an opened object gets a handle from the engine.
    fn run_paths(&self, id: u32, request: Request) -> Outcome<Self::Object>;
    /// A request of [`Lane::Handles`] with the handles' objects, in the lane's order.
    fn run_handles(&self, first: &mut Self::Object, second: Option<&mut Self::Object>, id: u32, request: Request) -> Response;
    /// The handle is gone (closed by the client, or the session ended).
    fn close(&self, object: Self::Object);
}

pub enum Outcome<O> {
    Reply(Response),
    Opened(O),
}

struct Job {
    id: u32,
    request: Request,
    /// Bytes of the in-flight budget held until the response is written.
    cost: usize,
}

/// A request waiting in a handle's lane: its own, or one shared with another handle.
enum Queued {
    Own(Job),
    Joint(u64),
}

/// A two-handle request collecting its handles' objects as it reaches the front of each lane.
struct Joint<O> {
    job: Job,
    handles: [Vec<u8>; 2],
    objects: [Option<O>; 2],
}

struct HandleEntry<O> {
    /// `None` while a thread runs this handle's requests (or a joint request holds it); later
    /// ones wait in `queue`.
    object: Option<O>,
    queue: VecDeque<Queued>,
    /// CLOSE was received: later requests on this handle are refused.
    closing: bool,
}

struct State<O> {
    handles: HashMap<Vec<u8>, HandleEntry<O>>,
    next_handle: u64,
    joints: HashMap<u64, Joint<O>>,
    next_joint: u64,
    /// A thread is running path requests; later ones wait in `paths_queue`.
    paths_busy: bool,
    paths_queue: VecDeque<Job>,
}

/// What the thread that claimed a request runs: the request and then its lane's queue.
enum Work<O> {
    Paths(Job),
    Handle { handle: Vec<u8>, object: O, job: Job },
    Joint { handles: [Vec<u8>; 2], objects: [O; 2], job: Job },
}

impl<O> Work<O> {
    fn is_quick(&self) -> bool {
        let (Work::Paths(job) | Work::Handle { job, .. } | Work::Joint { job, .. }) = self;
        job.request.is_quick()
    }
}

struct Input<R> {
    reader: R,
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

struct Session<R, W, O: Operations> {
    ops: O,
    state: Mutex<State<O::Object>>,
    input: Mutex<Input<R>>,
    output: Mutex<Output<W>>,
    budget: Budget,
    /// Threads waiting to take over reading; when none is left, the reader starts one.
    waiting_readers: AtomicUsize,
    threads: AtomicUsize,
}

pub fn status(id: u32, code: StatusCode, message: impl Into<String>) -> Response {
    Response::Status { id, code, message: message.into() }
}

/// Serves one SFTP session until the client closes the stream or sends something malformed.
/// Blocks the calling thread, which becomes the session's first thread.
pub fn serve<O: Operations, R: Packets, W: Write + Send>(ops: O, input: R, output: W) -> Result<(), SessionError> {
    let session = Session {
        ops,
        state: Mutex::new(State {
            handles: HashMap::new(),
            next_handle: 0,
            joints: HashMap::new(),
            next_joint: 0,
            paths_busy: false,
            paths_queue: VecDeque::new(),
        }),
        input: Mutex::new(Input { reader: input, ended: None }),
        output: Mutex::new(Output { writer: output, failed: false }),
        budget: Budget::default(),
        waiting_readers: AtomicUsize::new(0),
        threads: AtomicUsize::new(1),
    };
    session.handshake()?;
    thread::scope(|scope| session.run_thread(scope));
    // Every thread is gone: handles still open were never closed by the client.
    let mut guard = lock(&session.state);
    let state = &mut *guard;
    let objects = state.handles.drain().filter_map(|(_, entry)| entry.object);
    let joined = state.joints.drain().flat_map(|(_, joint)| joint.objects.into_iter().flatten());
    for object in objects.chain(joined).collect::<Vec<_>>() {
        session.ops.close(object);
    }
    drop(guard);
    let ended = lock(&session.input).ended.take();
    ended.unwrap_or(Ok(()))
}

impl<R: Packets, W: Write + Send, O: Operations> Session<R, W, O> {
    fn handshake(&self) -> Result<(), SessionError> {
        let mut input = lock(&self.input);
        let Some(first) = input.reader.next_packet()? else {
            input.ended = Some(Ok(()));
            return Ok(());
        };
        match codec::decode(&first)? {
            Packet::Init { .. } => self.reply(&version(), 0),
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
    fn next_work<'scope>(&'scope self, scope: &'scope Scope<'scope, '_>) -> Option<Work<O::Object>> {
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
        let started =
            thread::Builder::new().name("sftp".into()).stack_size(THREAD_STACK).spawn_scoped(scope, move || self.run_thread(scope));
        if let Err(e) = started {
            // The session still works, with less concurrency.
            self.threads.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(error = %e, "cannot start another SFTP thread");
        }
    }

    /// The next request that needs a lane; requests answered on the spot are answered here.
    fn read_job(&self, reader: &mut R) -> Result<Option<Job>, SessionError> {
        loop {
            let Some(body) = reader.next_packet()? else { return Ok(None) };
            let (id, request) = match codec::decode(&body)? {
                // OpenSSH answers a repeated INIT with VERSION again.
                Packet::Init { .. } => {
                    self.reply(&version(), 0);
                    continue;
                }
                Packet::Request { id, request } => (id, request),
            };
            if self.ops.target_exited() {
                // Answer so the client shows why, then end the session: new sessions find the
                // new process.
                self.reply_to(request.kind(), &status(id, StatusCode::Failure, TARGET_EXITED), 0);
                return Err(SessionError::TargetExited);
            }
            if let Some(response) = self.ops.refusal(id, &request) {
                self.reply_to(request.kind(), &response, 0);
                continue;
            }
            if request.lane() == Lane::Reply {
                let kind = request.kind();
                self.reply_to(kind, &self.ops.answer(id, request), 0);
                continue;
            }
            let cost = (body.len() + request.expected_reply_len()).min(IN_FLIGHT_BYTES);
            self.budget.acquire(cost);
            return Ok(Some(Job { id, request, cost }));
        }
    }

    /// Takes the job's lane if it is free, else queues the job behind the lane's running work.
    fn claim(&self, job: Job) -> Option<Work<O::Object>> {
        let mut state = lock(&self.state);
        let (first, second) = match job.request.lane() {
            Lane::Handles(first, second) => (first.to_vec(), second.map(<[u8]>::to_vec)),
            Lane::Paths | Lane::Reply => {
                if state.paths_busy {
                    state.paths_queue.push_back(job);
                    return None;
                }
                state.paths_busy = true;
                return Some(Work::Paths(job));
            }
        };
        let refusal = match second {
            None => match state.handles.get_mut(&first).filter(|e| !e.closing) {
                Some(entry) => {
                    entry.closing = job.request.kind() == Kind::Close;
                    return match entry.object.take() {
                        Some(object) => Some(Work::Handle { handle: first, object, job }),
                        None => {
                            entry.queue.push_back(Queued::Own(job));
                            None
                        }
                    };
                }
                None => (requests::invalid_handle(job.request.kind()), "invalid handle"),
            },
            // One object cannot be lent twice; OpenSSH refuses this too.
            Some(second) if second == first => (StatusCode::Failure, "the same handle twice"),
            Some(second) => {
                let key = state.next_joint;
                match state.handles.get_disjoint_mut([&first, &second]) {
                    [Some(a), Some(b)] if !a.closing && !b.closing => {
                        let mut objects = [None, None];
                        for (entry, slot) in [a, b].into_iter().zip(&mut objects) {
                            match entry.object.take() {
                                Some(object) => *slot = Some(object),
                                None => entry.queue.push_back(Queued::Joint(key)),
                            }
                        }
                        state.next_joint += 1;
                        return match objects {
                            [Some(a), Some(b)] => Some(Work::Joint { handles: [first, second], objects: [a, b], job }),
                            objects => {
                                state.joints.insert(key, Joint { job, handles: [first, second], objects });
                                None
                            }
                        };
                    }
                    _ => (requests::invalid_handle(job.request.kind()), "invalid handle"),
                }
            }
        };
        drop(state);
        self.reply_to(job.request.kind(), &status(job.id, refusal.0, refusal.1), job.cost);
        None
    }

    /// Runs the claimed request, then whatever queued up behind it in the same lanes.
    fn run(&self, work: Work<O::Object>) {
        // A joint request frees two lanes: the second one's queue runs after the first's.
        let mut later = Vec::new();
        let mut next = Some(work);
        while let Some(work) = next.take().or_else(|| later.pop()) {
            match work {
                Work::Paths(job) => {
                    let kind = job.request.kind();
                    let response = match self.ops.run_paths(job.id, job.request) {
                        Outcome::Reply(response) => response,
                        Outcome::Opened(object) => self.register(job.id, object),
                    };
                    self.reply_to(kind, &response, job.cost);
                    let mut state = lock(&self.state);
                    next = state.paths_queue.pop_front().map(Work::Paths);
                    state.paths_busy = next.is_some();
                }
                Work::Handle { handle, mut object, job } => {
                    let kind = job.request.kind();
                    let response = self.ops.run_handles(&mut object, None, job.id, job.request);
                    if kind == Kind::Close {
                        // Close before answering, as a client may act on it right away.
                        lock(&self.state).handles.remove(&handle);
                        self.ops.close(object);
                        self.reply_to(kind, &response, job.cost);
                        continue;
                    }
                    self.reply_to(kind, &response, job.cost);
                    next = advance(&mut lock(&self.state), handle, object);
                }
                Work::Joint { handles: [first, second], objects: [mut a, mut b], job } => {
                    let kind = job.request.kind();
                    let response = self.ops.run_handles(&mut a, Some(&mut b), job.id, job.request);
                    self.reply_to(kind, &response, job.cost);
                    let mut state = lock(&self.state);
                    next = advance(&mut state, first, a);
                    later.extend(advance(&mut state, second, b));
                }
            }
        }
    }

    fn register(&self, id: u32, object: O::Object) -> Response {
        let mut state = lock(&self.state);
        if state.handles.len() >= MAX_HANDLES {
            drop(state);
            self.ops.close(object);
            return status(id, StatusCode::Failure, "too many open handles");
        }
        let handle = state.next_handle.to_string().into_bytes();
        state.next_handle += 1;
        state.handles.insert(handle.clone(), HandleEntry { object: Some(object), queue: VecDeque::new(), closing: false });
        Response::Handle { id, handle }
    }

    /// Counts the response to a request of `kind` (`tally`), then writes it.
    fn reply_to(&self, kind: Kind, response: &Response, cost: usize) {
        tally::count(kind, response);
        self.reply(response, cost);
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

fn version() -> Response {
    Response::Version { extensions: requests::extensions() }
}

/// Hands `object` to the next request in its handle's lane: that request's work when it can
/// run now, else the object waits (in the handle, or in a joint request still missing its
/// other handle).
fn advance<O>(state: &mut State<O>, handle: Vec<u8>, object: O) -> Option<Work<O>> {
    let entry = state.handles.get_mut(&handle)?;
    let key = match entry.queue.pop_front() {
        None => {
            entry.object = Some(object);
            return None;
        }
        Some(Queued::Own(job)) => return Some(Work::Handle { handle, object, job }),
        Some(Queued::Joint(key)) => key,
    };
    let joint = state.joints.get_mut(&key)?;
    let slot = joint.handles.iter().position(|h| *h == handle)?;
    joint.objects[slot] = Some(object);
    if joint.objects.iter().any(Option::is_none) {
        return None;
    }
    let Joint { job, handles, objects: [Some(a), Some(b)] } = state.joints.remove(&key)? else { return None };
    Some(Work::Joint { handles, objects: [a, b], job })
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

#[cfg(test)]
mod tests {
    //! The engine over a socket pair, with operations that block on a gate where a test needs
    //! a request to stay in flight.
    use std::collections::HashSet;
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;
    use crate::sftp::codec::fxp;
    use crate::sftp::framing::Framer;

    /// Opened objects are their names; READ on "slow" waits until the gate opens.
    #[derive(Default)]
    struct Fake {
        open: Mutex<bool>,
        opened: Condvar,
        closed: AtomicUsize,
        /// The threads that ran handle requests.
        threads: Mutex<HashSet<thread::ThreadId>>,
    }

    impl Fake {
        fn open_gate(&self) {
            *lock(&self.open) = true;
            self.opened.notify_all();
        }
    }

    impl Operations for &Fake {
        type Object = Vec<u8>;
        fn target_exited(&self) -> bool {
            false
        }
        fn refusal(&self, _: u32, _: &Request) -> Option<Response> {
            None
        }
        fn answer(&self, id: u32, _: Request) -> Response {
            status(id, StatusCode::OpUnsupported, "")
        }
        fn run_paths(&self, id: u32, request: Request) -> Outcome<Vec<u8>> {
            match request {
                Request::Open { path, .. } => Outcome::Opened(path),
                _ => Outcome::Reply(status(id, StatusCode::Ok, "")),
            }
        }
        fn run_handles(&self, object: &mut Vec<u8>, _: Option<&mut Vec<u8>>, id: u32, request: Request) -> Response {
            lock(&self.threads).insert(thread::current().id());
            if matches!(request, Request::Read { .. }) && object == b"slow" {
                let mut open = lock(&self.open);
                while !*open {
                    open = self.opened.wait(open).unwrap();
                }
            }
            status(id, StatusCode::Ok, "")
        }
        fn close(&self, _: Vec<u8>) {
            self.closed.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn string(bytes: &[u8]) -> Vec<u8> {
        [&(bytes.len() as u32).to_be_bytes()[..], bytes].concat()
    }

    struct Client {
        stream: UnixStream,
    }

    impl Client {
        fn send(&mut self, kind: u8, id: u32, fields: &[&[u8]]) {
            let body = [&[kind][..], &id.to_be_bytes(), &fields.concat()].concat();
            self.stream.write_all(&[&(body.len() as u32).to_be_bytes()[..], &body].concat()).unwrap();
        }

        /// The next reply's type and id, or `None` if none comes within `wait`.
        fn receive(&mut self, wait: Duration) -> Option<(u8, u32)> {
            self.stream.set_read_timeout(Some(wait)).unwrap();
            let mut len = [0u8; 4];
            self.stream.read_exact(&mut len).ok()?;
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            self.stream.set_read_timeout(None).unwrap();
            self.stream.read_exact(&mut body).unwrap();
            Some((body[0], u32::from_be_bytes(body[1..5].try_into().unwrap())))
        }

        fn id(&mut self) -> u32 {
            self.receive(Duration::from_secs(10)).expect("a reply").1
        }

        fn silent_for(&mut self, wait: Duration) -> bool {
            self.receive(wait).is_none()
        }

        fn open(&mut self, id: u32, name: &[u8]) -> Vec<u8> {
            self.send(fxp::OPEN, id, &[&string(name), &1u32.to_be_bytes(), &0u32.to_be_bytes()]);
            let (kind, reply) = self.receive(Duration::from_secs(10)).unwrap();
            assert_eq!((kind, reply), (fxp::HANDLE, id));
            // Handles are numbered from 0 in opening order.
            (id - 1).to_string().into_bytes()
        }

        fn read(&mut self, id: u32, handle: &[u8], len: u32) {
            self.send(fxp::READ, id, &[&string(handle), &0u64.to_be_bytes(), &len.to_be_bytes()]);
        }
    }

    const QUIET: Duration = Duration::from_millis(300);

    /// Runs a session on `fake` while `test` drives the client side.
    fn session(fake: &Fake, test: impl FnOnce(&mut Client)) {
        let (client, server) = UnixStream::pair().unwrap();
        thread::scope(|scope| {
            let output = server.try_clone().unwrap();
            let served = scope.spawn(move || serve(fake, Framer::new(server), output));
            let mut client = Client { stream: client };
            let init = [&5u32.to_be_bytes()[..], &[fxp::INIT], &3u32.to_be_bytes()].concat();
            client.stream.write_all(&init).unwrap();
            let mut version = [0u8; 5];
            client.stream.read_exact(&mut version).unwrap();
            let mut rest = vec![0u8; u32::from_be_bytes(version[..4].try_into().unwrap()) as usize - 1];
            client.stream.read_exact(&mut rest).unwrap();
            test(&mut client);
            fake.open_gate();
            client.stream.shutdown(std::net::Shutdown::Write).unwrap();
            while client.receive(Duration::from_secs(10)).is_some() {}
            served.join().unwrap().unwrap();
        });
    }

    /// The cause is in the message and not also the source: a reporter that walks the chain
    /// prints it once.
    #[test]
    fn an_io_error_names_its_cause_once() {
        let error = SessionError::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(std::error::Error::source(&error).is_none());
        assert_eq!(error.to_string(), "i/o on the SFTP stream: broken pipe");
    }

    #[test]
    fn one_handle_in_order_while_others_pass_a_slow_one() {
        let fake = Fake::default();
        session(&fake, |client| {
            let slow = client.open(1, b"slow");
            let fast = client.open(2, b"fast");
            client.read(10, &slow, 1);
            client.read(11, &slow, 1);
            client.read(12, &fast, 1);
            client.send(fxp::STAT, 13, &[&string(b"x")]);
            let mut passed = [client.id(), client.id()];
            passed.sort();
            assert_eq!(passed, [12, 13]);
            assert!(client.silent_for(QUIET), "a request overtook the one before it on its handle");
            fake.open_gate();
            assert_eq!([client.id(), client.id()], [10, 11]);
        });
    }

    #[test]
    fn writes_run_on_the_reader_without_waking_another_thread() {
        let fake = Fake::default();
        session(&fake, |client| {
            let file = client.open(1, b"file");
            for id in 10..110 {
                client.send(fxp::WRITE, id, &[&string(&file), &0u64.to_be_bytes(), &string(&[0; 4096])]);
                assert_eq!(client.id(), id);
            }
        });
        assert_eq!(lock(&fake.threads).len(), 1, "WRITEs were handed to other threads");
    }

    #[test]
    fn close_waits_for_the_read_in_flight_and_refuses_later_requests() {
        let fake = Fake::default();
        session(&fake, |client| {
            let slow = client.open(1, b"slow");
            client.read(10, &slow, 1);
            client.send(fxp::CLOSE, 11, &[&string(&slow)]);
            client.read(12, &slow, 1);
            assert_eq!(client.receive(QUIET * 10), Some((fxp::STATUS, 12)), "a request after CLOSE is refused at once");
            assert!(client.silent_for(QUIET));
            assert_eq!(fake.closed.load(Ordering::SeqCst), 0, "closed under a running READ");
            fake.open_gate();
            assert_eq!([client.id(), client.id()], [10, 11]);
            assert_eq!(fake.closed.load(Ordering::SeqCst), 1);
        });
    }

    #[test]
    fn a_full_budget_stops_reading_requests() {
        let fake = Fake::default();
        session(&fake, |client| {
            let slow = client.open(1, b"slow");
            // Each maximal READ holds about 255 KiB of the 2 MiB budget: the 9th one waits.
            for id in 10..19 {
                client.read(id, &slow, codec::MAX_IO);
            }
            client.send(fxp::STAT, 99, &[&string(b"x")]);
            assert!(client.silent_for(QUIET), "read past a full budget");
            fake.open_gate();
            let mut ids: Vec<u32> = (0..10).map(|_| client.id()).collect();
            // The STAT runs as soon as it is read, so it may pass the last READs.
            ids.retain(|&id| id != 99);
            assert_eq!(ids, (10..19).collect::<Vec<_>>());
        });
    }

    #[test]
    fn copy_data_waits_for_both_handles_lanes() {
        let fake = Fake::default();
        session(&fake, |client| {
            let slow = client.open(1, b"slow");
            let fast = client.open(2, b"fast");
            client.read(10, &slow, 1);
            let copy = [
                string(b"copy-data"),
                string(&fast),
                0u64.to_be_bytes().to_vec(),
                0u64.to_be_bytes().to_vec(),
                string(&slow),
                0u64.to_be_bytes().to_vec(),
            ];
            client.send(fxp::EXTENDED, 11, &copy.iter().map(Vec::as_slice).collect::<Vec<_>>());
            client.read(12, &fast, 1);
            assert!(client.silent_for(QUIET), "copy-data or a later READ on its source overtook the slow READ");
            fake.open_gate();
            assert_eq!([client.id(), client.id(), client.id()], [10, 11, 12]);
        });
    }
}
