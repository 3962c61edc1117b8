//! Escape attempts through the real `sftp` client: `..`, absolute and relative symlinks, a
//! symlink swapped in during a transfer; `--root` and `--read-only`.

mod common;

use std::os::unix::fs::symlink;

use common::*;

#[test]
fn dotdot_and_symlinks_stay_inside_the_root() {
    let base = tempfile::tempdir().unwrap();
    let served = base.path().join("served");
    std::fs::create_dir_all(served.join("sub/deeper")).unwrap();
    std::fs::write(base.path().join("secret.txt"), b"outside").unwrap();
    std::fs::write(served.join("inside.txt"), b"inside").unwrap();
    symlink("/", served.join("to-root")).unwrap();
    symlink("/etc/passwd", served.join("passwd")).unwrap();
    symlink("../../../secret.txt", served.join("sub/deeper/chain")).unwrap();
    symlink("../../..", served.join("sub/deeper/up")).unwrap();
    let local = tempfile::tempdir().unwrap();
    let l = local.path().display();
    let server = Server::start(&["--dir", served.to_str().unwrap()]);

    for (i, remote) in [
        "../secret.txt",
        "../../secret.txt",
        "/../secret.txt",
        "passwd",
        "sub/deeper/chain",
        "to-root/../secret.txt",
        "sub/deeper/up/secret.txt",
    ]
    .iter()
    .enumerate()
    {
        let out = server.sftp_batch(&format!("get {remote} {l}/got{i}\n"));
        assert!(!out.status.success(), "get {remote} succeeded");
        assert!(!local.path().join(format!("got{i}")).exists(), "{remote} was downloaded");
    }
    // Climbing out lands on the root, whose listing is the served directory.
    let out = server.sftp_batch("cd ../../..\npwd\nls\ncd to-root\nls\ncd /sub/deeper/up\nls\n");
    assert_ok(&out, "cd ..");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Remote working directory: /\n"), "{stdout}");
    assert_eq!(stdout.matches("inside.txt").count(), 3, "{stdout}");
    assert!(!stdout.contains("secret.txt"), "{stdout}");

    // Writing through symlinks creates files inside, never outside.
    std::fs::write(local.path().join("payload"), b"payload").unwrap();
    let out =
        server.sftp_batch(&format!("put {l}/payload to-root/etc-file\nput {l}/payload sub/deeper/up/../escaped\nmkdir to-root/newdir\n"));
    assert_ok(&out, "put through symlinks");
    assert_eq!(std::fs::read(served.join("etc-file")).unwrap(), b"payload");
    assert_eq!(std::fs::read(served.join("escaped")).unwrap(), b"payload");
    assert!(served.join("newdir").is_dir());
    assert!(!base.path().join("escaped").exists());
    assert!(!std::path::Path::new("/etc-file").exists() && !std::path::Path::new("/newdir").exists());

    // A symlink created in the session pointing out is resolved inside when followed.
    let out = server.sftp_batch(&format!("ln -s ../secret.txt mine\nget mine {l}/mine\n"));
    assert!(!out.status.success());
    assert!(!local.path().join("mine").exists());
    assert_eq!(std::fs::read_link(served.join("mine")).unwrap().to_str(), Some("../secret.txt"));
}

#[test]
fn symlink_swapped_in_during_a_transfer_stays_inside() {
    let base = tempfile::tempdir().unwrap();
    let served = base.path().join("served");
    let outside = base.path().join("outside");
    std::fs::create_dir_all(served.join("target")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let local = tempfile::tempdir().unwrap();
    for i in 0..40 {
        random_file(&local.path().join(format!("f{i}")), 200_000);
    }
    let server = Server::start(&["--dir", served.to_str().unwrap()]);
    let l = local.path().display();
    let script: String = (0..40).map(|i| format!("-put {l}/f{i} target/f{i}\n")).collect();
    let swapper = {
        let served = served.clone();
        let outside = outside.clone();
        std::thread::spawn(move || {
            for _ in 0..200 {
                let _ = std::fs::rename(served.join("target"), served.join("target.real"));
                let _ = symlink(&outside, served.join("target"));
                std::thread::sleep(std::time::Duration::from_millis(2));
                let _ = std::fs::remove_file(served.join("target"));
                let _ = std::fs::rename(served.join("target.real"), served.join("target"));
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    };
    let _ = server.sftp_batch(&script);
    swapper.join().unwrap();
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "a file landed outside the root");
}

#[test]
fn root_option_confines_to_a_subdirectory() {
    let served = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(served.path().join("srv/data")).unwrap();
    std::fs::write(served.path().join("top-secret"), b"no").unwrap();
    std::fs::write(served.path().join("srv/data/file"), b"yes").unwrap();
    symlink("/top-secret", served.path().join("srv/abs")).unwrap();
    let local = tempfile::tempdir().unwrap();
    let l = local.path().display();
    let server = Server::start(&["--dir", served.path().to_str().unwrap(), "--root", "/srv"]);
    let out = server.sftp_batch(&format!("ls /\nget /data/file {l}/file\n"));
    assert_ok(&out, "ls in --root");
    assert!(String::from_utf8_lossy(&out.stdout).contains("data"));
    assert_eq!(std::fs::read(local.path().join("file")).unwrap(), b"yes");
    for remote in ["../top-secret", "/../top-secret", "abs"] {
        let out = server.sftp_batch(&format!("get {remote} {l}/x\n"));
        assert!(!out.status.success(), "{remote} reachable from --root");
    }
}

#[test]
fn read_only_refuses_every_change_but_serves_reads() {
    let served = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("file"), b"data").unwrap();
    std::fs::create_dir(served.path().join("dir")).unwrap();
    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("up"), b"new").unwrap();
    let l = local.path().display();
    let server = Server::start(&["--dir", served.path().to_str().unwrap(), "--read-only"]);
    let out = server.sftp_batch(&format!("get file {l}/file\n"));
    assert_ok(&out, "read in read-only mode");
    assert_eq!(std::fs::read(local.path().join("file")).unwrap(), b"data");
    for op in [
        format!("put {l}/up up"),
        format!("put {l}/up file"),
        "mkdir d".into(),
        "rm file".into(),
        "rmdir dir".into(),
        "rename file other".into(),
        "chmod 777 file".into(),
        "ln -s file link".into(),
    ] {
        let out = server.sftp_batch(&format!("{op}\n"));
        assert!(!out.status.success(), "{op} succeeded in read-only mode");
    }
    assert_eq!(std::fs::read(served.path().join("file")).unwrap(), b"data");
    let names: Vec<_> = std::fs::read_dir(served.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}
