//! `/healthz` (process alive), `/readyz` (credentials loaded, target reachable and not
//! shutting down, else 503 with the reason) and `/metrics` (Prometheus text, `metrics`) over a
//! minimal HTTP/1.1 responder; kubelet probes and Prometheus scrapers are the only clients.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::access::Access;
use crate::credentials::State;
use crate::metrics::Metrics;

/// How often the target is probed (a worker process opening the served root).
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Keeps `Ok(())` or the reason the server cannot serve right now, and logs changes.
pub fn readiness(credentials: watch::Receiver<State>, access: Arc<Access>, metrics: Arc<Metrics>) -> watch::Receiver<Result<(), String>> {
    let (tx, rx) = watch::channel(Err("starting".to_string()));
    tokio::spawn(async move {
        loop {
            let state = match credentials.borrow().as_ref() {
                Err(reason) => Err(reason.clone()),
                Ok(_) => Ok(()),
            };
            let state = match state {
                Ok(()) => access.probe().await.map_err(|e| format!("cannot reach {}: {e}", access.describe())),
                Err(e) => Err(e),
            };
            if *tx.borrow() != state {
                match &state {
                    Ok(()) => tracing::info!(target = %access.describe(), "ready"),
                    Err(reason) => tracing::warn!(%reason, "not ready"),
                }
            }
            metrics.set_ready(state.is_ok());
            if tx.send(state).is_err() {
                return;
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    });
    rx
}

/// Answers probes until the process exits; `stopping` turns `/readyz` to 503 during the
/// SIGTERM grace period, while running sessions finish.
pub async fn serve(
    listener: TcpListener,
    ready: watch::Receiver<Result<(), String>>,
    stopping: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    loop {
        let Some((mut socket, _)) = crate::listener::accept(&listener).await else { continue };
        let ready = ready.clone();
        let metrics = metrics.clone();
        let stopping = *stopping.borrow();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let mut len = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while len < buf.len() {
                    match socket.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => len += n,
                    }
                    // The whole head: closing with unread bytes would reset the connection, and
                    // the prober could lose the answer.
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            });
            if read.await.is_err() {
                return;
            }
            let request = String::from_utf8_lossy(&buf[..len]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let plain = "text/plain; charset=utf-8";
            let (code, content_type, body) = match path {
                "/healthz" => ("200 OK", plain, "ok\n".to_string()),
                "/readyz" if stopping => ("503 Service Unavailable", plain, "shutting down\n".to_string()),
                "/readyz" => match &*ready.borrow() {
                    Ok(()) => ("200 OK", plain, "ready\n".to_string()),
                    Err(reason) => ("503 Service Unavailable", plain, format!("{reason}\n")),
                },
                // The content type the webhook's /metrics sends too.
                "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
                _ => ("404 Not Found", plain, "not found\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {code}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        });
    }
}
