//! `kubectl sftp` (krew plugin `sftp`, binary `kubectl-sftp`): what an operator of podsftp does by
//! hand otherwise — send a customer their login, connect with the generated key and the host key
//! pinned, rotate credentials, and see which workloads have (or are missing) the sidecar.

mod cluster;
mod connect;
mod login;
mod rotate;
mod status;
mod workload;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use podsftp_webhook::error_chain;

use crate::cluster::{Cluster, ClusterError};
use crate::connect::ConnectError;
use crate::rotate::Rotation;
use crate::workload::Workload;

#[derive(Parser)]
#[command(name = "kubectl sftp", version, about = "Logins, connections and status of podsftp's SFTP sidecars")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Namespace of the workload (default: the current context's).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Print the login to send a customer: address, username, password, host key fingerprint,
    /// an sftp command line and an sftp:// URL.
    Login {
        /// deploy/NAME, sts/NAME, ds/NAME, cronjob/NAME, job/NAME, pod/NAME, or NAME alone.
        workload: Workload,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Run the local sftp with the workload's generated key and its host key pinned (no prompt).
    /// Arguments after `--` go to sftp (e.g. `-- -b batchfile`).
    Connect {
        workload: Workload,
        #[arg(last = true)]
        sftp_args: Vec<String>,
    },
    /// Put new credentials in the workload's Secret (the password unless told otherwise); the
    /// sidecars take them without a restart once the kubelet refreshes the mounted Secret.
    Rotate {
        workload: Workload,
        /// A new password.
        #[arg(long)]
        password: bool,
        /// A new client key pair (replacing the old public key in authorized_keys).
        #[arg(long)]
        key: bool,
        /// A new host key: clients that pinned the old one will refuse the server until updated.
        #[arg(long)]
        host_key: bool,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Workloads with the sidecar, their address and ready sidecars, and pods that should have
    /// the sidecar but do not.
    Status {
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(Debug, thiserror::Error)]
enum PluginError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("Secret of {0} has no generated client key (id_ed25519); use `kubectl sftp login` and a password instead")]
    NoClientKey(String),
    #[error("cannot encode JSON")]
    Json(#[from] serde_json::Error),
}

fn print(output: Output, text: impl FnOnce() -> String, value: &impl serde::Serialize) -> Result<(), PluginError> {
    match output {
        Output::Text => print!("{}", text()),
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<ExitCode, PluginError> {
    let cluster = Cluster::connect().await?;
    let namespace = cli.namespace.clone().unwrap_or_else(|| cluster.default_namespace().to_string());
    match cli.command {
        Command::Login { workload, output } => {
            let owner = cluster.owner(&namespace, &workload).await?;
            let (login, _) = cluster.login(&namespace, &owner).await?;
            print(output, || login.to_text(), &login)?;
        }
        Command::Connect { workload, sftp_args } => {
            let owner = cluster.owner(&namespace, &workload).await?;
            let (login, client_key) = cluster.login(&namespace, &owner).await?;
            let client_key = client_key.ok_or_else(|| PluginError::NoClientKey(owner.to_annotation()))?;
            let status = connect::run_sftp(&login, &client_key, &sftp_args)?;
            return Ok(status.code().and_then(|c| u8::try_from(c).ok()).map_or(ExitCode::FAILURE, ExitCode::from));
        }
        Command::Rotate { workload, password, key, host_key, output } => {
            let owner = cluster.owner(&namespace, &workload).await?;
            let rotation = Rotation { password: password || !(key || host_key), client_key: key, host_key };
            cluster.rotate(&namespace, &owner, rotation).await?;
            let (login, _) = cluster.login(&namespace, &owner).await?;
            eprintln!(
                "Rotated. The sidecars use the new values once the kubelet refreshes the mounted Secret (usually within a \
                 minute); no pod restarts.{}",
                if host_key { " Clients that pinned the old host key must replace it." } else { "" }
            );
            print(output, || login.to_text(), &login)?;
        }
        Command::Status { all_namespaces, output } => {
            let report = cluster.status((!all_namespaces).then_some(namespace.as_str())).await?;
            print(output, || report.to_text(), &report)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("kubectl sftp: {}", error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_line_is_consistent_and_passes_sftp_arguments_through() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["kubectl-sftp", "connect", "deploy/web", "-n", "shop", "--", "-b", "-"]).expect("parse");
        assert_eq!(cli.namespace.as_deref(), Some("shop"));
        assert!(matches!(cli.command, Command::Connect { ref sftp_args, .. } if sftp_args == &["-b", "-"]));
        assert!(Cli::try_parse_from(["kubectl-sftp", "login", "svc/web"]).is_err(), "a Service is not a workload");
    }

    /// The cause is printed once: by the chain, not also inside the message of the error around it.
    #[test]
    fn errors_print_each_cause_once() {
        let cause = serde_json::from_str::<u8>("x").expect_err("not JSON");
        let text = error_chain(&PluginError::Json(serde_json::from_str::<u8>("x").expect_err("not JSON")));
        assert_eq!(text, format!("cannot encode JSON: {cause}"));
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let text = error_chain(&PluginError::Connect(ConnectError::Spawn(io())));
        assert_eq!(text.matches(&io().to_string()).count(), 1, "{text}");
    }

    /// krew's conventions: plugin `sftp` is the binary `kubectl-sftp`, named so in the manifest.
    #[test]
    fn krew_manifest_names_this_binary() {
        let manifest = include_str!("../../plugins/sftp.yaml");
        assert_eq!(env!("CARGO_BIN_NAME"), "kubectl-sftp");
        assert!(manifest.contains("\nkind: Plugin\nmetadata:\n  name: sftp\n"), "{manifest}");
        assert!(manifest.contains(&format!("bin: {}\n", env!("CARGO_BIN_NAME"))));
        assert!(manifest.contains(&format!("version: v{}\n", env!("CARGO_PKG_VERSION"))));
    }
}
