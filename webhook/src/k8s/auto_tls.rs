//! Auto TLS mode: the webhook keeps its own CA and serving certificate in a Secret shared by all
//! replicas (created if missing — the first replica to create it wins, the others read the
//! winner's), renews the serving certificate before it expires, and keeps the CA bundle patched
//! into its MutatingWebhookConfiguration (also after GitOps tools wipe it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

use crate::core::keys;
use crate::pki::{self, CertAndKey};
use crate::tls::{CertStore, certified_key};

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const TLS_CERT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";
/// Renew a certificate when less than this is left.
const RENEW_BEFORE_SECONDS: i64 = 30 * 24 * 3600;
const CHECK_EVERY: Duration = Duration::from_secs(3600);
const CONFLICT_RETRIES: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum AutoTlsError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Pki(#[from] pki::PkiError),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("the certificate Secret kept changing under us")]
    Contended,
}

pub struct AutoTls {
    pub client: Client,
    pub namespace: String,
    pub secret_name: String,
    /// DNS names and IPs of the serving certificate.
    pub sans: Vec<String>,
    pub webhook_configuration: Option<String>,
    pub store: Arc<CertStore>,
}

/// DNS SANs of a Service: NAME, NAME.NS, NAME.NS.svc, NAME.NS.svc.cluster.local.
pub fn service_sans(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

struct Material {
    ca: CertAndKey,
    serving: CertAndKey,
}

fn read(secret: &Secret) -> Option<Material> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| data.get(key).map(|ByteString(b)| String::from_utf8_lossy(b).into_owned());
    Some(Material {
        ca: CertAndKey { cert_pem: text(CA_CERT)?, key_pem: text(CA_KEY)? },
        serving: CertAndKey { cert_pem: text(TLS_CERT)?, key_pem: text(TLS_KEY)? },
    })
}

fn still_good(cert: &CertAndKey) -> bool {
    pki::seconds_left(&cert.cert_pem).is_ok_and(|left| left > RENEW_BEFORE_SECONDS)
}

fn to_data(material: &Material) -> BTreeMap<String, ByteString> {
    [
        (CA_CERT, &material.ca.cert_pem),
        (CA_KEY, &material.ca.key_pem),
        (TLS_CERT, &material.serving.cert_pem),
        (TLS_KEY, &material.serving.key_pem),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.clone().into_bytes())))
    .collect()
}

/// What the Secret should hold given what it holds now; `None` when nothing needs to change. The
/// CA is kept as long as it is good (so the CA bundle stays the same when only the serving
/// certificate is renewed or its names change).
fn renewed(current: Option<Material>, sans: &[String]) -> Result<Option<Material>, AutoTlsError> {
    let usable = current.filter(|m| certified_key(m.serving.cert_pem.as_bytes(), m.serving.key_pem.as_bytes()).is_ok());
    match usable {
        Some(m) if still_good(&m.ca) && still_good(&m.serving) && pki::covers(&m.serving.cert_pem, sans) => Ok(None),
        Some(m) if still_good(&m.ca) => {
            let serving = pki::issue_serving(&m.ca, sans, pki::SERVING_VALIDITY)?;
            Ok(Some(Material { ca: m.ca, serving }))
        }
        _ => {
            let ca = pki::new_ca("podsftp-webhook CA", pki::CA_VALIDITY)?;
            let serving = pki::issue_serving(&ca, sans, pki::SERVING_VALIDITY)?;
            Ok(Some(Material { ca, serving }))
        }
    }
}

impl AutoTls {
    /// Makes sure the Secret holds a valid CA and serving certificate; returns what it holds.
    async fn ensure_secret(&self) -> Result<Material, AutoTlsError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        for _ in 0..CONFLICT_RETRIES {
            let existing = api.get_opt(&self.secret_name).await?;
            let Some(next) = renewed(existing.as_ref().and_then(read), &self.sans)? else {
                // renewed() returns None only for complete, valid material.
                return existing.as_ref().and_then(read).ok_or(AutoTlsError::Contended);
            };
            let written = match existing {
                None => {
                    let secret = Secret {
                        metadata: ObjectMeta {
                            name: Some(self.secret_name.clone()),
                            namespace: Some(self.namespace.clone()),
                            labels: Some(BTreeMap::from([(keys::MANAGED_BY.into(), keys::MANAGED_BY_VALUE.into())])),
                            ..Default::default()
                        },
                        type_: Some("Opaque".into()),
                        data: Some(to_data(&next)),
                        ..Default::default()
                    };
                    api.create(&PostParams::default(), &secret).await
                }
                Some(mut secret) => {
                    // replace carries the resourceVersion we read: a concurrent renewal makes it 409.
                    secret.data = Some(to_data(&next));
                    api.replace(&self.secret_name, &PostParams::default(), &secret).await
                }
            };
            match written {
                Ok(_) => {
                    tracing::info!(secret = %self.secret_name, "webhook certificate written");
                    return Ok(next);
                }
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(AutoTlsError::Contended)
    }

    async fn patch_ca_bundle(&self, ca_pem: &str) -> Result<(), AutoTlsError> {
        let Some(name) = self.webhook_configuration.as_deref() else { return Ok(()) };
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let Some(configuration) = api.get_opt(name).await? else {
            tracing::warn!(name, "MutatingWebhookConfiguration not found; CA bundle not patched");
            return Ok(());
        };
        let bundle = ByteString(ca_pem.as_bytes().to_vec());
        let operations: Vec<serde_json::Value> = configuration
            .webhooks
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, webhook)| webhook.client_config.ca_bundle.as_ref() != Some(&bundle))
            .map(|(index, _)| {
                serde_json::json!({"op": "add", "path": format!("/webhooks/{index}/clientConfig/caBundle"),
                                   "value": base64::engine::general_purpose::STANDARD.encode(ca_pem)})
            })
            .collect();
        if operations.is_empty() {
            return Ok(());
        }
        // A test on the resourceVersion keeps the indexes valid against concurrent edits.
        let mut guarded = vec![serde_json::json!({"op": "test", "path": "/metadata/resourceVersion", "value": configuration.resource_version()})];
        guarded.extend(operations);
        let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(guarded)).map_err(|e| {
            AutoTlsError::Kube(kube::Error::SerdeError(e))
        })?;
        api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch)).await?;
        tracing::info!(name, "CA bundle patched into the webhook configuration");
        Ok(())
    }

    /// One round: Secret, served certificate, CA bundle.
    pub async fn check(&self) -> Result<(), AutoTlsError> {
        let material = self.ensure_secret().await?;
        self.store.set(certified_key(material.serving.cert_pem.as_bytes(), material.serving.key_pem.as_bytes())?);
        self.patch_ca_bundle(&material.ca.cert_pem).await
    }

    /// The first round must succeed (retrying briefly); later rounds run hourly in the background.
    pub async fn start(self) -> Result<(), AutoTlsError> {
        let mut attempt = 0;
        loop {
            match self.check().await {
                Ok(()) => break,
                Err(error) if attempt < 10 => {
                    attempt += 1;
                    tracing::warn!(%error, attempt, "auto TLS not ready yet");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(error) => return Err(error),
            }
        }
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(CHECK_EVERY).await;
                if let Err(error) = self.check().await {
                    tracing::warn!(%error, "auto TLS check failed");
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sans() -> Vec<String> {
        service_sans("podsftp", "podsftp")
    }

    fn material(serving_days: u64) -> Material {
        let ca = pki::new_ca("test", pki::CA_VALIDITY).unwrap();
        let serving = pki::issue_serving(&ca, &sans(), Duration::from_secs(serving_days * 24 * 3600)).unwrap();
        Material { ca, serving }
    }

    #[test]
    fn missing_material_gets_a_new_ca_and_certificate() {
        let fresh = renewed(None, &sans()).unwrap().expect("generated");
        assert!(pki::covers(&fresh.serving.cert_pem, &sans()));
        assert!(pki::seconds_left(&fresh.ca.cert_pem).unwrap() > 9 * 365 * 24 * 3600);
    }

    #[test]
    fn good_material_is_kept() {
        assert!(renewed(Some(material(365)), &sans()).unwrap().is_none());
    }

    #[test]
    fn expiring_certificate_or_new_names_renew_the_certificate_under_the_same_ca() {
        let expiring = material(10);
        let ca = expiring.ca.clone();
        let next = renewed(Some(expiring), &sans()).unwrap().expect("renewed");
        assert_eq!(next.ca, ca, "the CA bundle does not change");
        assert!(pki::seconds_left(&next.serving.cert_pem).unwrap() > 300 * 24 * 3600);

        let mut more = sans();
        more.push("127.0.0.1".into());
        let next = renewed(Some(material(365)), &more).unwrap().expect("reissued");
        assert!(pki::covers(&next.serving.cert_pem, &more));
    }
}
