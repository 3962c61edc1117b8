//! `podsftp-webhook serve`: the admission webhook and the per-owner controller in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use podsftp_webhook::admission::Admitter;
use podsftp_webhook::core::selection::Excluded;
use podsftp_webhook::core::settings::{Resources, Settings, SidecarPlacement};
use podsftp_webhook::k8s::auto_tls::{AutoTls, service_sans};
use podsftp_webhook::k8s::cluster::KubeCluster;
use podsftp_webhook::k8s::{controller, missed};
use podsftp_webhook::metrics::Metrics;
use podsftp_webhook::server::{Readiness, admission_router, health_router, serve_tls};
use podsftp_webhook::tls::{CertFiles, CertStore};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(name = "podsftp-webhook", version, about = "podsftp admission webhook and per-owner controller")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve POST /mutate over HTTPS and run the controller.
    Serve(Box<ServeArgs>),
}

#[derive(Clone, Copy, ValueEnum)]
enum SidecarMode {
    Auto,
    Native,
    Classic,
}

#[derive(Clone, Copy, ValueEnum)]
enum ServiceType {
    #[value(name = "LoadBalancer")]
    LoadBalancer,
    #[value(name = "NodePort")]
    NodePort,
    #[value(name = "ClusterIP")]
    ClusterIp,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("tls").required(true).args(["tls_cert", "tls_secret"])))]
struct ServeArgs {
    #[arg(long, env = "PODSFTP_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    #[arg(long, env = "PODSFTP_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    metrics_listen: SocketAddr,
    /// Serving certificate (PEM), re-read when it changes.
    #[arg(long, env = "PODSFTP_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, env = "PODSFTP_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Auto mode: keep a CA and serving certificate in this Secret of --namespace.
    #[arg(long, env = "PODSFTP_TLS_SECRET", conflicts_with_all = ["tls_cert", "tls_key"])]
    tls_secret: Option<String>,
    /// Auto mode: the webhook's Service name (its cluster DNS names become SANs).
    #[arg(long, env = "PODSFTP_TLS_SERVICE")]
    tls_service: Option<String>,
    /// Auto mode: extra SAN (IP or DNS name), repeatable.
    #[arg(long = "tls-extra-san", env = "PODSFTP_TLS_EXTRA_SAN", value_delimiter = ',')]
    tls_extra_sans: Vec<String>,
    /// Auto mode: MutatingWebhookConfiguration whose webhooks get the CA bundle.
    #[arg(long, env = "PODSFTP_WEBHOOK_CONFIGURATION")]
    webhook_configuration: Option<String>,
    /// The webhook's own namespace (never injected).
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// A namespace never injected (repeatable): the chart passes the namespaces its webhook
    /// configuration leaves out, so the missed-injection check does not report their pods.
    #[arg(long = "exclude-namespace", env = "PODSFTP_EXCLUDE_NAMESPACES", value_delimiter = ',')]
    exclude_namespaces: Vec<String>,
    #[arg(long, env = "PODSFTP_SIDECAR_IMAGE", default_value = concat!("ghcr.io/podsftp/podsftp-sidecar:", env!("CARGO_PKG_VERSION")))]
    sidecar_image: String,
    #[arg(long, env = "PODSFTP_SIDECAR_IMAGE_PULL_POLICY", default_value = "IfNotPresent")]
    sidecar_image_pull_policy: String,
    #[arg(long, env = "PODSFTP_SIDECAR_MODE", value_enum, default_value = "auto")]
    sidecar_mode: SidecarMode,
    #[arg(long, env = "PODSFTP_SIDECAR_CPU_REQUEST", default_value = "10m")]
    sidecar_cpu_request: String,
    #[arg(long, env = "PODSFTP_SIDECAR_MEMORY_REQUEST", default_value = "16Mi")]
    sidecar_memory_request: String,
    #[arg(long, env = "PODSFTP_SIDECAR_CPU_LIMIT", default_value = "1")]
    sidecar_cpu_limit: String,
    #[arg(long, env = "PODSFTP_SIDECAR_MEMORY_LIMIT", default_value = "128Mi")]
    sidecar_memory_limit: String,
    #[arg(long, env = "PODSFTP_SIDECAR_ALLOW_PTRACE")]
    sidecar_allow_ptrace: bool,
    #[arg(long, env = "PODSFTP_SERVICE_TYPE", value_enum, default_value = "LoadBalancer")]
    service_type: ServiceType,
    /// Seconds an owner may have no injected pod before its Service is removed (a Recreate rollout
    /// or a restarting single-replica StatefulSet keeps its load-balancer address).
    #[arg(long, env = "PODSFTP_SERVICE_GRACE_PERIOD_SECONDS", default_value_t = 600)]
    service_grace_period_seconds: u64,
    #[arg(long, env = "PODSFTP_LOG_LEVEL", default_value = "info")]
    log_level: String,
    #[arg(long, env = "PODSFTP_LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Native sidecars (init containers with restartPolicy Always) are on by default from 1.29.
async fn placement(mode: SidecarMode, client: &kube::Client) -> anyhow::Result<SidecarPlacement> {
    Ok(match mode {
        SidecarMode::Native => SidecarPlacement::Native,
        SidecarMode::Classic => SidecarPlacement::Classic,
        SidecarMode::Auto => {
            let version = client.apiserver_version().await.context("reading the apiserver version")?;
            let minor: u32 = version.minor.trim_end_matches('+').parse().unwrap_or(0);
            let major: u32 = version.major.parse().unwrap_or(0);
            tracing::info!(version = %version.git_version, "apiserver version");
            if (major, minor) >= (1, 29) { SidecarPlacement::Native } else { SidecarPlacement::Classic }
        }
    })
}

/// A client from the kubeconfig or the in-cluster config that counts every request it sends.
async fn counted_client(metrics: Arc<Metrics>) -> anyhow::Result<kube::Client> {
    let config = kube::Config::infer().await.context("reading the Kubernetes client configuration")?;
    let count = tower::util::MapRequestLayer::new(move |request: hyper::Request<kube::client::Body>| {
        metrics.api_request(request.method().as_str(), request.uri().path_and_query().map_or("", |p| p.as_str()));
        request
    });
    Ok(kube::client::ClientBuilder::try_from(config).context("connecting to Kubernetes")?.with_layer(&count).build())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let client = counted_client(metrics.clone()).await?;
    let placement = placement(args.sidecar_mode, &client).await?;
    let service_type = match args.service_type {
        ServiceType::LoadBalancer => "LoadBalancer",
        ServiceType::NodePort => "NodePort",
        ServiceType::ClusterIp => "ClusterIP",
    };
    let settings = Arc::new(Settings {
        sidecar_image: args.sidecar_image,
        sidecar_image_pull_policy: args.sidecar_image_pull_policy,
        placement,
        resources: Resources {
            cpu_request: args.sidecar_cpu_request,
            memory_request: args.sidecar_memory_request,
            cpu_limit: args.sidecar_cpu_limit,
            memory_limit: args.sidecar_memory_limit,
        },
        allow_ptrace: args.sidecar_allow_ptrace,
        sidecar_log_format: match args.log_format {
            LogFormat::Json => "json".into(),
            LogFormat::Text => "text".into(),
        },
        excluded: Excluded { own: args.namespace.clone(), listed: args.exclude_namespaces.into_iter().collect() },
    });

    let certs = Arc::new(CertStore::default());
    match (args.tls_cert, args.tls_key, args.tls_secret) {
        (Some(cert), Some(key), None) => {
            CertFiles { cert, key }.load_and_watch(certs.clone(), Duration::from_secs(2)).await.context("loading the TLS files")?
        }
        (None, None, Some(secret_name)) => {
            let Some(namespace) = args.namespace.clone() else { bail!("--tls-secret needs --namespace (or POD_NAMESPACE)") };
            let mut sans = args.tls_service.as_deref().map(|s| service_sans(s, &namespace)).unwrap_or_default();
            sans.extend(args.tls_extra_sans);
            if sans.is_empty() {
                bail!("--tls-secret needs --tls-service or --tls-extra-san for the certificate's names");
            }
            let auto = AutoTls {
                client: client.clone(),
                namespace,
                secret_name,
                sans,
                webhook_configuration: args.webhook_configuration,
                store: certs.clone(),
            };
            auto.start().await.context("auto TLS")?;
        }
        _ => bail!("give either --tls-cert and --tls-key, or --tls-secret"),
    }

    let readiness = Readiness::new(certs.clone());
    let cluster = KubeCluster::start(client, metrics.clone());
    {
        let (cluster, readiness) = (cluster.clone(), readiness.clone());
        tokio::spawn(async move {
            cluster.ready().await;
            readiness.mark_synced();
            tracing::info!("caches synced; ready");
        });
    }
    let health = TcpListener::bind(args.metrics_listen).await.with_context(|| format!("binding {}", args.metrics_listen))?;
    let health_app = health_router(readiness.clone(), metrics.clone());
    tokio::spawn(async move { axum::serve(health, health_app).await });
    tokio::spawn(missed::run(cluster.clone(), metrics.clone(), settings.excluded.clone()));
    tokio::spawn(controller::run(controller::Context::new(
        cluster.clone(),
        metrics.clone(),
        service_type.into(),
        Duration::from_secs(args.service_grace_period_seconds),
    )));

    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, metrics = %args.metrics_listen, ?placement, "serving");
    let router = admission_router(Admitter { settings, cluster }, metrics);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: stopping after the requests in flight"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping after the requests in flight"),
        }
        readiness.begin_shutdown();
    };
    serve_tls(listener, certs, router, shutdown).await.context("serving HTTPS")?;
    tracing::info!("stopped");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Several crates link rustls; make ring the process-wide provider before any TLS use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Serve(args) => {
            init_logging(&args.log_level, args.log_format);
            serve(*args).await
        }
    }
}
