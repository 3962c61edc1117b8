//! The product contract (PRODUCT.md) as code: every name the webhook writes into a pod, a Secret or
//! a Service and the sidecar (or a user) reads back. Both crates take these from here, so renaming
//! one side without the other fails to compile or fails `sidecar_args`' test in the sidecar, not a
//! pod in someone's cluster. No dependencies: it is only names and one argument list.

/// Labels and annotations on namespaces, pods and the objects the controller manages.
pub mod keys {
    pub const NAMESPACE_INJECTION: &str = "podsftp.io/injection";
    pub const POD_OPT: &str = "sftp";
    pub const OWNER_LABEL: &str = "podsftp.io/owner";
    /// Webhook-written: `<Kind>/<name>` of the topmost owner, read back by the controller.
    pub const OWNER_REF_ANNOTATION: &str = "podsftp.io/owner";
    pub const STATUS: &str = "podsftp.io/status";
    pub const STATUS_INJECTED: &str = "injected";
    pub const CONTAINER: &str = "podsftp.io/container";
    pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
    pub const ROOT: &str = "podsftp.io/root";
    pub const READ_ONLY: &str = "podsftp.io/read-only";
    pub const USERNAME: &str = "podsftp.io/username";
    pub const AUTHORIZED_KEYS: &str = "podsftp.io/authorized-keys";
    pub const SERVICE_TYPE: &str = "podsftp.io/service-type";
    pub const SERVICE_PORT: &str = "podsftp.io/service-port";
    pub const LOAD_BALANCER_SOURCE_RANGES: &str = "podsftp.io/load-balancer-source-ranges";
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// Webhook-written on its Services: digest of the Service podsftp applies, so a cached Service
    /// shows whether it is as desired (a field podsftp no longer sets changes the digest).
    pub const APPLIED: &str = "podsftp.io/applied";
    pub const MANAGED_BY_VALUE: &str = "podsftp";
    pub const POD_SECURITY_ENFORCE: &str = "pod-security.kubernetes.io/enforce";
}

/// Keys of the per-owner Secret `<owner>-sftp`, which the sidecar reads as files of its
/// credentials volume.
pub mod secret {
    pub const USERNAME: &str = "username";
    pub const PASSWORD: &str = "password";
    pub const AUTHORIZED_KEYS: &str = "authorized_keys";
    pub const CLIENT_KEY: &str = "id_ed25519";
    pub const CLIENT_PUBLIC_KEY: &str = "id_ed25519.pub";
    pub const HOST_KEY: &str = "ssh_host_ed25519_key";
    pub const HOST_PUBLIC_KEY: &str = "ssh_host_ed25519_key.pub";
}

/// The sidecar container the webhook adds and what it finds in the pod.
pub mod sidecar {
    pub const CONTAINER_NAME: &str = "podsftp";
    pub const CREDENTIALS_VOLUME: &str = "podsftp-credentials";
    pub const CREDENTIALS_PATH: &str = "/etc/podsftp/credentials";
    /// Set in the served container: the sidecar finds that container's processes by it.
    pub const CONTAINER_ENV: &str = "PODSFTP_CONTAINER";
    /// Set in the sidecar itself, so its own processes are never taken for the served container's.
    pub const SIDECAR_ENV: &str = "PODSFTP_SIDECAR";
    pub const SFTP_PORT: u16 = 2222;
    pub const HEALTH_PORT: u16 = 2223;
    /// Prefixed, so an app port named `sftp` or `health` never collides with them.
    pub const SFTP_PORT_NAME: &str = "podsftp-sftp";
    pub const HEALTH_PORT_NAME: &str = "podsftp-health";
}

/// The annotations that annotation-based Prometheus scrapers read (the `prometheus.io/*`
/// convention of Prometheus' Kubernetes example configuration): the webhook puts them on injected
/// pods for the sidecar's `/metrics`, unless the pod has `prometheus.io/` annotations of its own.
pub mod scrape {
    /// Every annotation of the convention starts with it; a pod with any of them keeps its own.
    pub const PREFIX: &str = "prometheus.io/";
    pub const SCRAPE: &str = "prometheus.io/scrape";
    pub const PORT: &str = "prometheus.io/port";
    pub const PATH: &str = "prometheus.io/path";
    /// Where the sidecar (on [`super::sidecar::HEALTH_PORT`]) and the webhook serve their metrics.
    pub const METRICS_PATH: &str = "/metrics";
}

/// What the webhook asks the sidecar to serve; [`ServeArgs::to_args`] is its command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeArgs<'a> {
    pub container: &'a str,
    pub root: Option<&'a str>,
    pub read_only: bool,
    pub log_format: &'a str,
}

impl ServeArgs<'_> {
    /// `serve` and its flags, every value joined to its flag (`--flag=value`) so that no value,
    /// whatever a pod's annotation holds, is ever read as a flag of its own.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "serve".to_string(),
            format!("--listen=0.0.0.0:{}", sidecar::SFTP_PORT),
            format!("--health-listen=0.0.0.0:{}", sidecar::HEALTH_PORT),
            format!("--credentials={}", sidecar::CREDENTIALS_PATH),
            format!("--container={}", self.container),
        ];
        args.extend(self.root.map(|root| format!("--root={root}")));
        if self.read_only {
            args.push("--read-only".into());
        }
        args.push(format!("--log-format={}", self.log_format));
        args
    }
}

/// Generated login passwords (the webhook's Secrets, the sidecar's local try-out).
pub mod password {
    pub const LENGTH: usize = 32;
    /// No look-alike characters (0/O, 1/l/I): people read these passwords off screens.
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    /// Bytes at or above this would make the first characters likelier (modulo bias): skipped.
    const UNBIASED_LIMIT: usize = 256 - 256 % ALPHABET.len();

    /// A password of [`LENGTH`] characters drawn uniformly from the bytes `fill` writes (the
    /// caller's OS random source), by rejection sampling.
    pub fn generate<E>(mut fill: impl FnMut(&mut [u8]) -> Result<(), E>) -> Result<String, E> {
        let mut password = String::with_capacity(LENGTH);
        let mut bytes = [0u8; LENGTH];
        while password.len() < LENGTH {
            fill(&mut bytes)?;
            let usable = bytes.iter().map(|&b| usize::from(b)).filter(|&b| b < UNBIASED_LIMIT);
            password.extend(usable.map(|b| char::from(ALPHABET[b % ALPHABET.len()])).take(LENGTH - password.len()));
        }
        Ok(password)
    }

    #[cfg(test)]
    mod tests {
        use std::convert::Infallible;

        #[test]
        fn bytes_that_would_bias_are_skipped() {
            // 255 % 56 = 31 would favour the alphabet's first 32 characters; it must be skipped.
            let mut next = [255u8, 0].into_iter().cycle();
            let password = super::generate(|bytes| {
                bytes.iter_mut().for_each(|b| *b = next.next().unwrap_or(0));
                Ok::<_, Infallible>(())
            });
            assert_eq!(password, Ok("A".repeat(super::LENGTH)));
        }
    }
}
