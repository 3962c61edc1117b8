//! The HTTPS admission endpoint (`POST /mutate`) and the plain-HTTP health and metrics endpoint.
//!
//! Anyone who can reach the webhook's port may connect, so every connection is bounded: the TLS
//! handshake, each request (from its headers to its answer) and each idle gap have a deadline,
//! the number of connections is capped, and request bodies buffered at once share one byte budget
//! (README "Threat model"). On shutdown, no new connection is accepted and requests in flight are
//! answered before [`serve_tls`] returns.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::admission::{Admitter, ClusterView, Outcome};
use crate::metrics::Metrics;
use crate::tls::CertStore;

/// Long enough that a persisting accept error costs nothing, short enough that serving resumes
/// promptly once descriptors are free again (the sidecar's value).
const PAUSE_AFTER_ACCEPT_ERROR: Duration = Duration::from_millis(100);
/// Largest accepted AdmissionReview (the apiserver's own request limit is 3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// Request bytes buffered at once over all connections: five largest reviews. Beyond it a request
/// is refused with 503 instead of growing the process (100 stalled 3 MB uploads took 322 MB).
pub const BODY_BUDGET_BYTES: usize = 16 * 1024 * 1024;
/// Connections served at once; further clients wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 256;
/// Deadline of the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of one request from the end of its headers to its answer (the apiserver's default
/// webhook timeout is 10 s and the chart's 5 s: a later answer is never read).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may go without a request in progress: covers idle keep-alive
/// connections, request headers that never end and HTTP/2 connections without a preface.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection told to close (idle or shutdown) may take before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

struct AdmissionState<V> {
    admitter: Admitter<V>,
    metrics: Arc<Metrics>,
    body_budget: Arc<Semaphore>,
}

/// The `/mutate` router.
pub fn admission_router<V: ClusterView>(admitter: Admitter<V>, metrics: Arc<Metrics>) -> Router {
    let body_budget = Arc::new(Semaphore::new(BODY_BUDGET_BYTES));
    Router::new().route("/mutate", post(mutate::<V>)).with_state(Arc::new(AdmissionState { admitter, metrics, body_budget }))
}

const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";
const REVIEW_KIND: &str = "AdmissionReview";

/// The type of a request body, checked before anything else is read from it.
#[derive(serde::Deserialize)]
struct TypeFields {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, message).into_response()
}

/// Why a request body was not read to its end.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("request body larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("the webhook is buffering too many request bytes at once; try again")]
    Busy,
    #[error("reading the request body")]
    Read(#[from] axum::Error),
}

impl IntoResponse for BodyError {
    fn into_response(self) -> Response {
        let status = match self {
            BodyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            BodyError::Read(_) => StatusCode::BAD_REQUEST,
        };
        (status, format!("{}\n", crate::error_chain(&self))).into_response()
    }
}

/// Reads a whole body of at most [`MAX_BODY_BYTES`]; every byte of buffer is paid for from
/// `budget` until the returned permit is dropped.
async fn read_body(body: Body, budget: &Arc<Semaphore>) -> Result<(Vec<u8>, Option<OwnedSemaphorePermit>), BodyError> {
    let mut data: Vec<u8> = Vec::new();
    let mut paid: Option<OwnedSemaphorePermit> = None;
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        let needed = data.len() + chunk.len();
        if needed > MAX_BODY_BYTES {
            return Err(BodyError::TooLarge);
        }
        if needed > data.capacity() {
            let capacity = needed.max(data.capacity().saturating_mul(2)).min(MAX_BODY_BYTES);
            // At most MAX_BODY_BYTES, which fits in u32.
            let cost = u32::try_from(capacity - data.capacity()).map_err(|_| BodyError::TooLarge)?;
            let permit = budget.clone().try_acquire_many_owned(cost).map_err(|_| BodyError::Busy)?;
            match paid.as_mut() {
                Some(paid) => paid.merge(permit),
                None => paid = Some(permit),
            }
            data.reserve_exact(capacity - data.len());
        }
        data.extend_from_slice(&chunk);
    }
    Ok((data, paid))
}

async fn mutate<V: ClusterView>(State(state): State<Arc<AdmissionState<V>>>, request: Request) -> Response {
    let started = Instant::now();
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES) {
        return BodyError::TooLarge.into_response();
    }
    let (body, _paid) = match read_body(request.into_body(), &state.body_budget).await {
        Ok(read) => read,
        Err(error) => return error.into_response(),
    };
    match serde_json::from_slice::<TypeFields>(&body) {
        Ok(types) if types.api_version.as_deref() == Some(REVIEW_API_VERSION) && types.kind.as_deref() == Some(REVIEW_KIND) => {}
        Ok(_) => return bad_request(format!("only {REVIEW_API_VERSION} {REVIEW_KIND} is answered\n")),
        Err(error) => return bad_request(format!("malformed AdmissionReview: {error}\n")),
    }
    let review: AdmissionReview<Pod> = match serde_json::from_slice(&body) {
        Ok(review) => review,
        Err(pod_error) => {
            // Not a pod review: either another kind of object or not a review at all.
            return match serde_json::from_slice::<AdmissionReview<DynamicObject>>(&body) {
                Ok(other) => match TryInto::<AdmissionRequest<DynamicObject>>::try_into(other) {
                    Ok(request) => {
                        state.metrics.admission(Outcome::Ignored.as_str(), started.elapsed().as_secs_f64());
                        let mut response = kube::core::admission::AdmissionResponse::from(&request);
                        response.warnings = Some(vec!["podsftp: only pods are handled; request allowed unchanged".into()]);
                        axum::Json(response.into_review()).into_response()
                    }
                    Err(error) => bad_request(format!("not an AdmissionReview request: {error}\n")),
                },
                Err(_) => bad_request(format!("malformed AdmissionReview: {pod_error}\n")),
            };
        }
    };
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(request) => request,
        Err(error) => return bad_request(format!("not an AdmissionReview request: {error}\n")),
    };
    let (response, outcome) = state.admitter.admit(&request).await;
    state.metrics.admission(outcome.as_str(), started.elapsed().as_secs_f64());
    axum::Json(response.into_review()).into_response()
}

/// Serves `router` over TLS on `listener` until `shutdown` completes; then accepts no new
/// connection, lets every connection finish the request it is serving, and returns when all are
/// closed (at most [`REQUEST_TIMEOUT`] + [`IDLE_TIMEOUT`] + [`CLOSE_GRACE`] later).
pub async fn serve_tls(
    listener: TcpListener,
    certs: Arc<CertStore>,
    router: Router,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let config = certs.server_config().map_err(std::io::Error::other)?;
    let acceptor = TlsAcceptor::from(config);
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (stop, stopped) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener, &connections) => accepted,
        };
        let Some((tcp, peer, slot)) = accepted else { continue };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let stopped = stopped.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => return tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            serve_connection(TokioIo::new(tls), router, stopped).await;
            tracing::trace!(%peer, "connection closed");
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!("no longer accepting connections; finishing requests in flight");
    let _ = stop.send(true);
    let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
    let _ = connections.acquire_many(all).await;
    Ok(())
}

/// Accepts one connection once a connection slot is free; `None` after a failed accept.
async fn accept(
    listener: &TcpListener,
    connections: &Arc<Semaphore>,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr, OwnedSemaphorePermit)> {
    let slot = connections.clone().acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((tcp, peer)) => Some((tcp, peer, slot)),
        Err(error) => {
            // The sidecar's accept policy (sidecar/src/listener.rs; the crates share no runtime
            // code): out of file descriptors and the like leave the connection pending, so log
            // and pause instead of spinning.
            tracing::warn!(%error, address = ?listener.local_addr().ok(), "accept failed; pausing before the next attempt");
            tokio::time::sleep(PAUSE_AFTER_ACCEPT_ERROR).await;
            None
        }
    }
}

/// Serves HTTP/1.1 or HTTP/2 on one connection: each request is answered within
/// [`REQUEST_TIMEOUT`] (else 408 and, for HTTP/1.1, the connection closes), the connection is closed
/// after [`IDLE_TIMEOUT`] without a request in progress, and shut down gracefully once `stopped`
/// (then dropped once it has been idle for [`CLOSE_GRACE`]).
async fn serve_connection<I>(io: TokioIo<I>, router: Router, mut stopped: watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (in_flight, mut progress) = watch::channel(0usize);
    let in_flight = Arc::new(in_flight);
    let service = TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let counted = InFlight::enter(&in_flight);
        let answer = hyper::service::Service::call(&service, request);
        async move {
            let answered = tokio::time::timeout(REQUEST_TIMEOUT, answer).await;
            drop(counted);
            answered.unwrap_or_else(|_| Ok((StatusCode::REQUEST_TIMEOUT, "request not completed in time\n").into_response()))
        }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut connection = pin!(builder.serve_connection(io, service));
    // Closing is graceful first (HTTP/2 GOAWAY: a client that raced a new request retries it
    // elsewhere), then, for a client that ignores it, forced after CLOSE_GRACE.
    let mut graceful = *stopped.borrow();
    if graceful {
        connection.as_mut().graceful_shutdown();
    }
    let mut closing_idle = false;
    loop {
        let idle = *progress.borrow_and_update() == 0;
        let idle_wait = if closing_idle { CLOSE_GRACE } else { IDLE_TIMEOUT };
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            changed = progress.changed() => if changed.is_err() { return },
            // Shutdown, or serve_tls itself is gone: either way, finish and close.
            _ = stopped.changed(), if !graceful => {
                graceful = true;
                connection.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep(idle_wait), if idle => {
                if closing_idle {
                    tracing::debug!("closing a connection that ignored the graceful close");
                    return;
                }
                closing_idle = true;
                if !graceful {
                    graceful = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Counts a request of a connection as in progress while it lives.
struct InFlight(Arc<watch::Sender<usize>>);

impl InFlight {
    fn enter(counter: &Arc<watch::Sender<usize>>) -> Self {
        counter.send_modify(|n| *n += 1);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// What `/readyz` waits for, and whether the process is shutting down.
pub struct Readiness {
    pub certs: Arc<CertStore>,
    pub caches_synced: AtomicBool,
    pub shutting_down: AtomicBool,
}

impl Readiness {
    pub fn new(certs: Arc<CertStore>) -> Arc<Self> {
        Arc::new(Readiness { certs, caches_synced: AtomicBool::new(false), shutting_down: AtomicBool::new(false) })
    }

    pub fn mark_synced(&self) {
        self.caches_synced.store(true, Ordering::Release);
    }

    /// From now on `/readyz` answers 503, so no new traffic is sent here.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    fn state(&self) -> (StatusCode, &'static str) {
        if self.shutting_down.load(Ordering::Acquire) {
            (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
        } else if !self.certs.is_loaded() {
            (StatusCode::SERVICE_UNAVAILABLE, "no serving certificate loaded yet\n")
        } else if !self.caches_synced.load(Ordering::Acquire) {
            (StatusCode::SERVICE_UNAVAILABLE, "cluster caches not synced yet\n")
        } else {
            (StatusCode::OK, "ready\n")
        }
    }
}

/// `/healthz`, `/readyz`, `/metrics` (plain HTTP).
pub fn health_router(readiness: Arc<Readiness>, metrics: Arc<Metrics>) -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" })).route("/readyz", get(move || async move { readiness.state() })).route(
        "/metrics",
        get(move || async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render()) }),
    )
}
