//! The credentials directory: any contents of its four files load or give an error, never a
//! panic; loaded credentials accept their own password. The host key is a valid one unless
//! the input asks for its own bytes, so the other files get past the key check.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use podsftp_sidecar::credentials::{self, Credentials};

#[derive(Debug, Arbitrary)]
struct Files<'a> {
    username: &'a [u8],
    password: Option<&'a [u8]>,
    authorized_keys: Option<&'a [u8]>,
    host_key: Option<&'a [u8]>,
}

fuzz_target!(|files: Files<'_>| {
    static VALID_HOST_KEY: OnceLock<String> = OnceLock::new();
    let valid = VALID_HOST_KEY.get_or_init(|| {
        let key = Credentials::generate("x".into()).host_key;
        key.to_openssh(Default::default()).expect("encode a generated key").to_string()
    });
    let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).expect("a temporary directory");
    let write = |name: &str, content: &[u8]| std::fs::write(dir.path().join(name), content).expect("write");
    write("username", files.username);
    if let Some(password) = files.password {
        write("password", password);
    }
    if let Some(keys) = files.authorized_keys {
        write("authorized_keys", keys);
    }
    write("ssh_host_ed25519_key", files.host_key.unwrap_or(valid.as_bytes()));
    if let Ok(loaded) = credentials::load(dir.path()) {
        assert!(!loaded.username.is_empty());
        if let Some(password) = loaded.password() {
            assert!(loaded.password_matches(&loaded.username, password));
        }
    }
});
