//! Requests on different handles run concurrently: a READ stuck on a slow disk (a FUSE
//! filesystem whose reads take seconds) must not hold up requests on other handles or paths
//! in the same session. Asserts the order of the replies, not timings.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::raw_sftp::*;
use common::*;

const SLOW_SECONDS: &str = "3";

/// `tests/scripts/slowfs.py` mounted at a directory; unmounted on drop.
struct SlowFs {
    mount: PathBuf,
    process: Child,
}

impl SlowFs {
    fn mount(at: &Path) -> SlowFs {
        std::fs::create_dir(at).unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scripts/slowfs.py");
        let process = Command::new("/usr/bin/python3")
            .args([script, at.to_str().unwrap(), SLOW_SECONDS])
            .spawn()
            .expect("run /usr/bin/python3 (python3-fusepy)");
        let fs = SlowFs { mount: at.to_path_buf(), process };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !at.join("slow.bin").exists() {
            assert!(Instant::now() < deadline, "slowfs.py did not mount {} (is /dev/fuse there?)", at.display());
            std::thread::sleep(Duration::from_millis(100));
        }
        fs
    }
}

impl Drop for SlowFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[test]
fn slow_read_does_not_hold_up_other_handles() {
    let served = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("fast.txt"), b"fast disk\n").unwrap();
    let _slow = SlowFs::mount(&served.path().join("slow"));
    let server = Server::start(&["--dir", served.path().to_str().unwrap()]);
    let mut client = RawSftp::connect(&server);
    let slow = client.open_read(1, b"/slow/slow.bin");
    let fast = client.open_read(2, b"/fast.txt");

    client.read(10, &slow, 4096);
    client.read(11, &fast, 4096);
    client.request(FXP_STAT, 12, &[&string(b"/fast.txt")]);

    // The fast READ and the STAT run on different threads: either may come first, both before
    // the slow READ.
    let mut passed = [client.reply(), client.reply()];
    passed.sort_by_key(|(_, id, _)| *id);
    let [(read_kind, read_id, data), (stat_kind, stat_id, _)] = passed;
    assert_eq!(
        (read_kind, read_id, stat_kind, stat_id),
        (FXP_DATA, 11, FXP_ATTRS, 12),
        "the fast READ and the STAT come before the slow READ"
    );
    assert_eq!(&data[4..], b"fast disk\n");
    let (kind, id, payload) = client.reply();
    assert_eq!((kind, id), (FXP_DATA, 10), "then the slow READ (got {} bytes)", payload.len());
    assert_eq!(&payload[4..], &b"slow disk\n".repeat(410)[..4096]);

    // Same handle: replies keep the order of the requests even though each READ is slow.
    client.read(20, &slow, 10);
    client.read(21, &slow, 10);
    let first = client.reply();
    let second = client.reply();
    assert_eq!((first.0, first.1, second.0, second.1), (FXP_DATA, 20, FXP_DATA, 21));
}
