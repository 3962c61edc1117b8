//! The HTTPS admission endpoint (`POST /mutate`) and the plain-HTTP health and metrics endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admission::{Admitter, ClusterView, Outcome};
use crate::metrics::Metrics;
use crate::tls::CertStore;

/// Largest accepted AdmissionReview (the apiserver's own request limit is 3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

struct AdmissionState<V> {
    admitter: Admitter<V>,
    metrics: Arc<Metrics>,
}

/// The `/mutate` router.
pub fn admission_router<V: ClusterView>(admitter: Admitter<V>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/mutate", post(mutate::<V>))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Arc::new(AdmissionState { admitter, metrics }))
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, message).into_response()
}

async fn mutate<V: ClusterView>(State(state): State<Arc<AdmissionState<V>>>, body: Bytes) -> Response {
    let started = Instant::now();
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

/// Serves `router` over TLS on `listener` until the task is dropped.
pub async fn serve_tls(listener: TcpListener, certs: Arc<CertStore>, router: Router) -> std::io::Result<()> {
    let config = certs.server_config().map_err(std::io::Error::other)?;
    let acceptor = TlsAcceptor::from(config);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => return tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            if let Err(error) = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
}

/// What `/readyz` waits for.
pub struct Readiness {
    pub certs: Arc<CertStore>,
    pub caches_synced: AtomicBool,
}

impl Readiness {
    pub fn new(certs: Arc<CertStore>) -> Arc<Self> {
        Arc::new(Readiness { certs, caches_synced: AtomicBool::new(false) })
    }

    pub fn mark_synced(&self) {
        self.caches_synced.store(true, Ordering::Release);
    }
}

/// `/healthz`, `/readyz`, `/metrics` (plain HTTP).
pub fn health_router(readiness: Arc<Readiness>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || async move {
                match (readiness.certs.is_loaded(), readiness.caches_synced.load(Ordering::Acquire)) {
                    (true, true) => (StatusCode::OK, "ready\n"),
                    (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "no serving certificate loaded yet\n"),
                    (true, false) => (StatusCode::SERVICE_UNAVAILABLE, "cluster caches not synced yet\n"),
                }
            }),
        )
        .route(
            "/metrics",
            get(move || async move {
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render())
            }),
        )
}
