//! The SSH front end (russh): host key and login from the credentials, only the `sftp`
//! subsystem, each SFTP channel piped to its own worker process.
//!
//! Flow control: client data arrives in `Handler::data` (inside russh's session loop) and goes
//! into a bounded queue drained by a task that writes the worker's stdin, so the loop only
//! waits when the worker is far behind; the worker's stdout is copied to the channel by
//! another task through russh's window-aware writer. Neither direction can hold the other up.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use russh::keys::PublicKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet, Preferred, cipher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::access::Access;
use crate::credentials::{Credentials, State};

/// Concurrent connections; more are closed right after accept.
pub const MAX_CONNECTIONS: usize = 64;
/// Like OpenSSH's `MaxSessions` default.
const MAX_CHANNELS_PER_CONNECTION: usize = 10;
/// Chunks of client data queued per channel before russh's loop waits for the worker.
const INPUT_QUEUE: usize = 16;
/// How long a worker may take to exit after its channel is gone.
const WORKER_EXIT_GRACE: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Stats {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    user: std::sync::Mutex<Option<String>>,
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
    peer: SocketAddr,
    user: Option<String>,
    channels: HashMap<ChannelId, Channel<Msg>>,
    inputs: HashMap<ChannelId, mpsc::Sender<Bytes>>,
    stats: Arc<Stats>,
}

impl Connection {
    fn current(&self) -> Option<Arc<Credentials>> {
        self.credentials.borrow().as_ref().ok().cloned()
    }

    fn accepted(&mut self, user: &str, method: &str) -> Auth {
        tracing::info!(user, client = %self.peer, method, "authenticated");
        self.user = Some(user.to_string());
        *self.stats.user.lock().unwrap_or_else(|e| e.into_inner()) = Some(user.to_string());
        Auth::Accept
    }

    fn refuse(&self, user: &str, method: &str) -> Auth {
        tracing::info!(user, client = %self.peer, method, "authentication failed");
        Auth::reject()
    }

    async fn start_sftp(&mut self, channel_id: ChannelId, session: &mut Session) -> Result<(), String> {
        let user = self.user.clone().ok_or("not authenticated")?;
        let channel = self.channels.remove(&channel_id).ok_or("unknown channel")?;
        let resolved = self.access.resolve().await?;
        let mut child = self
            .access
            .spawn_sftp(&resolved, &user, &self.peer.to_string())
            .map_err(|e| format!("cannot start the SFTP worker: {e}"))?;
        let (Some(mut stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("worker has no pipes".into());
        };
        let (tx, mut rx) = mpsc::channel::<Bytes>(INPUT_QUEUE);
        self.inputs.insert(channel_id, tx);
        let mut writer = channel.make_writer();
        // Only the writer is used: client data comes through `Handler::data`, so the channel's
        // own receive queue must not exist (nobody would drain it).
        drop(channel);
        let handle = session.handle();
        let stats = self.stats.clone();
        tokio::spawn(async move {
            let input = tokio::spawn(async move {
                while let Some(chunk) = rx.recv().await {
                    if stdin.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
            });
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match stdout.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if writer.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
            }
            // Closing our ends first means a worker blocked on a pipe sees EPIPE/EOF and exits.
            drop(stdout);
            input.abort();
            let code = match tokio::time::timeout(WORKER_EXIT_GRACE, child.wait()).await {
                Ok(Ok(status)) => status.code().unwrap_or(1) as u32,
                _ => {
                    let _ = child.kill().await;
                    1
                }
            };
            let _ = handle.exit_status_request(channel_id, code).await;
            let _ = handle.eof(channel_id).await;
            let _ = handle.close(channel_id).await;
        });
        Ok(())
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        match self.current() {
            Some(c) if c.password_matches(user, password) => Ok(self.accepted(user, "password")),
            _ => Ok(self.refuse(user, "password")),
        }
    }

    async fn auth_publickey_offered(&mut self, user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        Ok(if self.key_ok(user, offer.public_key) { Auth::Accept } else { Auth::reject() })
    }

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        if self.key_ok(user, key.public_key) { Ok(self.accepted(user, "publickey")) } else { Ok(self.refuse(user, "publickey")) }
    }

    async fn channel_open_session(&mut self, channel: Channel<Msg>, reply: ChannelOpenHandle, _: &mut Session) -> Result<(), Self::Error> {
        if self.channels.len() + self.inputs.len() >= MAX_CHANNELS_PER_CONNECTION {
            reply.reject(russh::ChannelOpenFailure::ResourceShortage).await;
        } else {
            self.channels.insert(channel.id(), channel);
            reply.accept().await;
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
                session.channel_failure(channel)
            }
        }
    }

    async fn data(&mut self, channel: ChannelId, data: &[u8], _: &mut Session) -> Result<(), Self::Error> {
        if let Some(input) = self.inputs.get(&channel) {
            self.stats.bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed);
            let _ = input.send(Bytes::copy_from_slice(data)).await;
        }
        Ok(())
    }

    async fn channel_eof(&mut self, channel: ChannelId, _: &mut Session) -> Result<(), Self::Error> {
        self.inputs.remove(&channel);
        Ok(())
    }

    async fn channel_close(&mut self, channel: ChannelId, _: &mut Session) -> Result<(), Self::Error> {
        self.inputs.remove(&channel);
        self.channels.remove(&channel);
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

    async fn x11_request(&mut self, channel: ChannelId, _: bool, _: &str, _: &str, _: u32, session: &mut Session) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn env_request(&mut self, channel: ChannelId, _: &str, _: &str, session: &mut Session) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }
}

impl Connection {
    fn key_ok(&self, user: &str, key: &PublicKey) -> bool {
        self.current().is_some_and(|c| c.key_matches(user, key))
    }
}

/// Accepts connections until `shutdown` resolves, then waits up to `grace` for running sessions.
pub async fn serve(
    listener: TcpListener,
    credentials: watch::Receiver<State>,
    access: Arc<Access>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut configs: Option<(Arc<Credentials>, Arc<russh::server::Config>)> = None;
    tokio::pin!(shutdown);
    loop {
        let (socket, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(client = %peer, limit = MAX_CONNECTIONS, "too many connections; closing");
            continue;
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
        let stats = Arc::new(Stats::default());
        let handler = Connection {
            credentials: credentials.clone(),
            access: access.clone(),
            peer,
            user: None,
            channels: HashMap::new(),
            inputs: HashMap::new(),
            stats: stats.clone(),
        };
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let result = match russh::server::run_stream(config, socket, handler).await {
                Ok(session) => session.await,
                Err(e) => Err(e),
            };
            let error = result.err().map(|e| e.to_string());
            let user = stats.user.lock().unwrap_or_else(|e| e.into_inner()).take();
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
            drop(slot);
        });
    }
    // Closing the socket makes new clients fail fast instead of queueing in the backlog.
    drop(listener);
    tracing::info!(grace_seconds = grace.as_secs(), "shutting down: no new connections, waiting for running sessions");
    let all = MAX_CONNECTIONS as u32;
    if tokio::time::timeout(grace, slots.acquire_many(all)).await.is_err() {
        tracing::warn!("grace period over; closing remaining sessions");
    }
}
