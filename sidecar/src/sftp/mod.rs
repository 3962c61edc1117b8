//! SFTP version 3 as OpenSSH speaks it: `codec` turns bytes into typed packets and back,
//! `requests` is the table of what each request is (and how errors answer), `framing` cuts the
//! client's stream into packets, `engine` runs a session (lanes, budget, threads), `server`
//! executes requests against a [`crate::confined::Root`], `listing` renders `ls -l`-style long
//! names and `accounts` maps ids to the served filesystem's names; `tally` counts replies for
//! the front end's metrics.

pub mod accounts;
pub mod codec;
pub mod engine;
pub mod framing;
pub mod listing;
pub mod requests;
pub mod server;
pub mod tally;
