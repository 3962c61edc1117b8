//! What is served and how to reach it: a plain directory, a process's root
//! (`/proc/<pid>/root`), or the root of the container whose process carries
//! `PODSFTP_CONTAINER=<name>` in its environment.
//!
//! Only world-readable `/proc/<pid>/status` and `/proc/<pid>/stat` are read here; reading
//! another process's `environ` or `root` needs its uid and capabilities (or CAP_SYS_PTRACE),
//! so that happens in worker processes that have taken the target's identity (`worker`).

use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, PidfdFlags, pidfd_open};

/// The markers in the served container's environment (put there by the webhook) and in the
/// sidecar's own (so it never serves itself).
pub use podsftp_contract::sidecar::{CONTAINER_ENV, SIDECAR_ENV};

#[derive(Debug, Clone)]
pub enum Target {
    Dir(PathBuf),
    Pid(u32),
    Container(String),
}

/// Who a process is, as far as `/proc/<pid>/root` access checks go.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// Permitted capability set (bit mask).
    pub caps: u64,
}

impl Identity {
    /// `uid:gid:g1,g2:capshex`, how a worker receives it on its command line.
    pub fn to_arg(&self) -> String {
        let groups: Vec<String> = self.groups.iter().map(u32::to_string).collect();
        format!("{}:{}:{}:{:x}", self.uid, self.gid, groups.join(","), self.caps)
    }

    pub fn from_arg(s: &str) -> Option<Identity> {
        let mut parts = s.split(':');
        let uid = parts.next()?.parse().ok()?;
        let gid = parts.next()?.parse().ok()?;
        let groups = parts.next()?.split(',').filter(|g| !g.is_empty()).map(str::parse).collect::<Result<_, _>>().ok()?;
        let caps = u64::from_str_radix(parts.next()?, 16).ok()?;
        parts.next().is_none().then_some(Identity { uid, gid, groups, caps })
    }

    /// Whether a process with identity `self` may open `/proc/<pid>/root` of one with `target`
    /// (same uid and gid, and a permitted set covering the target's; CAP_SYS_PTRACE aside).
    pub fn can_reach(&self, target: &Identity) -> bool {
        const CAP_SYS_PTRACE: u64 = 1 << 19;
        self.caps & CAP_SYS_PTRACE != 0 || (self.uid == target.uid && self.gid == target.gid && target.caps & !self.caps == 0)
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "uid {} gid {} caps {:#x}", self.uid, self.gid, self.caps)
    }
}

fn parse_status(text: &str) -> Option<Identity> {
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
    // Effective ids: the second of "real effective saved fs".
    let second = |s: &str| s.split_whitespace().nth(1).and_then(|v| v.parse().ok());
    let uid = second(field("Uid:")?)?;
    let gid = second(field("Gid:")?)?;
    let groups = field("Groups:").unwrap_or("").split_whitespace().filter_map(|g| g.parse().ok()).collect();
    let caps = u64::from_str_radix(field("CapPrm:")?, 16).ok()?;
    Some(Identity { uid, gid, groups, caps })
}

/// Identity of a process, from world-readable `/proc/<pid>/status`.
pub fn identity_of(pid: u32) -> io::Result<Identity> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status(&text).ok_or_else(|| io::Error::other(format!("/proc/{pid}/status has no Uid/Gid/CapPrm")))
}

pub fn own_identity() -> io::Result<Identity> {
    identity_of(std::process::id())
}

/// Start time of a process (field 22 of `/proc/<pid>/stat`), to tell a pid from its reuse.
pub fn start_time(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past its last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the served process still runs, through a pidfd. A session must not go on serving
/// the root of a container that has restarted: its writable layer went away with it, so
/// uploads there would be lost without a word.
#[derive(Debug)]
pub struct Liveness(OwnedFd);

impl Liveness {
    pub fn watch(pid: u32) -> io::Result<Liveness> {
        let pid = i32::try_from(pid).ok().and_then(Pid::from_raw).ok_or_else(|| io::Error::other(format!("invalid pid {pid}")))?;
        Ok(Liveness(pidfd_open(pid, PidfdFlags::empty())?))
    }

    /// A pidfd polls readable once its process has exited.
    pub fn exited(&self) -> bool {
        let mut fds = [PollFd::new(&self.0, PollFlags::IN)];
        // A zero timeout: asks, never waits. An error reads as "still running": serving goes on,
        // and the next request asks again.
        rustix::event::poll(&mut fds, Some(&Timespec { tv_sec: 0, tv_nsec: 0 })).is_ok_and(|ready| ready > 0)
    }
}

fn parent_of(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse().ok())
}

/// Processes that could be the served container's, grouped by identity: everything in /proc
/// except this process and its own workers (kernel threads have no status Uid of interest but
/// are filtered by the environ check later).
pub fn candidates() -> BTreeMap<Identity, Vec<u32>> {
    let me = std::process::id();
    let mut groups: BTreeMap<Identity, Vec<u32>> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return groups };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me || parent_of(pid) == Some(me) {
            continue;
        }
        if let Ok(id) = identity_of(pid) {
            groups.entry(id).or_default().push(pid);
        }
    }
    groups
}

/// What reading a candidate's environment found.
#[derive(Debug, PartialEq, Eq)]
pub enum EnvCheck {
    Match,
    NoMatch,
    /// A podsftp sidecar process (never served).
    Sidecar,
}

/// Reads `/proc/<pid>/environ` (needs the target's identity) and checks for the marker.
pub fn check_environ(pid: u32, container: &str) -> io::Result<EnvCheck> {
    let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
    let wanted = format!("{CONTAINER_ENV}={container}");
    let sidecar = format!("{SIDECAR_ENV}=1");
    let mut found = EnvCheck::NoMatch;
    for var in environ.split(|&b| b == 0) {
        if var == sidecar.as_bytes() {
            return Ok(EnvCheck::Sidecar);
        }
        if var == wanted.as_bytes() {
            found = EnvCheck::Match;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_through_its_argument_form() {
        let id = Identity { uid: 1000, gid: 1001, groups: vec![5, 6], caps: 0x400 };
        assert_eq!(Identity::from_arg(&id.to_arg()), Some(id));
        let id = Identity { uid: 0, gid: 0, groups: vec![], caps: 0 };
        assert_eq!(Identity::from_arg(&id.to_arg()), Some(id));
        assert_eq!(Identity::from_arg("1:2:x:0"), None);
    }

    #[test]
    fn reachability_follows_the_kernel_rule() {
        let root_default = Identity { uid: 0, gid: 0, groups: vec![], caps: 0xa80425fb };
        let root_none = Identity { caps: 0, ..root_default.clone() };
        let app = Identity { uid: 1000, gid: 1000, groups: vec![], caps: 0 };
        assert!(root_default.can_reach(&root_default));
        assert!(!root_none.can_reach(&root_default));
        assert!(!root_default.can_reach(&app));
        assert!(app.can_reach(&app));
    }

    #[test]
    fn liveness_notices_a_process_exit() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let liveness = Liveness::watch(child.id()).unwrap();
        assert!(!liveness.exited());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(liveness.exited());
    }

    #[test]
    fn own_status_parses() {
        let me = own_identity().unwrap();
        assert_eq!(me.uid, rustix::process::geteuid().as_raw());
        assert!(start_time(std::process::id()).is_some());
    }
}
