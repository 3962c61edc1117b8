//! The SSH front end (russh): host key and login from the credentials, only the `sftp`
//! subsystem, each SFTP channel served by its own worker process through two rings.
//!
//! Flow control: client data arrives in `Handler::data` (inside russh's session loop), which
//! copies it straight into the worker's ring of requests (`crate::ring`, 1 MiB), so the loop
//! only waits when the worker is far behind; the worker's ring of replies is copied to the
//! channel by another task through russh's window-aware writer. Neither direction can hold the
//! other up. Writing from the loop itself, rather than through a queue and a task, saves a copy,
//! an allocation and a task wake-up per SSH packet (see "Benchmarks (SFTP)" in the README).
//!
//! Lifetimes: a connection must log in within the login deadline (banner, key exchange and
//! authentication together) and may read only `PREAUTH_BYTES` before it does; `admission`
//! decides who may connect and try. A worker ends when its channel closes or its connection
//! ends, whatever it is waiting for (the client's window, a full pipe): each channel's task
//! stops when the handler drops its stop signal, and the worker's channel slot is freed only
//! once the worker has exited, so lingering workers still count against the per-connection cap.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use russh::keys::PublicKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet, Preferred, cipher};
use rustix::event::{PollFd, PollFlags, Timespec};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};

use crate::access::Access;
use crate::admission::{Admission, Penalty, Refusal, Startup};
use crate::credentials::{Credentials, State};
use crate::metrics::{Metrics, end_reason};
use crate::ring;

/// Channels (and their workers, until they have exited) per connection, like OpenSSH's
/// `MaxSessions` default.
const MAX_CHANNELS_PER_CONNECTION: usize = 10;
/// How long a worker may take to exit after its channel is gone (its pipes are closed first,
/// so a worker blocked on them exits at once).
const WORKER_EXIT_GRACE: Duration = Duration::from_secs(5);
/// Bytes a client may send before it has logged in: a login with several keys takes a few KiB;
/// this bounds unauthenticated re-keying (each key exchange costs the server a signature).
const PREAUTH_BYTES: u64 = 64 * 1024;
/// How often a channel whose worker stopped reading checks that the client is still connected.
const PEER_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long a client may go on sending requests while not reading a single reply: its worker
/// then waits on both its rings, russh's loop waits for the worker and stops reading the
/// socket, so not even a hang-up could be seen (the client's FIN queues behind unsent data). No
/// client that reads its replies gets here.
const STALL_LIMIT: Duration = Duration::from_secs(10);

/// One connection's totals for its audit line; bytes also go to the process's metrics.
pub struct Stats {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    user: std::sync::Mutex<Option<String>>,
    metrics: Arc<Metrics>,
}

impl Stats {
    fn new(metrics: Arc<Metrics>) -> Stats {
        Stats { bytes_in: AtomicU64::new(0), bytes_out: AtomicU64::new(0), user: std::sync::Mutex::new(None), metrics }
    }

    fn received(&self, bytes: usize) {
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
        self.metrics.received(bytes);
    }

    fn sent(&self, bytes: usize) {
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
        self.metrics.sent(bytes);
    }
}

/// Front-end settings that are not part of the russh configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time from accept to a successful login (banner, key exchange and authentication).
    pub login_deadline: Duration,
    /// Seconds running sessions get to finish after SIGTERM.
    pub grace: Duration,
}

/// The russh configuration for one host key.
pub fn config_for(credentials: &Credentials) -> Arc<russh::server::Config> {
    let mut ciphers = vec![cipher::AES_128_GCM];
    ciphers.extend(Preferred::default().cipher.iter().copied().filter(|c| *c != cipher::AES_128_GCM));
    Arc::new(russh::server::Config {
        // The comment names OpenSSH's SFTP dialect: asyncssh and WinSCP send SYMLINK's arguments
        // in OpenSSH's order (which we speak) only to servers whose version string says OpenSSH.
        server_id: russh::SshId::Standard(format!("SSH-2.0-podsftp_{} OpenSSH-compatible-SFTP", env!("CARGO_PKG_VERSION")).into()),
        methods: MethodSet::from(&[MethodKind::PublicKey, MethodKind::Password][..]),
        auth_rejection_time: Duration::from_secs(1),
        auth_rejection_time_initial: Some(Duration::from_millis(0)),
        keys: vec![credentials.host_key.clone()],
        window_size: 8 * 1024 * 1024,
        maximum_packet_size: 64 * 1024,
        channel_buffer_size: 64,
        event_buffer_size: 16,
        preferred: Preferred { cipher: ciphers.into(), ..Preferred::default() },
        max_auth_attempts: 6,
        inactivity_timeout: Some(Duration::from_secs(3600)),
        keepalive_interval: Some(Duration::from_secs(60)),
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    })
}

struct Connection {
    credentials: watch::Receiver<State>,
    access: Arc<Access>,
    admission: Arc<Admission>,
    peer: SocketAddr,
    /// Held until the login succeeds (then `session` takes over) or the connection ends.
    startup: Option<Startup>,
    session: Option<OwnedSemaphorePermit>,
    authenticated: watch::Sender<bool>,
    /// A duplicate of the connection's socket: polled for a hang-up while russh's loop waits
    /// for a worker, and shut down by the login deadline.
    socket: Arc<OwnedFd>,
    user: Option<String>,
    /// Opened session channels without a subsystem yet, each with its slot.
    opened: HashMap<ChannelId, (Channel<Msg>, OwnedSemaphorePermit)>,
    running: HashMap<ChannelId, Running>,
    channel_slots: Arc<Semaphore>,
    stats: Arc<Stats>,
}

/// A channel with its worker: dropping it (channel closed, connection ended) stops the worker.
struct Running {
    /// The worker's input; `None` after the client's EOF or once the worker stopped reading.
    input: Option<ring::Sender>,
    output: Arc<OutputProgress>,
    _stop: oneshot::Sender<()>,
}

/// Since when the worker's output has been waiting for the client's window, if it is.
#[derive(Default)]
struct OutputProgress(std::sync::Mutex<Option<Instant>>);

impl OutputProgress {
    fn set(&self, waiting_since: Option<Instant>) {
        *crate::lock(&self.0) = waiting_since;
    }

    fn stalled(&self) -> bool {
        crate::lock(&self.0).is_some_and(|since| since.elapsed() > STALL_LIMIT)
    }
}

impl Connection {
    fn current(&self) -> Option<Arc<Credentials>> {
        self.credentials.borrow().as_ref().ok().cloned()
    }

    /// Whether this source may try to log in right now: `Ok(None)` to go on checking, a
    /// rejection without a check when password checks are over the global rate, and an error
    /// (ending the connection) when the source is penalized, so its connections still open
    /// cannot go on guessing.
    fn may_try(&self, user: &str, method: &'static str) -> Result<Option<Auth>, russh::Error> {
        let checked = if method == "password" {
            self.admission.may_check_password(self.peer.ip(), Instant::now())
        } else {
            self.admission.may_try(self.peer.ip(), Instant::now())
        };
        match checked {
            Ok(()) => Ok(None),
            Err(refusal) => {
                tracing::info!(user, client = %self.peer, method, %refusal, "login attempt refused");
                self.stats.metrics.auth_attempt(method, "refused");
                match refusal {
                    Refusal::Penalized { .. } => Err(russh::Error::Disconnect),
                    _ => Ok(Some(Auth::reject())),
                }
            }
        }
    }

    fn accepted(&mut self, user: &str, method: &'static str) -> Auth {
        // The startup slot is given up only for a session slot: a refused connection stays a
        // startup (still under the login deadline), and cannot get in on a later attempt.
        if self.session.is_none() {
            let Some(startup) = &self.startup else { return Auth::reject() };
            match startup.session_slot() {
                Ok(permit) => {
                    self.session = Some(permit);
                    self.startup = None;
                }
                Err(refusal) => {
                    tracing::warn!(user, client = %self.peer, method, %refusal, "login refused");
                    self.stats.metrics.auth_attempt(method, "refused");
                    return Auth::reject();
                }
            }
        }
        tracing::info!(user, client = %self.peer, method, "authenticated");
        self.stats.metrics.auth_attempt(method, "accepted");
        self.stats.metrics.session_started();
        self.user = Some(user.to_string());
        *crate::lock(&self.stats.user) = Some(user.to_string());
        let _ = self.authenticated.send(true);
        Auth::Accept
    }

    fn refuse(&self, user: &str, method: &'static str) -> Auth {
        tracing::info!(user, client = %self.peer, method, "authentication failed");
        self.stats.metrics.auth_attempt(method, "rejected");
        self.admission.penalize(self.peer.ip(), Penalty::AuthFail, Instant::now());
        Auth::reject()
    }

    fn key_ok(&self, user: &str, key: &PublicKey) -> bool {
        self.current().is_some_and(|c| c.key_matches(user, key, self.peer.ip()))
    }

    async fn start_sftp(&mut self, channel_id: ChannelId, session: &mut Session) -> Result<(), String> {
        let user = self.user.clone().ok_or("not authenticated")?;
        let (channel, slot) = self.opened.remove(&channel_id).ok_or("unknown channel")?;
        let resolved = self.access.resolve().await.map_err(|e| e.to_string())?;
        let (child, input, replies, reports) =
            self.access.spawn_sftp(&resolved, &user, &self.peer.to_string()).map_err(|e| format!("cannot start the SFTP worker: {e}"))?;
        let reports =
            tokio::net::unix::pipe::Receiver::from_owned_fd(reports).map_err(|e| format!("the SFTP worker's report pipe: {e}"))?;
        let metrics = self.stats.metrics.clone();
        tokio::spawn(async move { metrics.add_reports(reports).await });
        let (stop, stopped) = oneshot::channel();
        let output = Arc::new(OutputProgress::default());
        // The worker's input is closed when this entry goes (channel closed, connection ended).
        self.running.insert(channel_id, Running { input: Some(input), output: output.clone(), _stop: stop });
        // Only the writer is used: client data comes through `Handler::data`, so the channel's
        // own receive queue must not exist (nobody would drain it).
        let writer = channel.make_writer();
        drop(channel);
        let handle = session.handle();
        let stats = self.stats.clone();
        let client = self.peer;
        tokio::spawn(async move {
            let channel_gone = tokio::select! {
                () = copy_output(replies, writer, client, &stats, &output) => false,
                _ = stopped => true,
            };
            // The worker's requests are gone with its `Running` when the channel is; its replies
            // now: a worker waiting on either ring sees its socket closed and exits.
            let code = reap(child).await;
            // The slot is free only now that the worker is gone.
            drop(slot);
            if !channel_gone {
                let _ = handle.exit_status_request(channel_id, code).await;
                let _ = handle.eof(channel_id).await;
                let _ = handle.close(channel_id).await;
            }
        });
        Ok(())
    }
}

/// Copies the worker's replies to the channel until either ends.
async fn copy_output(
    mut replies: ring::Receiver,
    mut writer: impl tokio::io::AsyncWrite + Unpin,
    client: SocketAddr,
    stats: &Stats,
    progress: &OutputProgress,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match replies.read(&mut buf).await {
            Ok(0) => return,
            Err(error) => return log_ring_error(client, "replies", &error),
            Ok(n) => n,
        };
        progress.set(Some(Instant::now()));
        let written = writer.write_all(&buf[..n]).await;
        progress.set(None);
        if written.is_err() {
            return;
        }
        stats.sent(n);
    }
}

/// A worker that broke a ring is worth a line; one that is gone (its socket closed) is not.
fn log_ring_error(client: SocketAddr, ring: &str, error: &std::io::Error) {
    if error.kind() == std::io::ErrorKind::InvalidData {
        tracing::warn!(%client, ring, %error, "closing the SFTP worker's rings");
    }
}

/// Waits for a worker whose sockets are closed, killing it after `WORKER_EXIT_GRACE`; its exit
/// code for the client.
async fn reap(mut child: Child) -> u32 {
    match tokio::time::timeout(WORKER_EXIT_GRACE, child.wait()).await {
        Ok(Ok(status)) => status.code().unwrap_or(1) as u32,
        _ => {
            let _ = child.kill().await;
            1
        }
    }
}

/// Whether the client hung up (FIN or RST), without reading from the socket.
fn hung_up(socket: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(socket, PollFlags::RDHUP)];
    // A zero timeout: asks, never waits.
    let ready = rustix::event::poll(&mut fds, Some(&Timespec { tv_sec: 0, tv_nsec: 0 })).is_ok_and(|ready| ready > 0);
    ready && fds[0].revents().intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR)
}

/// Resolves when the client hung up, or when its channel's output has waited for its window
/// longer than `STALL_LIMIT` (see there).
async fn until_gone(socket: &OwnedFd, output: &OutputProgress) -> russh::Error {
    loop {
        if hung_up(socket) {
            return russh::Error::HUP;
        }
        if output.stalled() {
            return russh::Error::IO(std::io::Error::other(format!(
                "client sent requests for {} s without reading any reply",
                STALL_LIMIT.as_secs()
            )));
        }
        tokio::time::sleep(PEER_CHECK_INTERVAL).await;
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        if let Some(refused) = self.may_try(user, "password")? {
            return Ok(refused);
        }
        match self.current() {
            Some(c) if c.password_matches(user, password) => Ok(self.accepted(user, "password")),
            _ => Ok(self.refuse(user, "password")),
        }
    }

    async fn auth_publickey_offered(&mut self, user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        Ok(if self.key_ok(user, offer.public_key) { Auth::Accept } else { Auth::reject() })
    }

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        if let Some(refused) = self.may_try(user, "publickey")? {
            return Ok(refused);
        }
        if self.key_ok(user, key.public_key) { Ok(self.accepted(user, "publickey")) } else { Ok(self.refuse(user, "publickey")) }
    }

    async fn channel_open_session(&mut self, channel: Channel<Msg>, reply: ChannelOpenHandle, _: &mut Session) -> Result<(), Self::Error> {
        match self.channel_slots.clone().try_acquire_owned() {
            Ok(slot) => {
                self.opened.insert(channel.id(), (channel, slot));
                reply.accept().await;
            }
            Err(_) => reply.reject(russh::ChannelOpenFailure::ResourceShortage).await,
        }
        Ok(())
    }

    async fn subsystem_request(&mut self, channel: ChannelId, name: &str, session: &mut Session) -> Result<(), Self::Error> {
        if name != "sftp" {
            tracing::info!(client = %self.peer, subsystem = name, "refused subsystem");
            return session.channel_failure(channel);
        }
        match self.start_sftp(channel, session).await {
            Ok(()) => session.channel_success(channel),
            Err(reason) => {
                tracing::warn!(client = %self.peer, %reason, "cannot serve SFTP");
                self.stats.metrics.worker_spawn_failed();
                session.channel_failure(channel)
            }
        }
    }

    async fn data(&mut self, channel: ChannelId, data: &[u8], _: &mut Session) -> Result<(), Self::Error> {
        let Some(Running { input: Some(input), output, .. }) = self.running.get_mut(&channel) else { return Ok(()) };
        self.stats.received(data.len());
        // Waiting here is the backpressure (russh grants window as data arrives), but it also
        // stops russh from reading the socket: notice a client that is gone meanwhile, or the
        // connection (and every worker on it) would wait forever. Biased: the ring usually
        // takes the data at once, and then the hang-up check (a syscall) is not needed.
        let written = tokio::select! {
            biased;
            written = input.send(data) => written,
            gone = until_gone(&self.socket, output) => return Err(gone),
        };
        if let Err(error) = written {
            log_ring_error(self.peer, "requests", &error);
            // The worker is gone; its output task ends the channel. Later data is dropped.
            if let Some(running) = self.running.get_mut(&channel) {
                running.input = None;
            }
        }
        Ok(())
    }

    async fn channel_eof(&mut self, channel: ChannelId, _: &mut Session) -> Result<(), Self::Error> {
        if let Some(running) = self.running.get_mut(&channel) {
            running.input = None;
        }
        Ok(())
    }

    async fn channel_close(&mut self, channel: ChannelId, _: &mut Session) -> Result<(), Self::Error> {
        self.running.remove(&channel);
        self.opened.remove(&channel);
        Ok(())
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        tracing::info!(client = %self.peer, "refused shell");
        session.channel_failure(channel)
    }

    async fn exec_request(&mut self, channel: ChannelId, _: &[u8], session: &mut Session) -> Result<(), Self::Error> {
        tracing::info!(client = %self.peer, "refused exec");
        session.channel_failure(channel)
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _: &str,
        _: u32,
        _: u32,
        _: u32,
        _: u32,
        _: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _: bool,
        _: &str,
        _: &str,
        _: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn env_request(&mut self, channel: ChannelId, _: &str, _: &str, session: &mut Session) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }
}

/// The client's socket, counting what it sends until the login: past `PREAUTH_BYTES` reads fail,
/// which ends the connection.
struct Metered {
    socket: TcpStream,
    read: u64,
    authenticated: watch::Receiver<bool>,
}

impl AsyncRead for Metered {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.socket).poll_read(cx, buf);
        if !*self.authenticated.borrow() {
            self.read += (buf.filled().len() - before) as u64;
            if self.read > PREAUTH_BYTES {
                return Poll::Ready(Err(std::io::Error::other(format!("more than {PREAUTH_BYTES} bytes before logging in"))));
            }
        }
        polled
    }
}

impl AsyncWrite for Metered {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

/// Resolves when the login deadline passes without a login (never once logged in, or once the
/// connection's handler is gone).
async fn login_overdue(mut authenticated: watch::Receiver<bool>, deadline: Duration) {
    let elapsed = tokio::time::timeout(deadline, authenticated.wait_for(|logged_in| *logged_in)).await.is_err();
    if !elapsed {
        std::future::pending::<()>().await;
    }
}

/// How one connection ended, for its closing log line and the source's penalty.
fn penalty_for(logged_in: bool, overdue: bool, error: Option<&str>) -> Option<Penalty> {
    match (logged_in, overdue) {
        (true, _) => None,
        (false, true) => Some(Penalty::LoginTooLong),
        (false, false) if error.is_some_and(|e| e.contains("before logging in")) => Some(Penalty::LoginTooLong),
        (false, false) => Some(Penalty::NoAuth),
    }
}

/// Accepts connections until `shutdown` resolves, then waits up to `limits.grace` for running
/// sessions.
pub async fn serve(
    listener: TcpListener,
    credentials: watch::Receiver<State>,
    access: Arc<Access>,
    shutdown: impl std::future::Future<Output = ()>,
    limits: Limits,
    metrics: Arc<Metrics>,
) {
    let admission = Admission::new(Instant::now());
    let mut configs: Option<(Arc<Credentials>, Arc<russh::server::Config>)> = None;
    tokio::pin!(shutdown);
    loop {
        let (socket, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = crate::listener::accept(&listener) => match accepted {
                Some(pair) => pair,
                None => continue,
            },
        };
        let startup = match admission.admit(peer.ip(), Instant::now()) {
            Ok(startup) => startup,
            Err(refusal) => {
                tracing::info!(client = %peer, %refusal, "connection refused");
                continue;
            }
        };
        let current = credentials.borrow().clone();
        let creds = match current {
            Ok(c) => c,
            Err(reason) => {
                tracing::warn!(client = %peer, %reason, "closing connection: no credentials");
                continue;
            }
        };
        let config = match &configs {
            Some((c, config)) if Arc::ptr_eq(c, &creds) => config.clone(),
            _ => {
                let config = config_for(&creds);
                configs = Some((creds.clone(), config.clone()));
                config
            }
        };
        let _ = socket.set_nodelay(true);
        let duplicate = match socket.as_fd().try_clone_to_owned() {
            Ok(fd) => Arc::new(fd),
            Err(e) => {
                tracing::warn!(client = %peer, error = %e, "closing connection: cannot duplicate its socket");
                continue;
            }
        };
        let stats = Arc::new(Stats::new(metrics.clone()));
        let (authenticated, logged_in) = watch::channel(false);
        let handler = Connection {
            credentials: credentials.clone(),
            access: access.clone(),
            admission: admission.clone(),
            peer,
            startup: Some(startup),
            session: None,
            authenticated,
            socket: duplicate.clone(),
            user: None,
            opened: HashMap::new(),
            running: HashMap::new(),
            channel_slots: Arc::new(Semaphore::new(MAX_CHANNELS_PER_CONNECTION)),
            stats: stats.clone(),
        };
        let admission = admission.clone();
        let stream = Metered { socket, read: 0, authenticated: logged_in.clone() };
        tokio::spawn(async move {
            let started = Instant::now();
            let session = async {
                match russh::server::run_stream(config, stream, handler).await {
                    Ok(session) => session.await,
                    Err(e) => Err(e),
                }
            };
            let (result, overdue) = tokio::select! {
                result = session => (result, false),
                () = login_overdue(logged_in.clone(), limits.login_deadline) => {
                    // russh's session task sees EOF and ends; with it the handler and its slots.
                    let _ = rustix::net::shutdown(&duplicate, rustix::net::Shutdown::Both);
                    (Ok(()), true)
                }
            };
            let error = match (&result, overdue) {
                (_, true) => Some(format!("not logged in within {} s", limits.login_deadline.as_secs())),
                (Err(e), false) => Some(e.to_string()),
                (Ok(()), false) => None,
            };
            if let Some(penalty) = penalty_for(*logged_in.borrow(), overdue, error.as_deref()) {
                admission.penalize(peer.ip(), penalty, Instant::now());
            }
            // Logged in is exactly when `accepted` counted the session as started.
            if *logged_in.borrow() {
                stats.metrics.session_ended(end_reason(&result));
            }
            let user = crate::lock(&stats.user).take();
            tracing::info!(
                target: "audit",
                user,
                client = %peer,
                bytes_in = stats.bytes_in.load(Ordering::Relaxed),
                bytes_out = stats.bytes_out.load(Ordering::Relaxed),
                seconds = started.elapsed().as_secs_f64(),
                error,
                "session closed"
            );
        });
    }
    // Closing the socket makes new clients fail fast instead of queueing in the backlog.
    drop(listener);
    tracing::info!(grace_seconds = limits.grace.as_secs(), "shutting down: no new connections, waiting for running sessions");
    if tokio::time::timeout(limits.grace, admission.sessions_ended()).await.is_err() {
        tracing::warn!("grace period over; closing remaining sessions");
    }
}
