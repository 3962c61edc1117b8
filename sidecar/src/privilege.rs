//! Taking a target process's identity, OpenSSH privilege-separation style: supplementary
//! groups, gid, uid, then exactly the target's permitted capabilities, then no_new_privs.
//! Must run before the process has threads (worker start, before the runtime is built).
//!
//! Also keeps every podsftp process out of reach of `/proc/<pid>/mem`, `environ`, `maps` and
//! ptrace: with a shared process namespace the served container's `/proc` lists the sidecar's
//! processes, and a process of the same uid and capabilities could otherwise read the password
//! and host key from the front end's memory, or write into it.

use std::io;

use rustix::process::{DumpableBehavior, set_dumpable_behavior};
use rustix::thread::{
    CapabilitySet, CapabilitySets, clear_ambient_capability_set, set_capabilities, set_keep_capabilities, set_no_new_privs,
};

use crate::target::Identity;

fn check(rc: libc::c_int, what: &str) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    }
}

fn context(what: &'static str) -> impl Fn(rustix::io::Errno) -> io::Error {
    move |e| io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"))
}

/// Becomes `target`: afterwards this process can do exactly what the target process can do
/// with files (and open its `/proc/<pid>/root`), and can never regain more.
pub fn become_identity(target: &Identity) -> io::Result<()> {
    // glibc's wrappers, not rustix's per-thread syscalls: they change every thread of the
    // process, so no thread can be left behind with the old identity.
    // SAFETY: plain syscalls on integers and a slice that outlives the call.
    unsafe {
        check(libc::setgroups(target.groups.len(), target.groups.as_ptr()), "setgroups")?;
        check(libc::setresgid(target.gid, target.gid, target.gid), "setresgid")?;
    }
    // Keep the permitted set across setuid so a non-root target's capabilities can be mirrored.
    set_keep_capabilities(true).map_err(context("PR_SET_KEEPCAPS"))?;
    // SAFETY: as above.
    check(unsafe { libc::setresuid(target.uid, target.uid, target.uid) }, "setresuid")?;
    set_keep_capabilities(false).map_err(context("PR_SET_KEEPCAPS"))?;
    clear_ambient_capability_set().map_err(context("clear ambient capabilities"))?;
    // Unknown bits are kept: the target's set is mirrored exactly, never widened or narrowed.
    let caps = CapabilitySet::from_bits_retain(target.caps);
    set_capabilities(None, CapabilitySets { effective: caps, permitted: caps, inheritable: CapabilitySet::empty() }).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("capset: {e} (the target holds capabilities {:#x} that this sidecar lacks)", target.caps),
        )
    })?;
    // A uid/gid change resets the flag to /proc/sys/fs/suid_dumpable (1 on debug setups).
    forbid_inspection()?;
    forbid_new_privileges()
}

/// PR_SET_DUMPABLE 0, as OpenSSH does: only CAP_SYS_PTRACE may then open this process's
/// `/proc/<pid>/mem`, `environ`, `maps`, `fd/` or attach to it, whatever its uid. Called first
/// thing in `main` (before any secret is read) and again after every credential change.
pub fn forbid_inspection() -> io::Result<()> {
    set_dumpable_behavior(DumpableBehavior::NotDumpable).map_err(context("PR_SET_DUMPABLE 0"))
}

/// PR_SET_NO_NEW_PRIVS: exec can never grant more (setuid bits, file capabilities).
pub fn forbid_new_privileges() -> io::Result<()> {
    set_no_new_privs(true).map_err(context("PR_SET_NO_NEW_PRIVS"))
}
