//! Taking a target process's identity, OpenSSH privilege-separation style: supplementary
//! groups, gid, uid, then exactly the target's permitted capabilities, then no_new_privs.
//! Must run before the process has threads (worker start, before the runtime is built).
//!
//! Also keeps every podsftp process out of reach of `/proc/<pid>/mem`, `environ`, `maps` and
//! ptrace: with a shared process namespace the served container's `/proc` lists the sidecar's
//! processes, and a process of the same uid and capabilities could otherwise read the password
//! and host key from the front end's memory, or write into it.

use std::io;

use crate::target::Identity;

fn check(rc: libc::c_int, what: &str) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn set_capabilities(caps: u64) -> io::Result<()> {
    let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let low = caps as u32;
    let high = (caps >> 32) as u32;
    let data = [
        CapData { effective: low, permitted: low, inheritable: 0 },
        CapData { effective: high, permitted: high, inheritable: 0 },
    ];
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) };
    check(rc as libc::c_int, "capset")
}

/// Becomes `target`: afterwards this process can do exactly what the target process can do
/// with files (and open its `/proc/<pid>/root`), and can never regain more.
pub fn become_identity(target: &Identity) -> io::Result<()> {
    unsafe {
        check(libc::setgroups(target.groups.len(), target.groups.as_ptr()), "setgroups")?;
        check(libc::setresgid(target.gid, target.gid, target.gid), "setresgid")?;
        // Keep the permitted set across setuid so a non-root target's capabilities can be mirrored.
        check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0), "PR_SET_KEEPCAPS")?;
        check(libc::setresuid(target.uid, target.uid, target.uid), "setresuid")?;
        check(libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0), "PR_SET_KEEPCAPS")?;
        check(libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient capabilities")?;
    }
    set_capabilities(target.caps).map_err(|e| {
        io::Error::new(e.kind(), format!("{e} (the target holds capabilities {:#x} that this sidecar lacks)", target.caps))
    })?;
    // A uid/gid change resets the flag to /proc/sys/fs/suid_dumpable (1 on debug setups).
    forbid_inspection()?;
    forbid_new_privileges()
}

/// PR_SET_DUMPABLE 0, as OpenSSH does: only CAP_SYS_PTRACE may then open this process's
/// `/proc/<pid>/mem`, `environ`, `maps`, `fd/` or attach to it, whatever its uid. Called first
/// thing in `main` (before any secret is read) and again after every credential change.
pub fn forbid_inspection() -> io::Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("PR_SET_DUMPABLE 0: {e}")))
}

/// PR_SET_NO_NEW_PRIVS: exec can never grant more (setuid bits, file capabilities).
pub fn forbid_new_privileges() -> io::Result<()> {
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }, "PR_SET_NO_NEW_PRIVS")
}
