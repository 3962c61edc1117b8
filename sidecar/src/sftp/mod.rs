//! SFTP version 3 as OpenSSH speaks it: `codec` turns bytes into typed packets and back,
//! `server` executes requests against a [`crate::confined::Root`], and `listing` renders
//! `ls -l`-style long names.

pub mod codec;
pub mod listing;
pub mod server;
