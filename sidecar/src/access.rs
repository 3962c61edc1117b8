//! The front end's view of the target: which path to serve, whether a worker must take another
//! identity to reach it, and the worker processes themselves (`podsftp-sidecar worker ...`).
//!
//! One code path: every SFTP session, every readiness probe and every container search runs in
//! a worker process. When the front end runs as root ("switch" mode) the worker first becomes
//! the target process's uid/gid/groups/capabilities; otherwise it runs as the front end.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;

use rustix::net::{AddressFamily, SocketFlags, SocketType};

use tokio::process::{Child, Command};

use crate::ring;
use crate::target::{self, Identity, Target};

/// Why the target cannot be served right now: the readiness endpoint and the session log show
/// the message. Each message carries its cause's text, so the cause is not also a `source()`.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("process {0} is gone")]
    Gone(u32),
    #[error("cannot read /proc/{pid}/status: {error}")]
    Status { pid: u32, error: io::Error },
    #[error(
        "process {pid} ({target}) holds capabilities this sidecar lacks ({me}): a worker could not match its permitted set, so the kernel would refuse /proc/{pid}/root (EACCES)"
    )]
    CapabilitiesExceedOurs { pid: u32, target: Identity, me: Identity },
    #[error(
        "process {pid} runs as {target}, this sidecar as {me}: the kernel refuses /proc/{pid}/root (EACCES) unless uid and gid are equal and our permitted capabilities cover the target's; run the sidecar as that uid/gid, or as root so it can switch"
    )]
    Unreachable { pid: u32, target: Identity, me: Identity },
    #[error("cannot start worker {}: {error}", exe.display())]
    StartWorker { exe: PathBuf, error: io::Error },
    #[error("no process has {}={container} (looked at {looked_at} processes){}", target::CONTAINER_ENV, unchecked_text(unchecked))]
    NoContainer { container: String, looked_at: usize, unchecked: Vec<Unchecked> },
    #[error("worker running as {identity}: {answer}")]
    Probe { identity: Identity, answer: String },
}

/// Processes of one identity the container search could not look into, and why.
#[derive(Debug, thiserror::Error)]
pub enum Unchecked {
    #[error("{processes} process(es) as {identity}: capabilities exceed ours")]
    CapabilitiesExceedOurs { processes: usize, identity: Identity },
    #[error("{processes} process(es) as {identity}: other uid/gid/capabilities than ours ({me})")]
    OtherIdentity { processes: usize, identity: Identity, me: Identity },
    #[error("{processes} process(es) as {identity}: {answer}")]
    Worker { processes: usize, identity: Identity, answer: String },
}

fn unchecked_text(unchecked: &[Unchecked]) -> String {
    if unchecked.is_empty() {
        return String::new();
    }
    let each: Vec<String> = unchecked.iter().map(Unchecked::to_string).collect();
    format!("; could not check {}", each.join("; "))
}

/// The target as resolved for one session or probe.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Host path of the served root before `--root`: a directory or `/proc/<pid>/root`.
    pub path: PathBuf,
    /// Identity the worker takes before touching `path` (switch mode only).
    pub become_identity: Option<Identity>,
    pub pid: Option<u32>,
}

pub struct Access {
    target: Target,
    sub_root: Option<OsString>,
    read_only: bool,
    pseudo_filesystems: bool,
    exe: PathBuf,
    me: Identity,
    /// Container mode: the pid found last time and its start time (to detect pid reuse).
    found: Mutex<Option<(u32, u64)>>,
}

impl Access {
    pub fn new(target: Target, sub_root: Option<OsString>, read_only: bool) -> std::io::Result<Access> {
        Ok(Access {
            target,
            sub_root,
            read_only,
            pseudo_filesystems: false,
            exe: std::env::current_exe()?,
            me: target::own_identity()?,
            found: Mutex::new(None),
        })
    }

    /// Sessions may enter procfs and sysfs mounts under the served root (`--serve-pseudo-filesystems`).
    pub fn serving_pseudo_filesystems(self, allowed: bool) -> Access {
        Access { pseudo_filesystems: allowed, ..self }
    }

    fn switching(&self) -> bool {
        self.me.uid == 0
    }

    fn for_pid(&self, pid: u32) -> Result<Resolved, AccessError> {
        let identity = match target::identity_of(pid) {
            Ok(id) => id,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(AccessError::Gone(pid)),
            Err(error) => return Err(AccessError::Status { pid, error }),
        };
        let become_identity = if self.switching() {
            if identity.caps & !self.me.caps != 0 {
                return Err(AccessError::CapabilitiesExceedOurs { pid, target: identity, me: self.me.clone() });
            }
            Some(identity)
        } else {
            if !self.me.can_reach(&identity) {
                return Err(AccessError::Unreachable { pid, target: identity, me: self.me.clone() });
            }
            None
        };
        Ok(Resolved { path: PathBuf::from(format!("/proc/{pid}/root")), become_identity, pid: Some(pid) })
    }

    /// Where sessions go right now; in container mode the process is searched again when the
    /// last one is gone (the container restarted).
    pub async fn resolve(&self) -> Result<Resolved, AccessError> {
        match &self.target {
            Target::Dir(dir) => Ok(Resolved { path: dir.clone(), become_identity: None, pid: None }),
            Target::Pid(pid) => self.for_pid(*pid),
            Target::Container(name) => {
                let cached = *crate::lock(&self.found);
                if let Some((pid, start)) = cached {
                    if target::start_time(pid) == Some(start) {
                        return self.for_pid(pid);
                    }
                    tracing::info!(pid, container = %name, "served process is gone; searching again");
                }
                let pid = self.find_container(name).await?;
                if let Some(start) = target::start_time(pid) {
                    *crate::lock(&self.found) = Some((pid, start));
                }
                tracing::info!(pid, container = %name, "found the served container's process");
                self.for_pid(pid)
            }
        }
    }

    async fn find_container(&self, name: &str) -> Result<u32, AccessError> {
        let groups = target::candidates();
        let looked_at: usize = groups.values().map(Vec::len).sum();
        let mut unchecked = Vec::new();
        for (identity, pids) in groups {
            let pid_list: Vec<String> = pids.iter().map(u32::to_string).collect();
            let processes = pids.len();
            let become_identity = if self.switching() {
                if identity.caps & !self.me.caps != 0 {
                    unchecked.push(Unchecked::CapabilitiesExceedOurs { processes, identity });
                    continue;
                }
                Some(&identity)
            } else if self.me.can_reach(&identity) {
                None
            } else {
                unchecked.push(Unchecked::OtherIdentity { processes, identity, me: self.me.clone() });
                continue;
            };
            let mut cmd = self.worker_command("find", become_identity);
            cmd.arg("--container").arg(name).arg("--pids").arg(pid_list.join(","));
            let output = self.run_worker(cmd).await?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            if let Some(pid) = stdout.lines().find_map(|l| l.strip_prefix("match ")).and_then(|p| p.trim().parse().ok()) {
                return Ok(pid);
            }
            if !output.status.success() {
                let answer = String::from_utf8_lossy(&output.stderr).trim().to_string();
                unchecked.push(Unchecked::Worker { processes, identity, answer });
            }
        }
        Err(AccessError::NoContainer { container: name.to_string(), looked_at, unchecked })
    }

    /// Runs a probe or search worker to its end (no stdin; its answer on stdout and stderr).
    async fn run_worker(&self, mut cmd: Command) -> Result<std::process::Output, AccessError> {
        let output = cmd.stdin(Stdio::null()).stderr(Stdio::piped()).output().await;
        output.map_err(|error| AccessError::StartWorker { exe: self.exe.clone(), error })
    }

    fn worker_command(&self, mode: &str, become_identity: Option<&Identity>) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("worker").arg(mode);
        if let Some(id) = become_identity {
            cmd.arg("--as").arg(id.to_arg());
        }
        cmd.kill_on_drop(true);
        cmd
    }

    fn root_args(&self, cmd: &mut Command, resolved: &Resolved) {
        cmd.arg("--path").arg(&resolved.path);
        if let Some(sub) = &self.sub_root {
            cmd.arg("--root").arg(sub);
        }
    }

    /// Checks that a worker can open the served root; the error says why not.
    pub async fn probe(&self) -> Result<(), AccessError> {
        let resolved = self.resolve().await?;
        let mut cmd = self.worker_command("probe", resolved.become_identity.as_ref());
        self.root_args(&mut cmd, &resolved);
        let output = self.run_worker(cmd).await?;
        if output.status.success() {
            Ok(())
        } else {
            let identity = resolved.become_identity.unwrap_or_else(|| self.me.clone());
            Err(AccessError::Probe { identity, answer: String::from_utf8_lossy(&output.stderr).trim().to_string() })
        }
    }

    /// Starts the worker for one SFTP session: the client's requests go into the returned
    /// `Sender`'s ring (its socket is the worker's stdin), the replies come out of the
    /// `Receiver`'s (its socket is the worker's stdout), and its counts (`sftp::tally`) on the
    /// returned pipe.
    pub fn spawn_sftp(
        &self,
        resolved: &Resolved,
        user: &str,
        client: &str,
    ) -> std::io::Result<(Child, ring::Sender, ring::Receiver, OwnedFd)> {
        let mut cmd = self.worker_command("sftp", resolved.become_identity.as_ref());
        self.root_args(&mut cmd, resolved);
        if self.read_only {
            cmd.arg("--read-only");
        }
        if self.pseudo_filesystems {
            cmd.arg("--serve-pseudo-filesystems");
        }
        cmd.arg("--user").arg(user).arg("--client").arg(client);
        if let Some(pid) = resolved.pid {
            cmd.arg("--target-pid").arg(pid.to_string());
        }
        let sockets = || rustix::net::socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None);
        let ((requests, worker_requests), (replies, worker_replies)) = (sockets()?, sockets()?);
        let (requests, replies) = (ring::Sender::new(requests)?, ring::Receiver::new(replies)?);
        cmd.arg("--rings");
        cmd.stdin(Stdio::from(worker_requests)).stdout(Stdio::from(worker_replies)).stderr(Stdio::inherit());
        // The worker's end is a duplicate without close-on-exec, passed by number: a pre_exec hook
        // that moved it would turn this posix_spawn into a fork of the whole front end (measured
        // 1-3 ms more per SFTP channel). A worker started by another session at the same moment
        // inherits it too and closes it first thing (`worker::close_inherited`).
        let (reports, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let inherited = rustix::io::dup(&writer)?;
        drop(writer);
        cmd.arg("--report-fd").arg(inherited.as_raw_fd().to_string());
        let child = cmd.spawn()?;
        drop(inherited);
        Ok((child, requests, replies, reports))
    }

    pub fn describe(&self) -> String {
        let base = match &self.target {
            Target::Dir(d) => format!("directory {}", d.display()),
            Target::Pid(p) => format!("process {p}"),
            Target::Container(c) => format!("container {c}"),
        };
        match &self.sub_root {
            Some(sub) => format!("{base}, root {}", String::from_utf8_lossy(sub.as_bytes())),
            None => base,
        }
    }
}
