//! Accepting TCP connections, with one error policy for every listener of the sidecar (SSH and
//! health probes): an accept error — out of file descriptors, most often — is logged and followed
//! by a pause, because the pending connection stays pending and an immediate retry would spin.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// Long enough that a persisting error costs nothing, short enough that serving resumes promptly
/// once descriptors are free again.
const PAUSE_AFTER_ERROR: Duration = Duration::from_millis(100);

/// The next connection, or `None` after an error and the pause (the caller loops).
pub async fn accept(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok(accepted) => Some(accepted),
        Err(error) => {
            tracing::warn!(%error, address = ?listener.local_addr().ok(), "accept failed; pausing before the next attempt");
            tokio::time::sleep(PAUSE_AFTER_ERROR).await;
            None
        }
    }
}
