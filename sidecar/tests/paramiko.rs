//! paramiko (Debian's python3-paramiko): prefetch of a 64 MiB file (hundreds of pipelined
//! READs) and parallel small uploads on one session must neither deadlock nor corrupt.

mod common;

use std::process::Command;

use common::*;

#[test]
fn paramiko_prefetch_and_parallel_uploads() {
    let served = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    random_file(&served.path().join("big.bin"), 64 * 1024 * 1024);
    std::fs::copy(served.path().join("big.bin"), local.path().join("big.bin")).unwrap();
    let server = Server::start(&["--dir", served.path().to_str().unwrap()]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scripts/paramiko_load.py");
    let out = Command::new("/usr/bin/python3")
        .arg(script)
        .args(["127.0.0.1", &server.port.to_string(), USER, PASSWORD])
        .arg(served.path())
        .arg(local.path())
        .output()
        .expect("run /usr/bin/python3 (python3-paramiko)");
    assert_ok(&out, "paramiko script");
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
    for i in [0usize, 77, 199] {
        let content = std::fs::read(served.path().join(format!("small/{i}.txt"))).unwrap();
        let expected: Vec<u8> = format!("file {i} ").into_bytes().repeat(i + 1).into_iter().take(4096 + i).collect();
        assert_eq!(content, expected, "small/{i}.txt");
    }
}
