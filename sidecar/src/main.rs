//! `podsftp-sidecar serve ...` (the SSH front end) and `podsftp-sidecar worker ...` (one SFTP
//! session, probe or container search in its own process; started by the front end only).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use podsftp_sidecar::{access::Access, credentials, health, metrics::Metrics, privilege, ssh, target::Target, worker};

#[derive(Debug, Parser)]
#[command(name = "podsftp-sidecar", version, about = "SFTP server for the files of another container")]
struct Cli {
    /// Log format (inherited by worker processes).
    #[arg(long, global = true, value_enum, default_value = "text", env = "PODSFTP_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve SFTP.
    Serve(ServeArgs),
    /// Internal: one SFTP session, probe or search, started by `serve`.
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["container", "pid", "dir"])))]
struct ServeArgs {
    #[arg(long, default_value = "0.0.0.0:2222")]
    listen: SocketAddr,
    /// HTTP /healthz, /readyz and /metrics.
    #[arg(long)]
    health_listen: Option<SocketAddr>,
    /// Directory with the Secret's keys; without it a password and host key are generated.
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// Login name when credentials are generated (local use).
    #[arg(long, default_value = "sftp")]
    username: String,
    /// Serve /proc/<pid>/root of the process whose environment has PODSFTP_CONTAINER=NAME.
    #[arg(long)]
    container: Option<String>,
    /// Serve /proc/<PID>/root.
    #[arg(long)]
    pid: Option<u32>,
    /// Serve a local directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Confine users to this directory inside the served root.
    #[arg(long)]
    root: Option<OsString>,
    /// Refuse every change.
    #[arg(long)]
    read_only: bool,
    /// Let sessions enter procfs and sysfs mounts under the served root (refused by default:
    /// the app's /proc lists the sidecar's processes, and no SFTP user needs it).
    #[arg(long)]
    serve_pseudo_filesystems: bool,
    /// Seconds running sessions get to finish after SIGTERM.
    #[arg(long, default_value_t = 25)]
    grace_seconds: u64,
    /// Seconds a connection has from accept to a successful login (banner, key exchange,
    /// authentication), like OpenSSH's LoginGraceTime.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    login_grace_seconds: u64,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PODSFTP_LOG").unwrap_or_else(|_| "info,russh=warn".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().with_current_span(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    // Before anything else, so no secret is ever in a process another one could inspect; every
    // worker (same binary) gets here too, then again after taking the target's identity.
    if let Err(e) = privilege::forbid_inspection() {
        eprintln!("podsftp-sidecar: {e}");
        return ExitCode::FAILURE;
    }
    // glibc's default of one malloc arena per thread (x8 per core) inflates RSS for no gain here.
    // SAFETY: called before any other thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Worker(args) => worker::run(args),
        Command::Serve(args) => {
            // Workers inherit the log format through the environment.
            // SAFETY: single-threaded here, before the runtime starts.
            unsafe { std::env::set_var("PODSFTP_LOG_FORMAT", format!("{:?}", cli.log_format).to_lowercase()) };
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The soft descriptor limit raised to the hard one: at its limits the front end holds about
/// 2,100 descriptors (96 connections with a duplicate each, 640 workers with two pipes and a
/// pidfd each), and containers often start with a soft limit of 1,024. Returns the limit now.
fn raise_descriptor_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    match setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum }) {
        Ok(()) => limit.maximum,
        Err(_) => limit.current,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let descriptor_limit = raise_descriptor_limit();
    let target = match (args.container, args.pid, args.dir) {
        (Some(name), _, _) => Target::Container(name),
        (_, Some(pid), _) => Target::Pid(pid),
        (_, _, Some(dir)) => Target::Dir(dir),
        _ => anyhow::bail!("one of --container, --pid, --dir is required"),
    };
    let access = Access::new(target, args.root, args.read_only).context("inspecting this process")?;
    let access = Arc::new(access.serving_pseudo_filesystems(args.serve_pseudo_filesystems));
    let credentials = match args.credentials {
        Some(dir) => credentials::watch_dir(dir),
        None => {
            let generated = credentials::Credentials::generate(args.username);
            println!(
                "podsftp-sidecar: no --credentials given; generated for this run: user {} password {} host key {}",
                generated.username,
                generated.password().unwrap_or_default(),
                generated.host_key.public_key().fingerprint(Default::default())
            );
            tokio::sync::watch::channel(Ok(Arc::new(generated))).1
        }
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(listen = %args.listen, target = %access.describe(), read_only = args.read_only, descriptor_limit, version = env!("CARGO_PKG_VERSION"), "serving SFTP");
    let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
    let metrics = Arc::new(Metrics::default());
    metrics.clone().count_reloads(credentials.clone());
    if let Some(addr) = args.health_listen {
        let health = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?;
        let ready = health::readiness(credentials.clone(), access.clone(), metrics.clone());
        tokio::spawn(health::serve(health, ready, stopping_rx, metrics.clone()));
    }
    let shutdown = async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let _ = stopping.send(true);
    };
    let limits =
        ssh::Limits { login_deadline: Duration::from_secs(args.login_grace_seconds), grace: Duration::from_secs(args.grace_seconds) };
    ssh::serve(listener, credentials, access, shutdown, limits, metrics).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use podsftp_contract::ServeArgs;

    use super::{Cli, Command};

    /// The arguments the webhook writes into every pod parse with this binary's own parser, values
    /// that look like flags included: a flag renamed on one side fails here, not in a pod.
    #[test]
    fn the_webhooks_arguments_parse() {
        let served = ServeArgs { container: "app", root: Some("--read-only"), read_only: true, log_format: "json" };
        let cli = Cli::try_parse_from(std::iter::once("podsftp-sidecar".to_string()).chain(served.to_args()))
            .unwrap_or_else(|e| panic!("the webhook's arguments do not parse: {e}"));
        let Command::Serve(args) = cli.command else { panic!("not `serve`") };
        assert_eq!(args.container.as_deref(), Some("app"));
        assert_eq!(args.root.as_deref(), Some(std::ffi::OsStr::new("--read-only")));
        assert!(args.read_only);
        assert_eq!(args.listen.port(), podsftp_contract::sidecar::SFTP_PORT);
        assert_eq!(args.health_listen.map(|a| a.port()), Some(podsftp_contract::sidecar::HEALTH_PORT));
        assert_eq!(args.credentials.as_deref(), Some(std::path::Path::new(podsftp_contract::sidecar::CREDENTIALS_PATH)));
    }
}
