//! The SFTP session engine over an in-memory pipe, serving a small temporary root: any stream
//! of packets ends the session cleanly or with an error, never a panic or a hang, every reply
//! is within the advertised packet limit, and nothing is created outside the served root.
#![no_main]

use std::path::Path;
use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use podsftp_sidecar::confined::Root;
use podsftp_sidecar::sftp::accounts::Accounts;
use podsftp_sidecar::sftp::codec::MAX_PACKET;
use podsftp_sidecar::sftp::framing::Framer;
use podsftp_sidecar::sftp::server::{self, Options};
use podsftp_sidecar_fuzz::packet_stream;

/// Files a session may grow to: a WRITE at a huge offset or a copy-data of a sparse file must
/// stay a cheap error (EFBIG) here.
const FILE_SIZE_LIMIT: u64 = 16 * 1024 * 1024;

fn limit_file_size() {
    // SAFETY: plain libc calls with valid arguments, before any session thread exists.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let limit = libc::rlimit { rlim_cur: FILE_SIZE_LIMIT, rlim_max: FILE_SIZE_LIMIT };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
}

/// A file, a directory, symlinks inside and pointing out, and accounts files.
fn populate(root: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(root.join("etc"))?;
    std::fs::write(root.join("etc/passwd"), b"root:x:0:0::/:/bin/sh\n")?;
    std::fs::write(root.join("f"), b"0123456789")?;
    std::fs::create_dir(root.join("d"))?;
    std::os::unix::fs::symlink("/d", root.join("l"))?;
    std::os::unix::fs::symlink("../../..", root.join("d/up"))
}

fuzz_target!(|data: &[u8]| {
    static INIT: Once = Once::new();
    INIT.call_once(limit_file_size);
    let outside = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).expect("a temporary directory");
    let served = outside.path().join("root");
    std::fs::create_dir(&served).expect("the served root");
    populate(&served).expect("the served files");
    let options = Options {
        read_only: false,
        user: "fuzz".into(),
        client: "fuzz".into(),
        accounts: Accounts::parse(b"root:x:0:0::/:/bin/sh\n", b"root:x:0:\n"),
        target: None,
    };
    let stream = packet_stream(data);
    let mut output = Vec::new();
    let root = Root::open(&served).expect("open the served root");
    let _ = server::serve(root, options, Framer::new(&stream[..]), &mut output);

    let mut replies = &output[..];
    while let [a, b, c, d, rest @ ..] = replies {
        let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
        assert!(len <= MAX_PACKET as usize, "a {len}-byte reply");
        replies = &rest[len.min(rest.len())..];
    }
    let beside: Vec<_> = std::fs::read_dir(outside.path()).expect("list").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(beside, ["root"], "a session created something outside its root");
});
