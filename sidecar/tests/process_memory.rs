//! The served container's `/proc` lists the sidecar's processes (the pod shares one process
//! namespace): an SFTP user must not be able to read or write the front end's memory (password,
//! host key) or environment, nor another session's worker's, through the served root. Both
//! privilege modes: "mirror" (the sidecar runs as the app's uid, no capabilities) and "switch"
//! (the sidecar runs as root with the runtime's default capabilities, serving a root app with
//! the same capabilities).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::app::*;
use common::raw_sftp::*;
use common::*;

const FXF_READ: u32 = 1;
const FXF_WRITE: u32 = 2;
const FX_PERMISSION_DENIED: u32 = 3;

/// A container process whose root has the pod's `/proc` mounted (the host's PID namespace,
/// like `shareProcessNamespace: true`): `enter` is the command that drops to the app's identity
/// and chroots (e.g. `chroot --userspec=U:G`).
fn start_app(root: &Path, uid: u32, enter: &str) -> App {
    std::fs::create_dir_all(root.join("proc")).unwrap();
    let script = format!(r#"mount -t proc proc "$0/proc" && exec {enter} "$0" /bin/busybox env PODSFTP_CONTAINER=app /bin/sleep 1000"#);
    let unshare = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c", &script])
        .arg(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("unshare");
    App::started(unshare, |status| status.contains("Name:\tsleep") && status.contains(&format!("Uid:\t{uid}\t")))
}

/// OPEN of `path` with `flags`: `Ok(())` when refused with PERMISSION_DENIED, else what the
/// server answered.
fn open_refused(session: &mut RawSftp, id: u32, path: &str, flags: u32) -> Result<(), String> {
    session.request(FXP_OPEN, id, &[&string(path.as_bytes()), &flags.to_be_bytes(), &0u32.to_be_bytes()]);
    let (kind, reply_id, payload) = session.reply();
    assert_eq!(reply_id, id);
    let code = payload.get(..4).map(|c| u32::from_be_bytes(c.try_into().unwrap()));
    if kind == FXP_STATUS && code == Some(FX_PERMISSION_DENIED) {
        Ok(())
    } else {
        Err(format!("{path} (flags {flags}): reply {kind}, {payload:?}"))
    }
}

/// Runs the attack: session A opens the memory, environment and maps of the front end and of
/// session B's worker through the served root, for reading and for writing.
fn attack(server: &Server) {
    let before = server.workers();
    let _victim = RawSftp::connect(server);
    let victim_worker = server.workers().into_iter().find(|p| !before.contains(p)).expect("the victim's worker");
    let mut attacker = RawSftp::connect(server);
    let mut id = 0;
    let mut opened = Vec::new();
    for pid in [server.pid(), victim_worker] {
        // The pseudo-filesystem is there: the world-readable status file opens.
        id += 1;
        attacker.open_read(id, format!("/proc/{pid}/status").as_bytes());
        for (file, flags) in [
            ("mem", FXF_READ),
            ("mem", FXF_WRITE),
            ("mem", FXF_READ | FXF_WRITE),
            ("environ", FXF_READ),
            ("maps", FXF_READ),
            (&format!("task/{pid}/mem"), FXF_WRITE),
        ] {
            id += 1;
            if let Err(e) = open_refused(&mut attacker, id, &format!("/proc/{pid}/{file}"), flags) {
                opened.push(e);
            }
        }
    }
    assert!(opened.is_empty(), "opened through the served root:\n{}\nlog:\n{}", opened.join("\n"), server.log());
}

#[test]
fn mirror_mode_session_cannot_touch_sidecar_memory() {
    let root = busybox_root("mirror");
    let app = start_app(root.path(), APP_UID, &format!("chroot --userspec={APP_UID}:{APP_UID} --groups={APP_UID}"));
    let (_dir, bin_copy) = unprivileged_copy();
    let creds = Credentials::new();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(creds.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let uid = APP_UID.to_string();
    let setpriv = ["setpriv", "--reuid", &uid, "--regid", &uid, "--clear-groups", "--inh-caps=-all", "--"];
    // Pseudo-filesystems allowed: this test is about the processes' own protection.
    let server = Server::start_wrapped(creds, &setpriv, &bin_copy, &["--pid", &app.pid.to_string(), "--serve-pseudo-filesystems"]);
    server.wait_ready(200);
    attack(&server);
}

#[test]
fn switch_mode_session_of_a_root_app_cannot_touch_sidecar_memory() {
    let root = busybox_root("switch");
    let bounding = format!("--bounding-set={DEFAULT_CAPS}");
    let app = start_app(root.path(), 0, &format!("setpriv {bounding} -- chroot"));
    let setpriv = ["setpriv", &bounding, "--"];
    let server = Server::start_wrapped(
        Credentials::new(),
        &setpriv,
        Path::new(bin()),
        &["--pid", &app.pid.to_string(), "--serve-pseudo-filesystems"],
    );
    server.wait_ready(200);
    attack(&server);
}

#[test]
fn the_served_roots_proc_is_not_entered_by_default() {
    let root = busybox_root("default");
    let app = start_app(root.path(), 0, "chroot");
    let server = Server::start(&["--pid", &app.pid.to_string()]);
    server.wait_ready(200);
    let mut session = RawSftp::connect(&server);
    for (id, path) in
        [(1, format!("/proc/{}/status", server.pid())), (2, "/proc/self/status".to_string()), (3, "/proc/../proc/1/environ".to_string())]
    {
        if let Err(e) = open_refused(&mut session, id, &path, FXF_READ) {
            panic!("{e}\nlog:\n{}", server.log());
        }
    }
    // The rest of the root is served as before.
    session.open_read(4, b"/data/default");
}
