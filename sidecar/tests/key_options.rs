//! `authorized_keys` options are never widened: a key limited by `from=` is refused from other
//! addresses, an expired key is refused, a key with an option podsftp cannot enforce (a forced
//! command) is refused with a log line at load, with the stock OpenSSH client.

mod common;

use common::*;

/// A server whose authorized_keys is the client key's line with `options` in front, and the
/// directory it serves.
fn server_with_key_options(options: &str) -> (Server, tempfile::TempDir) {
    let creds = Credentials::new();
    let path = creds.dir.path().join("authorized_keys");
    let key = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{options} {key}")).unwrap();
    let served = tempfile::tempdir().unwrap();
    (Server::start_with(creds, &["--dir", served.path().to_str().unwrap()]), served)
}

fn key_login(server: &Server) -> bool {
    server.sftp_batch_key("ls\n").status.success()
}

#[test]
fn from_limits_where_a_key_works() {
    let (elsewhere, _served) = server_with_key_options(r#"from="10.0.0.0/8,192.168.*""#);
    assert!(!key_login(&elsewhere), "a key limited to 10.0.0.0/8 logged in from 127.0.0.1");
    let log = elsewhere.log();
    assert!(log.contains("key restricted") && log.contains("from=10.0.0.0/8,192.168.*"), "{log}");
    assert!(log.contains("refuses this login"), "{log}");
    let (here, _served) = server_with_key_options(r#"restrict,from="127.0.0.0/8,!10.1.1.1""#);
    assert!(key_login(&here), "a key limited to 127.0.0.0/8 was refused from 127.0.0.1\n{}", here.log());
}

#[test]
fn expired_keys_and_unenforceable_options_are_refused() {
    let (expired, _served) = server_with_key_options(r#"expiry-time="20200101""#);
    assert!(!key_login(&expired), "a key that expired in 2020 logged in");
    let (valid, _served) = server_with_key_options(r#"expiry-time="29991231235959Z""#);
    assert!(key_login(&valid), "a key valid until 2999 was refused\n{}", valid.log());
    let (forced, _served) = server_with_key_options(r#"command="/usr/local/bin/backup""#);
    assert!(!key_login(&forced), "a key with a forced command got SFTP");
    let log = forced.log();
    assert!(log.contains("key refused") && log.contains("forced command") && log.contains("line=1"), "{log}");
}
