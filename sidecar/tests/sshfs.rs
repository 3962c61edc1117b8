//! sshfs (Debian's sshfs, FUSE over SFTP) mounting the sidecar: what people do who want the
//! pod's files as a local folder. Copy in and out by hash, directories, rename, chmod,
//! symlinks, removal, each checked on the served side.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// An sshfs mount, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn new(server: &Server, at: &Path) -> Mount {
        let key = format!("IdentityFile={}", server.creds.client_key.display());
        let out = Command::new("sshfs")
            .arg(format!("{}:/", server.destination()))
            .arg(at)
            .args(["-p", &server.port.to_string()])
            .args(["-o", &key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
            .output()
            .expect("run sshfs");
        assert_ok(&out, "sshfs mount");
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.0).status();
    }
}

#[test]
fn sshfs_mount_round_trip() {
    let served = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let mountpoint = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("from-server.txt"), b"hello from the pod\n").unwrap();
    random_file(&local.path().join("data.bin"), 5 * 1024 * 1024 + 123);
    let server = Server::start(&["--dir", served.path().to_str().unwrap()]);
    let mount = Mount::new(&server, mountpoint.path());
    let m = &mount.0;

    assert_eq!(std::fs::read(m.join("from-server.txt")).unwrap(), b"hello from the pod\n");
    std::fs::create_dir(m.join("dir")).unwrap();
    std::fs::copy(local.path().join("data.bin"), m.join("dir/data.bin")).unwrap();
    assert_eq!(sha256_file(&served.path().join("dir/data.bin")), sha256_file(&local.path().join("data.bin")));
    assert_eq!(sha256_file(&m.join("dir/data.bin")), sha256_file(&local.path().join("data.bin")));

    std::fs::rename(m.join("dir/data.bin"), m.join("dir/renamed.bin")).unwrap();
    std::fs::set_permissions(m.join("dir/renamed.bin"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let mode = std::fs::metadata(served.path().join("dir/renamed.bin")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o640);
    std::os::unix::fs::symlink("dir/renamed.bin", m.join("link")).unwrap();
    assert_eq!(std::fs::read_link(served.path().join("link")).unwrap(), Path::new("dir/renamed.bin"));

    let mut names: Vec<String> =
        std::fs::read_dir(m.join("dir")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["renamed.bin"]);

    std::fs::remove_file(m.join("link")).unwrap();
    std::fs::remove_file(m.join("dir/renamed.bin")).unwrap();
    std::fs::remove_dir(m.join("dir")).unwrap();
    assert!(!served.path().join("dir").exists(), "removed through sshfs, gone on the server");
}
