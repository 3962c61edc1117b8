//! Real OpenSSH clients (`sftp -b`, `scp`) against the sidecar serving a directory.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

use common::*;

#[test]
fn sftp_batch_operations_with_password_and_key() {
    let served = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("existing.txt"), b"from the server\n").unwrap();
    random_file(&local.path().join("up.bin"), 300_000);
    let server = Server::start(&["--dir", served.path().to_str().unwrap()]);
    let l = local.path().display();
    let script = format!(
        "ls -l\n\
         get existing.txt {l}/existing.txt\n\
         put {l}/up.bin up.bin\n\
         mkdir dir\n\
         rename up.bin dir/moved.bin\n\
         chmod 600 dir/moved.bin\n\
         ln -s dir/moved.bin link.bin\n\
         get link.bin {l}/via-link.bin\n\
         mkdir gone\n\
         rmdir gone\n\
         put {l}/up.bin tmp.bin\n\
         rm tmp.bin\n\
         df -h\n\
         ls -l dir\n"
    );
    let out = server.sftp_batch(&script);
    assert_ok(&out, "sftp batch with password");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("existing.txt"), "ls -l output: {stdout}");
    assert!(stdout.contains("-rw-------"), "ls -l shows the chmod: {stdout}");
    assert_eq!(std::fs::read(local.path().join("existing.txt")).unwrap(), b"from the server\n");
    assert_eq!(sha256_file(&served.path().join("dir/moved.bin")), sha256_file(&local.path().join("up.bin")));
    assert_eq!(sha256_file(&local.path().join("via-link.bin")), sha256_file(&local.path().join("up.bin")));
    assert_eq!(std::fs::metadata(served.path().join("dir/moved.bin")).unwrap().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_link(served.path().join("link.bin")).unwrap().as_os_str().as_bytes(), b"dir/moved.bin");
    assert!(!served.path().join("gone").exists());
    assert!(!served.path().join("tmp.bin").exists());

    // The same with key login, plus resumed transfers.
    let partial = &std::fs::read(local.path().join("up.bin")).unwrap()[..100_000];
    std::fs::write(served.path().join("resume.bin"), partial).unwrap();
    std::fs::write(local.path().join("resume-down.bin"), partial).unwrap();
    let script = format!("reput {l}/up.bin resume.bin\nreget dir/moved.bin {l}/resume-down.bin\n");
    let out = server.sftp_batch_key(&script);
    assert_ok(&out, "sftp batch with key");
    assert_eq!(sha256_file(&served.path().join("resume.bin")), sha256_file(&local.path().join("up.bin")));
    assert_eq!(sha256_file(&local.path().join("resume-down.bin")), sha256_file(&local.path().join("up.bin")));
    let log = server.log();
    assert!(log.contains("op=\"mkdir\"") && log.contains("path=/dir"), "audit log: {log}");
    assert!(log.contains("session closed") && log.contains("bytes_in="), "audit log: {log}");
}

#[test]
fn large_file_round_trip_keeps_every_byte() {
    let served = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let size = 64 * 1024 * 1024;
    random_file(&local.path().join("big.bin"), size);
    let server = Server::start(&["--dir", served.path().to_str().unwrap()]);
    let l = local.path().display();
    let out = server.sftp_batch(&format!("put {l}/big.bin big.bin\nget big.bin {l}/big-back.bin\n"));
    assert_ok(&out, "64 MiB put/get");
    let original = sha256_file(&local.path().join("big.bin"));
    assert_eq!(sha256_file(&served.path().join("big.bin")), original);
    assert_eq!(sha256_file(&local.path().join("big-back.bin")), original);
}

#[test]
fn scp_copies_a_file_and_a_tree() {
    let served = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let tree = local.path().join("tree");
    std::fs::create_dir_all(tree.join("a/b")).unwrap();
    random_file(&tree.join("a/one.bin"), 70_000);
    random_file(&tree.join("a/b/two.bin"), 1);
    std::fs::write(tree.join("empty"), b"").unwrap();
    let server = Server::start(&["--dir", served.path().to_str().unwrap()]);
    let port = server.port.to_string();
    let dest = server.destination();

    let out = server.with_key("scp").args(["-P", &port, "-r"]).arg(&tree).arg(format!("{dest}:/")).output().unwrap();
    assert_ok(&out, "scp -r upload");
    for f in ["a/one.bin", "a/b/two.bin", "empty"] {
        assert_eq!(sha256_file(&served.path().join("tree").join(f)), sha256_file(&tree.join(f)), "{f}");
    }
    let back = local.path().join("back.bin");
    let out = server.with_password("scp", PASSWORD).args(["-P", &port]).arg(format!("{dest}:tree/a/one.bin")).arg(&back).output().unwrap();
    assert_ok(&out, "scp download");
    assert_eq!(sha256_file(&back), sha256_file(&tree.join("a/one.bin")));
}

#[test]
fn non_utf8_names_round_trip() {
    let served = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9-\xff.txt");
    let up = local.path().join("up");
    std::fs::create_dir(&up).unwrap();
    std::fs::write(up.join(name), b"latin-1 name").unwrap();
    let server = Server::start(&["--dir", served.path().to_str().unwrap()]);
    let l = local.path().display();
    let out = server.sftp_batch(&format!("put -r {l}/up up\nget -r up {l}/down\nls up\n"));
    assert_ok(&out, "put -r / get -r of a non-UTF-8 name");
    assert_eq!(std::fs::read(served.path().join("up").join(name)).unwrap(), b"latin-1 name");
    assert_eq!(std::fs::read(local.path().join("down").join(name)).unwrap(), b"latin-1 name");
}

#[test]
fn owners_are_named_as_the_served_filesystem_names_them() {
    let served = tempfile::tempdir().unwrap();
    let (uid, gid) = (rustix::process::getuid().as_raw(), rustix::process::getgid().as_raw());
    std::fs::create_dir_all(served.path().join("etc")).unwrap();
    std::fs::write(served.path().join("etc/passwd"), format!("pod-owner:x:{uid}:{gid}::/:/bin/sh\n")).unwrap();
    std::fs::write(served.path().join("etc/group"), format!("pod-group:x:{gid}:\n")).unwrap();
    std::fs::create_dir(served.path().join("data")).unwrap();
    std::fs::write(served.path().join("data/report.csv"), b"a,b\n").unwrap();
    // The names come from the app's filesystem even when --root narrows what is served.
    let server = Server::start(&["--dir", served.path().to_str().unwrap(), "--root", "data"]);
    // `ls -l DIR` shows the server's long names; `ls -l GLOB` makes OpenSSH's client format the
    // line itself, with names from users-groups-by-id@openssh.com.
    let out = server.sftp_batch("ls -l /\nls -l /*.csv\n");
    assert_ok(&out, "ls -l");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().filter(|l| l.contains("report.csv")).collect();
    assert_eq!(lines.len(), 2, "two listings of report.csv: {stdout}");
    for line in lines {
        assert!(line.contains("pod-owner") && line.contains("pod-group"), "names in: {line}");
    }
}
