//! The admission server over a real TLS handshake: answers, error handling, and certificate
//! rotation without restart.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use podsftp_webhook::admission::{Admitter, ClusterView};
use podsftp_webhook::core::settings::Settings;
use podsftp_webhook::core::{Owner, names};
use podsftp_webhook::metrics::Metrics;
use podsftp_webhook::pki::{CA_VALIDITY, CertAndKey, SERVING_VALIDITY, issue_serving, new_ca};
use podsftp_webhook::server::{Readiness, admission_router, health_router, serve_tls};
use podsftp_webhook::tls::{CertFiles, CertStore};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

/// Namespace `shop` is labelled for injection; every owner resolves to Deployment `web`.
struct FixedCluster;

impl ClusterView for FixedCluster {
    type Error = std::io::Error;

    async fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        match namespace {
            "shop" => BTreeMap::from([("podsftp.io/injection".into(), "enabled".into())]),
            _ => BTreeMap::new(),
        }
    }

    async fn topmost_owner(&self, _namespace: &str, _controller: &OwnerReference) -> Result<Owner, std::io::Error> {
        Ok(Owner { api_version: "apps/v1".into(), kind: "Deployment".into(), name: "web".into() })
    }
}

struct Server {
    addr: SocketAddr,
    ca: CertAndKey,
    dir: tempfile::TempDir,
    /// Sending (or dropping) it starts the graceful shutdown.
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    metrics: Arc<Metrics>,
}

fn sans() -> Vec<String> {
    vec!["127.0.0.1".to_string(), "localhost".to_string()]
}

async fn start() -> Server {
    let ca = new_ca("https test CA", CA_VALIDITY).unwrap();
    let serving = issue_serving(&ca, &sans(), SERVING_VALIDITY).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), &serving.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &serving.key_pem).unwrap();
    let certs = Arc::new(CertStore::default());
    let files = CertFiles { cert: dir.path().join("tls.crt"), key: dir.path().join("tls.key") };
    files.load_and_watch(certs.clone(), Duration::from_millis(100)).await.unwrap();
    let admitter = Admitter { settings: Arc::new(Settings::example()), cluster: Arc::new(FixedCluster) };
    let metrics = Arc::new(Metrics::default());
    let router = admission_router(admitter, metrics.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(serve_tls(listener, certs, router, async move {
        let _ = stopped.await;
    }));
    Server { addr, ca, dir, stop, served, metrics }
}

/// A TLS connection that trusts only `ca`, offering the ALPN protocols `alpn`.
async fn connect(addr: SocketAddr, ca: &CertAndKey, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await.expect("TLS handshake")
}

struct Answer {
    status: u16,
    body: Vec<u8>,
    server_cert: CertificateDer<'static>,
}

/// One HTTPS POST on a fresh connection that trusts only `ca`.
async fn post(addr: SocketAddr, ca: &CertAndKey, body: Vec<u8>) -> Answer {
    let tls = connect(addr, ca, &[]).await;
    let server_cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::post("/mutate").header("content-type", "application/json").body(Full::new(Bytes::from(body))).unwrap();
    match sender.send_request(request).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
            Answer { status, body, server_cert }
        }
        // The server may answer 413 and close before reading the whole upload.
        Err(error) => panic!("request failed: {error}"),
    }
}

fn review(namespace: &str, kind: Value, object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "7f0b2d4e-0000-4000-8000-000000000001",
            "kind": kind,
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": kind, "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "", "namespace": namespace, "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object, "oldObject": null, "dryRun": false, "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    }))
    .unwrap()
}

fn pod_kind() -> Value {
    json!({"group": "", "version": "v1", "kind": "Pod"})
}

fn web_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-5d8f-", "namespace": "shop", "labels": {"app": "web"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f", "uid": "u", "controller": true}]},
        "spec": {"containers": [{"name": "app", "image": "nginx"}]}
    })
}

fn response_of(answer: &Answer) -> Value {
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    let review: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(review["kind"], "AdmissionReview");
    review["response"].clone()
}

/// Applies the JSON patch of an allowed `response` to `pod`.
fn patched(response: &Value, mut pod: Value) -> Pod {
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    // kube serializes the patch bytes as a JSON array of numbers, which the apiserver (Go) accepts
    // like a base64 string; accept both here.
    let patch_bytes: Vec<u8> = match &response["patch"] {
        Value::String(text) => base64::engine::general_purpose::STANDARD.decode(text).unwrap(),
        other => serde_json::from_value(other.clone()).expect("patch bytes"),
    };
    let patch: json_patch::Patch = serde_json::from_slice(&patch_bytes).unwrap();
    json_patch::patch(&mut pod, &patch).unwrap();
    serde_json::from_value(pod).unwrap()
}

#[tokio::test]
async fn good_review_is_answered_with_a_patch_that_applies() {
    let server = start().await;
    let answer = post(server.addr, &server.ca, review("shop", pod_kind(), web_pod())).await;
    let response = response_of(&answer);
    assert_eq!(response["uid"], "7f0b2d4e-0000-4000-8000-000000000001");
    assert_eq!(response["allowed"], true);
    let pod = patched(&response, web_pod());
    let spec = pod.spec.unwrap();
    assert_eq!(spec.init_containers.unwrap()[0].name, "podsftp");
    assert_eq!(spec.volumes.unwrap()[0].secret.as_ref().unwrap().secret_name.as_deref(), Some("web-sftp"));

    // An unlabelled namespace: allowed, no patch.
    let answer = post(server.addr, &server.ca, review("other", pod_kind(), web_pod())).await;
    let response = response_of(&answer);
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none());
}

#[tokio::test]
async fn malformed_json_is_a_clear_400_and_the_server_keeps_serving() {
    let server = start().await;
    let answer = post(server.addr, &server.ca, b"{\"apiVersion\": \"admission.k8s.io/v1\", \"kind\": ".to_vec()).await;
    assert_eq!(answer.status, 400);
    assert!(String::from_utf8_lossy(&answer.body).contains("malformed AdmissionReview"));
    let answer = post(server.addr, &server.ca, review("shop", pod_kind(), web_pod())).await;
    assert_eq!(response_of(&answer)["patchType"], "JSONPatch");
}

#[tokio::test]
async fn other_kinds_are_allowed_unchanged_and_non_reviews_rejected() {
    let server = start().await;
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                            "spec": {"selector": {}, "template": {}}});
    let kind = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let answer = post(server.addr, &server.ca, review("shop", kind, deployment)).await;
    let response = response_of(&answer);
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none());
    assert!(response["warnings"][0].as_str().unwrap().contains("only pods"));

    let not_a_review = serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}})).unwrap();
    let answer = post(server.addr, &server.ca, not_a_review).await;
    assert_eq!(answer.status, 400);
}

#[tokio::test]
async fn ten_mib_body_is_refused_with_413() {
    let server = start().await;
    let mut body = review("shop", pod_kind(), web_pod());
    let padding = format!(",\"padding\":\"{}\"}}", "x".repeat(10 * 1024 * 1024));
    body.pop();
    body.extend_from_slice(padding.as_bytes());
    assert!(body.len() > 10 * 1024 * 1024);
    let answer = post(server.addr, &server.ca, body).await;
    assert_eq!(answer.status, 413);
    let answer = post(server.addr, &server.ca, review("shop", pod_kind(), web_pod())).await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn rotated_certificate_files_are_served_without_restart() {
    let server = start().await;
    let first = post(server.addr, &server.ca, review("shop", pod_kind(), web_pod())).await.server_cert;
    let rotated = issue_serving(&server.ca, &sans(), SERVING_VALIDITY).unwrap();
    // Key first, then certificate: the watcher must not serve a mismatched pair in between.
    std::fs::write(server.dir.path().join("tls.key"), &rotated.key_pem).unwrap();
    std::fs::write(server.dir.path().join("tls.crt"), &rotated.cert_pem).unwrap();
    let expected = CertificateDer::from_pem_slice(rotated.cert_pem.as_bytes()).unwrap();
    let mut seen = first.clone();
    for _ in 0..100 {
        seen = post(server.addr, &server.ca, review("shop", pod_kind(), web_pod())).await.server_cert;
        if seen != first {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, expected, "new handshakes get the rotated certificate");
}

/// Issue 11, item 1: a pod name with a multi-byte character where a name is cut crashed the server
/// (byte-index slicing; `panic = "abort"` in release). Item 5: names that are no valid label value
/// or Secret name. Every one is injected with valid names, and the server keeps serving.
#[tokio::test]
async fn hostile_pod_names_get_valid_names_and_do_not_crash_the_server() {
    let server = start().await;
    let names = [
        format!("{}é", "a".repeat(51)),
        format!("{}é{}", "a".repeat(236), "a".repeat(20)),
        "my app:v1/x".to_string(),
        "Web-Ünïcode".to_string(),
    ];
    for name in names {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop"},
                         "spec": {"containers": [{"name": "app", "image": "nginx"}]}});
        let answer = post(server.addr, &server.ca, review("shop", pod_kind(), pod.clone())).await;
        let injected = patched(&response_of(&answer), pod);
        let label = &injected.metadata.labels.as_ref().unwrap()["podsftp.io/owner"];
        assert!(names::is_label_value(label), "owner label {label:?} of {name:?}");
        let volumes = injected.spec.unwrap().volumes.unwrap();
        let secret = volumes[0].secret.as_ref().unwrap().secret_name.clone().unwrap();
        assert!(names::is_dns1123_subdomain(&secret), "Secret name {secret:?} of {name:?}");
    }
    let answer = post(server.addr, &server.ca, review("shop", pod_kind(), web_pod())).await;
    assert_eq!(response_of(&answer)["allowed"], true);
}

/// Reads until the server closes `stream`; fails when it is still open after `within`. Returns
/// what the server sent.
async fn closed_by_server(stream: &mut TlsStream<TcpStream>, within: Duration, what: &str) -> Vec<u8> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    });
    assert!(read.await.is_ok(), "{what}: the connection is still open after {within:?}");
    received
}

/// Headers of a `/mutate` POST announcing `length` body bytes.
fn post_head(length: usize) -> Vec<u8> {
    format!("POST /mutate HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n").into_bytes()
}

/// Issue 11, item 2: clients that stall after the handshake (idle, half-sent headers, half-sent
/// body, HTTP/2 without a preface) were kept forever; each is dropped within a few seconds
/// (bounded wait, no timing assertion), and the server keeps answering.
#[tokio::test]
async fn stalled_clients_are_disconnected() {
    let server = start().await;
    let within = Duration::from_secs(30);

    let mut idle = connect(server.addr, &server.ca, &[]).await;
    let mut half_headers = connect(server.addr, &server.ca, &[]).await;
    half_headers.write_all(b"POST /mutate HTTP/1.1\r\nhost: 127.0").await.unwrap();
    let mut half_body = connect(server.addr, &server.ca, &[]).await;
    half_body.write_all(&post_head(100_000)).await.unwrap();
    half_body.write_all(&[b' '; 50_000]).await.unwrap();
    let mut no_preface = connect(server.addr, &server.ca, &[b"h2"]).await;
    assert_eq!(no_preface.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    closed_by_server(&mut idle, within, "idle connection").await;
    closed_by_server(&mut half_headers, within, "half-sent headers").await;
    let answer = closed_by_server(&mut half_body, within, "half-sent body").await;
    assert!(answer.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&answer));
    closed_by_server(&mut no_preface, within, "HTTP/2 without a preface").await;

    let answer = post(server.addr, &server.ca, review("shop", pod_kind(), web_pod())).await;
    assert_eq!(response_of(&answer)["allowed"], true);
}

/// Issue 11, item 3: on shutdown a request in flight is still answered, then the server stops
/// (SIGTERM used to drop it: with failurePolicy Ignore the pod silently missed the sidecar).
#[tokio::test]
async fn shutdown_answers_the_request_in_flight_then_stops() {
    let server = start().await;
    let body = review("shop", pod_kind(), web_pod());
    let (first, rest) = body.split_at(body.len() / 2);
    let mut in_flight = connect(server.addr, &server.ca, &[]).await;
    in_flight.write_all(&post_head(body.len())).await.unwrap();
    in_flight.write_all(first).await.unwrap();
    in_flight.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    server.stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!server.served.is_finished(), "the server waits for the request in flight");
    assert!(TcpStream::connect(server.addr).await.is_err(), "no new connection is accepted");
    in_flight.write_all(rest).await.unwrap();
    let answer = closed_by_server(&mut in_flight, Duration::from_secs(30), "connection after its answer").await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("JSONPatch"), "{answer}");
    tokio::time::timeout(Duration::from_secs(30), server.served).await.expect("server stopped").unwrap().unwrap();
}

/// `/readyz` answers 503 from the start of the shutdown, so endpoints drop the replica.
#[tokio::test]
async fn readyz_is_503_once_shutting_down() {
    let certs = Arc::new(CertStore::default());
    let serving = issue_serving(&new_ca("readyz CA", CA_VALIDITY).unwrap(), &sans(), SERVING_VALIDITY).unwrap();
    certs.set(podsftp_webhook::tls::certified_key(serving.cert_pem.as_bytes(), serving.key_pem.as_bytes()).unwrap());
    let readiness = Readiness::new(certs);
    readiness.mark_synced();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, health_router(readiness.clone(), Arc::new(Metrics::default()))).into_future());
    let readyz = || async move {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        answer
    };
    assert!(readyz().await.starts_with("HTTP/1.0 200"));
    readiness.begin_shutdown();
    let answer = readyz().await;
    assert!(answer.starts_with("HTTP/1.0 503") && answer.contains("shutting down"), "{answer}");
}

/// Every webhook metric the chart's Grafana dashboard queries is on the real `/metrics`, after
/// one admission (per-outcome series exist from their first answer); the sidecar's names are
/// checked by the sidecar's tests.
#[tokio::test]
async fn the_dashboard_queries_only_metrics_the_webhook_exposes() {
    let server = start().await;
    assert_eq!(post(server.addr, &server.ca, review("shop", pod_kind(), web_pod())).await.status, 200);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let readiness = Readiness::new(Arc::new(CertStore::default()));
    tokio::spawn(axum::serve(listener, health_router(readiness, server.metrics.clone())).into_future());
    let scraped = tokio::task::spawn_blocking(move || podsftp_test_support::http_get(addr, "/metrics")).await.unwrap();
    let (code, metrics) = scraped.expect("/metrics answers");
    assert_eq!(code, 200, "{metrics}");
    let problems = podsftp_test_support::dashboard::problems(&metrics, |name| !name.starts_with("podsftp_sidecar_"));
    assert!(problems.is_empty(), "{}\n/metrics:\n{metrics}", problems.join("\n"));
}

/// Issue 11, item 11: a review of another version or kind (here `admission.k8s.io/v1beta1`) was
/// answered with a patch; only `admission.k8s.io/v1` `AdmissionReview` is.
#[tokio::test]
async fn reviews_other_than_admission_v1_are_refused() {
    let server = start().await;
    let good: Value = serde_json::from_slice(&review("shop", pod_kind(), web_pod())).unwrap();
    for (api_version, kind) in
        [("admission.k8s.io/v1beta1", "AdmissionReview"), ("admission.k8s.io/v1", "Review"), ("v1", "AdmissionReview")]
    {
        let mut other = good.clone();
        other["apiVersion"] = json!(api_version);
        other["kind"] = json!(kind);
        let answer = post(server.addr, &server.ca, serde_json::to_vec(&other).unwrap()).await;
        assert_eq!(answer.status, 400, "{api_version} {kind}: {}", String::from_utf8_lossy(&answer.body));
    }
    let mut untyped = good.clone();
    untyped.as_object_mut().unwrap().remove("apiVersion");
    assert_eq!(post(server.addr, &server.ca, serde_json::to_vec(&untyped).unwrap()).await.status, 400);
}
