//! Stand-ins for the served container: a busybox root filesystem, the app's uid, and a copy of
//! the sidecar binary an unprivileged uid may execute.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub const APP_UID: u32 = 4242;

/// The runtime's default capabilities for a root container (Docker/containerd), 0xa80425fb.
pub const DEFAULT_CAPS: &str = "-all,+chown,+dac_override,+fsetid,+fowner,+mknod,+net_raw,+setgid,+setuid,+setfcap,+setpcap,+net_bind_service,+sys_chroot,+kill,+audit_write";

/// A minimal container root: static busybox, a data directory owned by the app uid.
pub fn busybox_root(marker: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(root.path().join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.path().join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.path().join("bin/sleep")).unwrap();
    std::fs::create_dir_all(root.path().join("data")).unwrap();
    std::fs::write(root.path().join("data").join(marker), marker).unwrap();
    std::os::unix::fs::chown(root.path().join("data"), Some(APP_UID), Some(APP_UID)).unwrap();
    root
}

/// The binary where an unprivileged uid can read and run it.
pub fn unprivileged_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin_copy = dir.path().join("podsftp-sidecar");
    std::fs::copy(super::bin(), &bin_copy).unwrap();
    (dir, bin_copy)
}

/// `pid` itself or its first descendant (by `/proc/<pid>/task/*/children`) whose status passes
/// `wanted`, waiting up to 10 s for it to appear.
pub fn wait_for_process(pid: u32, wanted: impl Fn(&str) -> bool) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut queue = vec![pid];
        while let Some(candidate) = queue.pop() {
            if wanted(&std::fs::read_to_string(format!("/proc/{candidate}/status")).unwrap_or_default()) {
                return candidate;
            }
            for task in std::fs::read_dir(format!("/proc/{candidate}/task")).into_iter().flatten().flatten() {
                let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
                queue.extend(children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
        assert!(Instant::now() < deadline, "neither {pid} nor a descendant became the wanted process");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process that looks like a container, started through `unshare`; killed, and `unshare`
/// reaped, when dropped.
pub struct App {
    unshare: Child,
    pub pid: u32,
}

impl App {
    /// Waits for the process under `unshare` whose `/proc/<pid>/status` satisfies `is_app`.
    pub fn started(unshare: Child, is_app: impl Fn(&str) -> bool) -> App {
        let pid = wait_for_process(unshare.id(), is_app);
        App { unshare, pid }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        // --kill-child's parent-death signal does not survive --setuid: kill the app itself.
        let _ = Command::new("kill").args(["-KILL", &self.pid.to_string()]).status();
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}
