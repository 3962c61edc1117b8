//! What the patch is configured by (from the command line, resolved once at start).

use super::selection::Excluded;

/// Whether the sidecar is an init container with `restartPolicy: Always` (Kubernetes >= 1.29) or a
/// regular container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SidecarPlacement {
    Native,
    Classic,
}

#[derive(Clone, Debug)]
pub struct Resources {
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: String,
    pub memory_limit: String,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub sidecar_image: String,
    pub sidecar_image_pull_policy: String,
    pub placement: SidecarPlacement,
    pub resources: Resources,
    pub allow_ptrace: bool,
    /// `--log-format` handed to the sidecar.
    pub sidecar_log_format: String,
    /// Namespaces never injected besides the system ones.
    pub excluded: Excluded,
}

impl Settings {
    /// Defaults of the command line; used by tests.
    pub fn example() -> Self {
        Settings {
            sidecar_image: "ghcr.io/podsftp/podsftp-sidecar:0.1.0".into(),
            sidecar_image_pull_policy: "IfNotPresent".into(),
            placement: SidecarPlacement::Native,
            resources: Resources {
                cpu_request: "10m".into(),
                memory_request: "16Mi".into(),
                cpu_limit: "1".into(),
                memory_limit: "128Mi".into(),
            },
            allow_ptrace: false,
            sidecar_log_format: "json".into(),
            excluded: Excluded { own: Some("podsftp".into()), listed: Default::default() },
        }
    }
}
