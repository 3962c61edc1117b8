//! `authorized_keys` as a user or operator might write it: any text parses to some keys or
//! none, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podsftp_sidecar::credentials::parse_authorized_keys;

fuzz_target!(|data: &[u8]| {
    let _ = parse_authorized_keys(&String::from_utf8_lossy(data));
});
