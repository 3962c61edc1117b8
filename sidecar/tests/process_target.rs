//! Serving another process's root: `--pid` against a process in its own mount and PID
//! namespace with a busybox root, running as another uid; `--container` finding a restarted
//! process again (and a session open across the restart refusing to go on); and the identity
//! rules (a root front end switches to the target's uid, a non-root front end with another uid
//! is told exactly why it cannot reach the target).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::app::*;
use common::raw_sftp::*;
use common::*;

/// A process that looks like a container: own mount and PID namespace, chrooted into `root`,
/// running as APP_UID with no capabilities, with PODSFTP_CONTAINER set.
fn start_app(root: &Path, container: &str) -> App {
    let unshare = Command::new("unshare")
        .args(["--mount", "--pid", "--fork", "--kill-child"])
        .arg(format!("--root={}", root.display()))
        .args(["--setuid", &APP_UID.to_string(), "--setgid", &APP_UID.to_string()])
        // Only the app gets the marker (not unshare, which lives outside the root).
        .args(["/bin/busybox", "env", &format!("PODSFTP_CONTAINER={container}"), "/bin/sleep", "1000"])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("unshare");
    App::started(unshare, |status| status.contains(&format!("Uid:\t{APP_UID}")))
}

#[test]
fn pid_target_runs_as_the_target_uid() {
    let root = busybox_root("first-root");
    let app = start_app(root.path(), "app");
    let server = Server::start(&["--pid", &app.pid.to_string()]);
    server.wait_ready(200);
    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("upload.txt"), b"uploaded").unwrap();
    let l = local.path().display();
    let out = server.sftp_batch(&format!("ls /\nls /data\nput {l}/upload.txt /data/upload.txt\nmkdir /data/newdir\n"));
    assert_ok(&out, "sftp into the app's root");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("first-root"), "ls shows the app's files: {stdout}");
    let uploaded = root.path().join("data/upload.txt");
    assert_eq!(std::fs::read(&uploaded).unwrap(), b"uploaded");
    let meta = std::fs::metadata(&uploaded).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (APP_UID, APP_UID), "upload owned by the app's uid");
    assert_eq!(std::fs::metadata(root.path().join("data/newdir")).unwrap().uid(), APP_UID);
    // The app's uid may not write where the app may not: root's / is 0755 root-owned.
    let out = server.sftp_batch(&format!("put {l}/upload.txt /not-allowed.txt\n"));
    assert!(!out.status.success(), "wrote where uid {APP_UID} has no permission");
    assert!(!root.path().join("not-allowed.txt").exists());
}

#[test]
fn container_target_is_found_again_after_a_restart() {
    let first = busybox_root("first-root");
    let second = busybox_root("second-root");
    let app = start_app(first.path(), "web");
    // Another process with a different container name must not be picked.
    let decoy_root = busybox_root("decoy-root");
    let _decoy = start_app(decoy_root.path(), "other");
    let server = Server::start(&["--container", "web"]);
    server.wait_ready(200);
    let out = server.sftp_batch("ls /data\n");
    assert_ok(&out, "first container");
    assert!(String::from_utf8_lossy(&out.stdout).contains("first-root"));
    let mut open_session = RawSftp::connect(&server);
    open_session.request(FXP_STAT, 1, &[&string(b"/data")]);
    assert_eq!(open_session.reply().0, FXP_ATTRS);

    let app_pid = app.pid;
    drop(app);
    // SIGKILL is asynchronous: wait until the process is really gone (reaped, so exited).
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{app_pid}")).exists() {
        assert!(Instant::now() < deadline, "app process {app_pid} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A session opened before the restart must not go on serving the dead container's root:
    // the next request is refused with the reason, then the session ends.
    open_session.request(FXP_STAT, 2, &[&string(b"/data")]);
    let (kind, id, payload) = open_session.reply();
    assert_eq!((kind, id), (FXP_STATUS, 2));
    let message = String::from_utf8_lossy(&payload[8..]);
    assert!(message.contains("has exited (restarted?)"), "{message}");
    assert!(open_session.try_receive().is_none(), "the session ends after the refusal");
    let body = server.wait_ready(503);
    assert!(body.contains("web"), "readyz says why: {body}");
    let _app = start_app(second.path(), "web");
    server.wait_ready(200);
    let out = server.sftp_batch("ls /data\n");
    assert_ok(&out, "restarted container");
    assert!(String::from_utf8_lossy(&out.stdout).contains("second-root"), "{}", String::from_utf8_lossy(&out.stdout));
    let log = server.log();
    assert!(log.contains("found the served container's process"), "{log}");
}

fn serve_as(uid: u32, bin_copy: &Path, creds: &Credentials, pid: u32, health_port: u16, port: u16, log: &Path) -> Child {
    std::fs::set_permissions(creds.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    Command::new("setpriv")
        .args(["--reuid", &uid.to_string(), "--regid", &uid.to_string(), "--clear-groups", "--inh-caps=-all", "--"])
        .arg(bin_copy)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--health-listen", &format!("127.0.0.1:{health_port}")])
        .arg("--credentials")
        .arg(creds.dir.path())
        .args(["--pid", &pid.to_string()])
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// `/readyz` of the health port once it says more than "starting": (status, body).
fn readyz(port: u16) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((code, body)) = podsftp_test_support::http_get(std::net::SocketAddr::from(([127, 0, 0, 1], port)), "/readyz")
            && !body.contains("starting")
        {
            return (code, body);
        }
        assert!(Instant::now() < deadline, "no readyz answer");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn unprivileged_front_end_mirrors_or_explains() {
    let root = busybox_root("mirror-root");
    let app = start_app(root.path(), "app");
    let (_dir, bin_copy) = unprivileged_copy();
    let logs = tempfile::tempdir().unwrap();

    // Same uid as the app ("mirror" mode): reachable without any privilege.
    let creds = Credentials::new();
    let (port, health) = (free_port(), free_port());
    let mut same = serve_as(APP_UID, &bin_copy, &creds, app.pid, health, port, &logs.path().join("same.log"));
    let (code, body) = readyz(health);
    let _ = same.kill();
    let _ = same.wait();
    assert_eq!(code, 200, "{body}\n{}", std::fs::read_to_string(logs.path().join("same.log")).unwrap());

    // Another uid: not ready, and the reason names the uid mismatch.
    let (port, health) = (free_port(), free_port());
    let mut other = serve_as(APP_UID + 1, &bin_copy, &creds, app.pid, health, port, &logs.path().join("other.log"));
    let (code, body) = readyz(health);
    let _ = other.kill();
    let _ = other.wait();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("EACCES") && body.contains(&format!("uid {APP_UID}")), "{body}");
}
