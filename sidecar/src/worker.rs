//! The worker process: one SFTP session (or a probe, or a container search) after taking the
//! target's identity. Runs `privilege::become_identity` before it has threads and before it
//! touches `/proc/<pid>/...`; speaks SFTP on stdin/stdout (with `--rings`, through the front
//! end's rings, `crate::ring`, which come on stdin and stdout).

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use rustix::fs::OFlags;

use crate::confined::Root;
use crate::privilege;
use crate::ring::{Consumer, Writer};
use crate::sftp::accounts::Accounts;
use crate::sftp::engine::SessionError;
use crate::sftp::framing::Framer;
use crate::sftp::server::{self, Options};
use crate::sftp::tally;
use crate::target::{self, EnvCheck, Identity, Liveness};

/// Why a worker stopped: its message is the session's log line, or the probe's or search's answer
/// on stderr (the front end reports it). Each message carries its cause's text, so the cause is
/// not also a `source()` (a reporter that walks the chain would print it twice).
#[derive(Debug, thiserror::Error)]
enum WorkerError {
    #[error("cannot take identity {identity}: {error}")]
    Identity { identity: Identity, error: io::Error },
    #[error(transparent)]
    NoNewPrivileges(io::Error),
    #[error("cannot open {}: {error}", path.display())]
    Open { path: PathBuf, error: io::Error },
    #[error("cannot open --root {} inside {}: {error}", String::from_utf8_lossy(root.as_bytes()), path.display())]
    OpenRoot { root: OsString, path: PathBuf, error: io::Error },
    #[error("process {0} is gone")]
    TargetGone(u32),
    #[error("cannot read environ of {}", unreadable.iter().map(|(pid, e)| format!("pid {pid}: {e}")).collect::<Vec<_>>().join(", "))]
    Environ { unreadable: Vec<(u32, io::Error)> },
    #[error(transparent)]
    Session(SessionError),
    #[error("cannot receive the front end's rings on stdin and stdout: {0}")]
    Rings(io::Error),
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Args)]
struct Become {
    /// Identity to take first: uid:gid:groups:capshex.
    #[arg(long = "as", value_parser = parse_identity)]
    become_identity: Option<Identity>,
}

fn parse_identity(s: &str) -> Result<Identity, String> {
    Identity::from_arg(s).ok_or_else(|| format!("not uid:gid:groups:capshex: {s}"))
}

#[derive(Debug, Args)]
struct RootArgs {
    #[arg(long)]
    path: PathBuf,
    #[arg(long)]
    root: Option<OsString>,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Serve one SFTP session on stdin/stdout.
    Sftp {
        #[command(flatten)]
        who: Become,
        #[command(flatten)]
        root: RootArgs,
        #[arg(long)]
        read_only: bool,
        /// Let client paths enter procfs and sysfs mounts under the root.
        #[arg(long)]
        serve_pseudo_filesystems: bool,
        #[arg(long)]
        user: String,
        #[arg(long)]
        client: String,
        /// Stdin and stdout are sockets that bring the front end's rings of requests and
        /// replies (`crate::ring`), not the SFTP stream itself.
        #[arg(long)]
        rings: bool,
        /// The served process: the session ends when it exits (the container restarted).
        #[arg(long)]
        target_pid: Option<u32>,
        /// Write this session's counts (`sftp::tally`) to this inherited descriptor, a pipe the
        /// front end reads.
        #[arg(long, value_parser = clap::value_parser!(i32).range(3..))]
        report_fd: Option<i32>,
    },
    /// Exit 0 if the served root can be opened, else print why.
    Probe {
        #[command(flatten)]
        who: Become,
        #[command(flatten)]
        root: RootArgs,
    },
    /// Print `match <pid>` for the process whose environment names the container.
    Find {
        #[command(flatten)]
        who: Become,
        #[arg(long)]
        container: String,
        #[arg(long, value_delimiter = ',')]
        pids: Vec<u32>,
    },
}

fn take_identity(who: &Become) -> Result<(), WorkerError> {
    match &who.become_identity {
        Some(id) => privilege::become_identity(id).map_err(|error| WorkerError::Identity { identity: id.clone(), error }),
        None => privilege::forbid_new_privileges().map_err(WorkerError::NoNewPrivileges),
    }
}

fn open_root(args: &RootArgs) -> Result<Root, WorkerError> {
    narrow(open_top(args)?, args)
}

/// The filesystem named by `--path`, before `--root` narrows it.
fn open_top(args: &RootArgs) -> Result<Root, WorkerError> {
    Root::open(&args.path).map_err(|error| WorkerError::Open { path: args.path.clone(), error })
}

fn narrow(top: Root, args: &RootArgs) -> Result<Root, WorkerError> {
    match &args.root {
        Some(sub) => {
            top.subdir(sub.as_bytes()).map_err(|error| WorkerError::OpenRoot { root: sub.clone(), path: args.path.clone(), error })
        }
        None => Ok(top),
    }
}

/// Largest `/etc/passwd` or `/etc/group` read: the files belong to the app container, so an
/// odd one (huge, a device) must not bloat or stall the session.
const ACCOUNTS_FILE_LIMIT: u64 = 1024 * 1024;

/// The app's account names, from its filesystem (not `--root`'s subdirectory). Missing or
/// unreadable files just mean numeric ids.
fn read_accounts(top: &Root) -> Accounts {
    let read = |path: &[u8]| {
        let mut content = Vec::new();
        if let Ok(file) = top.open_file(path, OFlags::RDONLY | OFlags::NONBLOCK, 0) {
            let _ = file.take(ACCOUNTS_FILE_LIMIT).read_to_end(&mut content);
        }
        content
    };
    Accounts::parse(&read(b"/etc/passwd"), &read(b"/etc/group"))
}

/// The served process's liveness; `Ok(None)` when the kernel refuses a pidfd (e.g. a seccomp
/// profile without pidfd_open): the session is served, just without noticing a restart.
fn watch_target(pid: u32) -> Result<Option<Liveness>, WorkerError> {
    match Liveness::watch(pid) {
        Ok(liveness) => Ok(Some(liveness)),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Err(WorkerError::TargetGone(pid)),
        Err(e) => {
            tracing::warn!(pid, error = %e, "cannot watch the served process; this session will not notice a restart");
            Ok(None)
        }
    }
}

/// Closes every descriptor above stderr but `keep`, as OpenSSH's `closefrom` does for its
/// children: the front end hands each session's report pipe down without close-on-exec, so a
/// worker started at the same moment for another session or a probe may inherit that pipe too
/// (it would hold the pipe open, and could write to it).
fn close_inherited(keep: Option<u32>) {
    let close = |first: u32, last: u32| {
        // SAFETY: first thing in the worker, before it opens anything: no descriptor above stderr
        // belongs to anything in this process but `keep`, which no range includes.
        unsafe { libc::close_range(first, last, 0) };
    };
    match keep {
        Some(fd) => {
            if fd > 3 {
                close(3, fd - 1);
            }
            close(fd.saturating_add(1), u32::MAX);
        }
        None => close(3, u32::MAX),
    }
}

pub fn run(args: WorkerArgs) -> ExitCode {
    let report_fd = match &args.mode {
        Mode::Sftp { report_fd, .. } => report_fd.and_then(|fd| u32::try_from(fd).ok()),
        Mode::Probe { .. } | Mode::Find { .. } => None,
    };
    close_inherited(report_fd);
    match args.mode {
        Mode::Probe { who, root } => answer(take_identity(&who).and_then(|()| open_root(&root)).map(drop)),
        Mode::Find { who, container, pids } => answer(take_identity(&who).and_then(|()| find(&container, &pids))),
        Mode::Sftp { who, root, read_only, serve_pseudo_filesystems, user, client, rings, target_pid, report_fd } => {
            let session = take_identity(&who).and_then(|()| {
                // Watched before the root is opened, so a process that exits in between is noticed.
                let target = target_pid.map(watch_target).transpose()?.flatten();
                let top = open_top(&root)?;
                let top = if serve_pseudo_filesystems { top.serving_pseudo_filesystems() } else { top };
                let accounts = read_accounts(&top);
                sftp(narrow(top, &root)?, Options { read_only, user, client, accounts, target }, rings, report_fd)
            });
            // A session's stderr is the sidecar's log: one structured line says why it ended.
            if let Err(reason) = &session {
                tracing::warn!(%reason, "closing SFTP session");
            }
            exit_code(&session)
        }
    }
}

/// Probes and searches answer the front end on stderr: it reads the reason from there.
fn answer(result: Result<(), WorkerError>) -> ExitCode {
    if let Err(reason) = &result {
        eprintln!("{reason}");
    }
    exit_code(&result)
}

fn exit_code(result: &Result<(), WorkerError>) -> ExitCode {
    if result.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn find(container: &str, pids: &[u32]) -> Result<(), WorkerError> {
    let mut unreadable = Vec::new();
    for &pid in pids {
        match target::check_environ(pid, container) {
            Ok(EnvCheck::Match) => {
                println!("match {pid}");
                return Ok(());
            }
            Ok(EnvCheck::NoMatch | EnvCheck::Sidecar) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => unreadable.push((pid, e)),
        }
    }
    if unreadable.is_empty() { Ok(()) } else { Err(WorkerError::Environ { unreadable }) }
}

const PIPE_SIZE: usize = 1024 * 1024;

fn sftp(root: Root, options: Options, rings: bool, report_fd: Option<i32>) -> Result<(), WorkerError> {
    // SAFETY: fds 0 and 1 are what the front end gave us (the rings' sockets, or pipes) and
    // nothing else owns them.
    let (stdin, stdout) = unsafe { (OwnedFd::from_raw_fd(0), OwnedFd::from_raw_fd(1)) };
    let session = || {
        let served = if rings {
            let requests = Consumer::receive(stdin).map_err(WorkerError::Rings)?;
            let replies = Writer::receive(stdout).map_err(WorkerError::Rings)?;
            server::serve(root, options, requests, replies)
        } else {
            for fd in [&stdin, &stdout] {
                // Bigger pipes mean fewer wakeups per 255 KiB READ/WRITE; best effort (1 MiB is
                // the unprivileged limit by default).
                let _ = rustix::pipe::fcntl_setpipe_size(fd, PIPE_SIZE);
            }
            server::serve(root, options, Framer::new(File::from(stdin)), File::from(stdout))
        };
        served.map_err(WorkerError::Session)
    };
    let Some(report_fd) = report_fd else { return session() };
    // SAFETY: the front end handed the report pipe down on this descriptor (`--report-fd`), kept
    // open by `close_inherited`, and nothing else in this process owns it.
    let reports = unsafe { OwnedFd::from_raw_fd(report_fd) };
    tally::reporting(File::from(reports), session)
}
