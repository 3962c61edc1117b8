//! Names chosen by an attacker, in the served filesystem or in requests: every reply stays
//! within the 256 KiB packet limit OpenSSH clients accept, a path longer than PATH_MAX is
//! refused at once as OpenSSH refuses it, and a name cannot forge or repaint a log line. The
//! session keeps working after each.

mod common;

use std::path::Path;

use common::raw_sftp::*;
use common::*;

/// What OpenSSH clients accept (`SFTP_MAX_MSG_LENGTH`); also what the server advertises.
const CLIENT_PACKET_LIMIT: usize = 256 * 1024;
const FX_OK: u32 = 0;
const FX_EOF: u32 = 1;
const FX_FAILURE: u32 = 4;
const FX_BAD_MESSAGE: u32 = 5;

/// The next reply, asserting its packet is within what an OpenSSH client accepts.
fn bounded_reply(sftp: &mut RawSftp) -> (u8, u32, Vec<u8>) {
    let (kind, id, payload) = sftp.reply();
    assert!(1 + 4 + payload.len() <= CLIENT_PACKET_LIMIT, "a {}-byte reply (type {kind})", 5 + payload.len());
    (kind, id, payload)
}

fn status_code(payload: &[u8]) -> u32 {
    u32::from_be_bytes(payload[..4].try_into().unwrap())
}

fn assert_status(reply: (u8, u32, Vec<u8>), id: u32, code: u32) {
    let (kind, reply_id, payload) = reply;
    assert_eq!((kind, reply_id), (FXP_STATUS, id), "expected a status, got {payload:?}");
    assert_eq!(status_code(&payload), code, "{}", String::from_utf8_lossy(&payload));
}

/// Reads a string at `at`, returning it and where the next field starts.
fn field(buf: &[u8], at: usize) -> (&[u8], usize) {
    let len = u32::from_be_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
    (&buf[at + 4..at + 4 + len], at + 4 + len)
}

/// The served root still answers: REALPATH of `.` is `/`.
fn still_works(sftp: &mut RawSftp, id: u32) {
    sftp.request(FXP_REALPATH, id, &[&string(b".")]);
    let (kind, reply_id, payload) = bounded_reply(sftp);
    assert_eq!((kind, reply_id), (FXP_NAME, id));
    assert_eq!(field(&payload, 4).0, b"/");
}

/// The served root's accounts: a 1 MB user name for uid 0 (the files are read up to 1 MiB),
/// `app` for uid 7, and `groups` groups of 32-byte names besides `root`.
fn plant_accounts(root: &Path, groups: u32) {
    std::fs::create_dir(root.join("etc")).unwrap();
    let passwd = [&vec![b'A'; 1_000_000][..], b":x:0:0::/:/bin/sh\napp:x:7:7::/:/bin/sh\n"].concat();
    std::fs::write(root.join("etc/passwd"), passwd).unwrap();
    let mut group = b"root:x:0:\n".to_vec();
    for gid in 1..=groups {
        group.extend_from_slice(format!("{}:x:{gid}:\n", group_name(gid)).as_bytes());
    }
    std::fs::write(root.join("etc/group"), group).unwrap();
}

fn group_name(gid: u32) -> String {
    format!("{:0>32}", format!("g{gid}"))
}

#[test]
fn readdir_replies_stay_below_the_packet_limit_with_a_planted_name_and_long_file_names() {
    let served = tempfile::tempdir().unwrap();
    plant_accounts(served.path(), 0);
    let listed = served.path().join("listed");
    std::fs::create_dir(&listed).unwrap();
    let files = 300;
    for i in 0..files {
        std::fs::write(listed.join(format!("{i:03}{}", "n".repeat(252))), b"").unwrap();
    }
    let server = Server::start(&["--dir", served.path().to_str().unwrap()]);
    let mut sftp = RawSftp::connect(&server);
    sftp.request(FXP_OPENDIR, 1, &[&string(b"/listed")]);
    let (kind, _, payload) = bounded_reply(&mut sftp);
    assert_eq!(kind, FXP_HANDLE);
    let handle = field(&payload, 0).0.to_vec();
    let mut names = Vec::new();
    for id in 2.. {
        sftp.request(FXP_READDIR, id, &[&string(&handle)]);
        let (kind, _, payload) = bounded_reply(&mut sftp);
        if kind == FXP_STATUS {
            assert_eq!(status_code(&payload), FX_EOF);
            break;
        }
        assert_eq!(kind, FXP_NAME);
        let count = u32::from_be_bytes(payload[..4].try_into().unwrap());
        let mut at = 4;
        for _ in 0..count {
            let (name, next) = field(&payload, at);
            let (longname, next) = field(&payload, next);
            // uid 0's planted name is not a name: the owner shows as a number.
            if name != b"." && name != b".." {
                assert!(longname.starts_with(b"-rw-r--r--   1 0        root "), "{}", String::from_utf8_lossy(longname));
            }
            names.push(name.to_vec());
            let flags = u32::from_be_bytes(payload[next..next + 4].try_into().unwrap());
            assert_eq!(flags, 0xf);
            at = next + 4 + 8 + 8 + 4 + 8;
        }
        assert!(id < 100, "READDIR never ended");
    }
    names.sort();
    names.dedup();
    assert_eq!(names.len(), files + 2, "every entry exactly once");
    still_works(&mut sftp, 1000);
}

#[test]
fn users_groups_by_id_is_bounded_for_planted_names_and_many_ids() {
    let served = tempfile::tempdir().unwrap();
    let groups = 10_000;
    plant_accounts(served.path(), groups);
    let server = Server::start(&["--dir", served.path().to_str().unwrap()]);
    let mut sftp = RawSftp::connect(&server);
    let request = |sftp: &mut RawSftp, id: u32, uids: &[u32], gids: &[u32]| {
        let pack = |ids: &[u32]| string(&ids.iter().flat_map(|u| u.to_be_bytes()).collect::<Vec<u8>>());
        sftp.request(FXP_EXTENDED, id, &[&string(b"users-groups-by-id@openssh.com"), &pack(uids), &pack(gids)]);
    };

    request(&mut sftp, 1, &[0, 7, 99_999], &[0, 7, groups + 1]);
    let (kind, id, payload) = bounded_reply(&mut sftp);
    assert_eq!((kind, id), (FXP_EXTENDED_REPLY, 1));
    let (users, next) = field(&payload, 0);
    assert_eq!(users, [string(b""), string(b"app"), string(b"")].concat(), "the 1 MB name is no name");
    assert_eq!(field(&payload, next).0, [string(b"root"), string(group_name(7).as_bytes()), string(b"")].concat());

    // 60,000 ids fill a request; all their names would make a 2 MiB reply.
    let many: Vec<u32> = (0..60_000).map(|i| 1 + i % groups).collect();
    request(&mut sftp, 2, &[], &many);
    assert_status(bounded_reply(&mut sftp), 2, FX_FAILURE);
    still_works(&mut sftp, 3);
}

#[test]
fn paths_of_path_max_bytes_or_more_are_refused_at_once_like_openssh() {
    let served = tempfile::tempdir().unwrap();
    let server = Server::start(&["--dir", served.path().to_str().unwrap()]);
    let mut sftp = RawSftp::connect(&server);
    // 262,000 bytes, 131,000 components: fits a request, far past PATH_MAX.
    sftp.request(FXP_REALPATH, 1, &[&string(&b"/a".repeat(131_000))]);
    assert_status(bounded_reply(&mut sftp), 1, FX_BAD_MESSAGE);
    let fits = [&b"/"[..], &b"./".repeat(2046), b"cc"].concat();
    let too_long = [&fits[..], b"c"].concat();
    assert_eq!(too_long.len(), 4096);
    sftp.request(FXP_MKDIR, 2, &[&string(&too_long), &0u32.to_be_bytes()]);
    assert_status(bounded_reply(&mut sftp), 2, FX_BAD_MESSAGE);
    sftp.request(FXP_STAT, 3, &[&string(&too_long)]);
    assert_status(bounded_reply(&mut sftp), 3, FX_BAD_MESSAGE);
    // One byte less is a path: its last name does not exist, so it stands as written.
    sftp.request(FXP_REALPATH, 4, &[&string(&fits)]);
    let (kind, _, payload) = bounded_reply(&mut sftp);
    assert_eq!(kind, FXP_NAME);
    assert_eq!(field(&payload, 4).0, b"/cc");
    still_works(&mut sftp, 5);
}

#[test]
fn a_name_with_newline_cr_and_esc_makes_one_escaped_audit_line_in_every_log_format() {
    let forged = "2026-11-30T06:00:00.000000Z  INFO audit: ok user=\"admin\" client=\"10.0.0.1:1\" op=\"remove\" path=important";
    let name = format!("/x\n{forged}\r\x1b[2Jend");
    for format in ["text", "json"] {
        let served = tempfile::tempdir().unwrap();
        let server = Server::start(&["--dir", served.path().to_str().unwrap(), "--log-format", format]);
        let mut sftp = RawSftp::connect(&server);
        sftp.request(FXP_MKDIR, 1, &[&string(name.as_bytes()), &0u32.to_be_bytes()]);
        assert_status(bounded_reply(&mut sftp), 1, FX_OK);
        assert!(served.path().join(&name[1..]).is_dir(), "the name is stored as sent");
        drop(sftp);

        let log = std::fs::read(&server.log).unwrap();
        for byte in [b'\r', 0x1b] {
            assert!(!log.contains(&byte), "{format}: a raw {byte:#x} reached the log:\n{}", String::from_utf8_lossy(&log));
        }
        let log = String::from_utf8(log).unwrap();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("admin")).collect();
        assert_eq!(lines.len(), 1, "{format}: one line names the forged user:\n{log}");
        assert!(lines[0].contains("mkdir"), "{format}: {}", lines[0]);
        let visible = format!("/x\\n{forged}\\r\\x1b[2Jend");
        let shown = if format == "json" { visible.replace('\\', "\\\\").replace('"', "\\\"") } else { visible };
        assert!(lines[0].contains(&shown), "{format}: expected {shown} in\n{}", lines[0]);
        assert!(!log.lines().any(|l| l.starts_with("2026-11-30T06:00:00")), "{format}: a forged line:\n{log}");
    }
}
