//! Auto TLS mode: the webhook keeps its own CA and serving certificate in a Secret shared by all
//! replicas (created if missing — the first replica to create it wins, the others read the
//! winner's), renews them before they expire, and keeps the CA bundle patched into its
//! MutatingWebhookConfiguration (also after GitOps tools wipe it).
//!
//! Rotation never opens a window of failed calls: a serving pair that does not parse is reissued
//! under the same CA; a new CA first goes into the bundle next to the old one (Secret key `ca.crt`
//! holds the current CA first, then the previous one while it is valid), and a certificate signed
//! by it is served only after that bundle is published. Every replica watches the Secret and serves
//! a new pair the moment it is written.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use crate::core::keys;
use crate::error_chain;
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
    #[error("Kubernetes API")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("building the CA bundle patch")]
    Patch(#[from] serde_json::Error),
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

/// What the Secret holds, each part possibly missing or broken.
#[derive(Clone, Debug, Default)]
struct Stored {
    /// The parseable certificates of `ca.crt`: the current CA first.
    bundle: Vec<String>,
    ca_key: Option<String>,
    serving: Option<CertAndKey>,
}

impl Stored {
    fn read(secret: Option<&Secret>) -> Stored {
        let data = secret.and_then(|s| s.data.as_ref());
        let text = |key: &str| data.and_then(|d| d.get(key)).map(|ByteString(b)| String::from_utf8_lossy(b).into_owned());
        let serving = match (text(TLS_CERT), text(TLS_KEY)) {
            (Some(cert_pem), Some(key_pem)) => Some(CertAndKey { cert_pem, key_pem }),
            _ => None,
        };
        Stored { bundle: text(CA_CERT).map(|b| pki::split_bundle(&b)).unwrap_or_default(), ca_key: text(CA_KEY), serving }
    }

    fn bundle_pem(&self) -> String {
        self.bundle.concat()
    }

    /// The current CA when it is complete, its key matches and it is not about to expire.
    fn good_ca(&self) -> Option<CertAndKey> {
        let ca = CertAndKey { cert_pem: self.bundle.first()?.clone(), key_pem: self.ca_key.clone()? };
        (still_good(&ca.cert_pem) && pki::key_matches(&ca.cert_pem, &ca.key_pem)).then_some(ca)
    }

    /// The serving pair when rustls can serve it.
    fn usable_serving(&self) -> Option<&CertAndKey> {
        self.serving.as_ref().filter(|s| certified_key(s.cert_pem.as_bytes(), s.key_pem.as_bytes()).is_ok())
    }

    fn to_data(&self) -> BTreeMap<String, ByteString> {
        let mut data = BTreeMap::from([(CA_CERT.to_string(), self.bundle_pem())]);
        data.extend(self.ca_key.clone().map(|key| (CA_KEY.to_string(), key)));
        if let Some(serving) = &self.serving {
            data.insert(TLS_CERT.into(), serving.cert_pem.clone());
            data.insert(TLS_KEY.into(), serving.key_pem.clone());
        }
        data.into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect()
    }
}

fn still_good(cert_pem: &str) -> bool {
    pki::seconds_left(cert_pem).is_ok_and(|left| left > RENEW_BEFORE_SECONDS)
}

/// A new CA when the current one is missing, broken or about to expire: the Secret's contents with
/// the new CA first in the bundle, the previous CA kept behind it while it is still valid (its
/// certificates are still being served), and the serving pair left as it is.
fn with_new_ca_if_needed(stored: &Stored) -> Result<Option<Stored>, AutoTlsError> {
    if stored.good_ca().is_some() {
        return Ok(None);
    }
    let ca = pki::new_ca("podsftp-webhook CA", pki::CA_VALIDITY)?;
    let previous = stored.bundle.first().filter(|old| pki::seconds_left(old).is_ok_and(|left| left > 0));
    let bundle = std::iter::once(ca.cert_pem).chain(previous.cloned()).collect();
    Ok(Some(Stored { bundle, ca_key: Some(ca.key_pem), serving: stored.serving.clone() }))
}

/// A new serving pair when the current one does not parse, expires soon, misses a name or is not
/// signed by the current CA. One signed by the previous CA is kept for one more round right after
/// the bundle changed, so the apiserver trusts the new CA before anyone serves it.
fn new_serving_if_needed(stored: &Stored, sans: &[String], bundle_just_changed: bool) -> Result<Option<CertAndKey>, AutoTlsError> {
    let Some(ca) = stored.good_ca() else { return Err(AutoTlsError::Contended) };
    if let Some(serving) = stored.usable_serving() {
        let cert = &serving.cert_pem;
        let current = pki::signed_by(cert, &ca.cert_pem);
        if current && still_good(cert) && pki::covers(cert, sans) {
            return Ok(None);
        }
        let trusted = stored.bundle.iter().any(|ca| pki::signed_by(cert, ca));
        if !current && trusted && bundle_just_changed && pki::seconds_left(cert).is_ok_and(|left| left > 0) {
            return Ok(None);
        }
    }
    Ok(Some(pki::issue_serving(&ca, sans, pki::SERVING_VALIDITY)?))
}

impl AutoTls {
    /// Writes `stored` over the Secret as read (`existing`); `Ok(false)` when someone else wrote
    /// it meanwhile (the caller re-reads).
    async fn write(&self, existing: Option<&Secret>, stored: &Stored) -> Result<bool, AutoTlsError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
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
                    data: Some(stored.to_data()),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &secret).await.map(drop)
            }
            Some(secret) => {
                // The resourceVersion we read makes a concurrent renewal a 409.
                let patch = serde_json::json!({"metadata": {"resourceVersion": secret.resource_version()}, "data": stored.to_data()});
                api.patch(&self.secret_name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(drop)
            }
        };
        match written {
            Ok(()) => {
                tracing::info!(secret = %self.secret_name, "webhook certificate Secret written");
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// Puts `bundle_pem` into every webhook of the configuration; returns whether it changed any.
    async fn publish_bundle(&self, bundle_pem: &str) -> Result<bool, AutoTlsError> {
        let Some(name) = self.webhook_configuration.as_deref() else { return Ok(false) };
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let Some(configuration) = api.get_opt(name).await? else {
            tracing::warn!(name, "MutatingWebhookConfiguration not found; CA bundle not patched");
            return Ok(false);
        };
        let bundle = ByteString(bundle_pem.as_bytes().to_vec());
        let operations: Vec<serde_json::Value> = configuration
            .webhooks
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, webhook)| webhook.client_config.ca_bundle.as_ref() != Some(&bundle))
            .map(|(index, _)| {
                serde_json::json!({"op": "add", "path": format!("/webhooks/{index}/clientConfig/caBundle"),
                                   "value": base64::engine::general_purpose::STANDARD.encode(bundle_pem)})
            })
            .collect();
        if operations.is_empty() {
            return Ok(false);
        }
        // A test on the resourceVersion keeps the indexes valid against concurrent edits.
        let mut guarded =
            vec![serde_json::json!({"op": "test", "path": "/metadata/resourceVersion", "value": configuration.resource_version()})];
        guarded.extend(operations);
        let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(guarded))?;
        api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch)).await?;
        tracing::info!(name, "CA bundle patched into the webhook configuration");
        Ok(true)
    }

    /// One round: a good CA in the Secret, the bundle published, then a good serving pair (in that
    /// order); serves the pair.
    pub async fn check(&self) -> Result<(), AutoTlsError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut bundle_changed = false;
        for _ in 0..CONFLICT_RETRIES {
            let existing = api.get_opt(&self.secret_name).await?;
            let mut stored = Stored::read(existing.as_ref());
            if let Some(next) = with_new_ca_if_needed(&stored)? {
                tracing::info!(secret = %self.secret_name, "new webhook CA (the previous one stays in the bundle)");
                self.write(existing.as_ref(), &next).await?;
                continue;
            }
            bundle_changed |= self.publish_bundle(&stored.bundle_pem()).await?;
            if let Some(serving) = new_serving_if_needed(&stored, &self.sans, bundle_changed)? {
                stored.serving = Some(serving);
                if !self.write(existing.as_ref(), &stored).await? {
                    continue;
                }
            }
            let serving = stored.usable_serving().ok_or(AutoTlsError::Contended)?;
            self.store.set(certified_key(serving.cert_pem.as_bytes(), serving.key_pem.as_bytes())?);
            return Ok(());
        }
        Err(AutoTlsError::Contended)
    }

    /// Serves every serving pair written to the Secret from now on, whoever wrote it.
    fn watch_secret(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.secret_name));
        let store = self.store.clone();
        watcher(api, config).default_backoff().applied_objects().for_each(move |event| {
            match event {
                Ok(secret) => match Stored::read(Some(&secret)).usable_serving() {
                    Some(serving) => match certified_key(serving.cert_pem.as_bytes(), serving.key_pem.as_bytes()) {
                        Ok(key) => store.set(key),
                        Err(error) => tracing::warn!(error = %error_chain(&error), "serving pair in the Secret does not load"),
                    },
                    None => tracing::debug!("no usable serving pair in the Secret yet"),
                },
                Err(error) => tracing::warn!(error = %error_chain(&error), "certificate Secret watch error"),
            }
            std::future::ready(())
        })
    }

    /// The first round must succeed (retrying briefly); later rounds run hourly in the background,
    /// and the Secret is watched for other replicas' renewals.
    pub async fn start(self) -> Result<(), AutoTlsError> {
        let mut attempt = 0;
        loop {
            match self.check().await {
                Ok(()) => break,
                Err(error) if attempt < 10 => {
                    attempt += 1;
                    tracing::warn!(error = %error_chain(&error), attempt, "auto TLS not ready yet");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(error) => return Err(error),
            }
        }
        tokio::spawn(self.watch_secret());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(CHECK_EVERY).await;
                if let Err(error) = self.check().await {
                    tracing::warn!(error = %error_chain(&error), "auto TLS check failed");
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

    fn stored(ca: &CertAndKey, serving_days: u64) -> Stored {
        let serving = pki::issue_serving(ca, &sans(), Duration::from_secs(serving_days * 24 * 3600)).unwrap();
        Stored { bundle: vec![ca.cert_pem.clone()], ca_key: Some(ca.key_pem.clone()), serving: Some(serving) }
    }

    fn ca(days: u64) -> CertAndKey {
        pki::new_ca("test", Duration::from_secs(days * 24 * 3600)).unwrap()
    }

    #[test]
    fn missing_material_gets_a_new_ca_and_certificate() {
        let empty = Stored::default();
        let with_ca = with_new_ca_if_needed(&empty).unwrap().expect("a CA");
        assert_eq!(with_ca.bundle.len(), 1);
        let serving = new_serving_if_needed(&with_ca, &sans(), false).unwrap().expect("a certificate");
        assert!(pki::covers(&serving.cert_pem, &sans()) && pki::signed_by(&serving.cert_pem, &with_ca.bundle[0]));
    }

    #[test]
    fn good_material_is_kept() {
        let good = stored(&ca(3650), 365);
        assert!(with_new_ca_if_needed(&good).unwrap().is_none());
        assert!(new_serving_if_needed(&good, &sans(), false).unwrap().is_none());
    }

    #[test]
    fn expiring_certificate_or_new_names_renew_the_certificate_under_the_same_ca() {
        let expiring = stored(&ca(3650), 10);
        assert!(with_new_ca_if_needed(&expiring).unwrap().is_none(), "the CA bundle does not change");
        let next = new_serving_if_needed(&expiring, &sans(), false).unwrap().expect("renewed");
        assert!(pki::seconds_left(&next.cert_pem).unwrap() > 300 * 24 * 3600);
        let mut more = sans();
        more.push("127.0.0.1".into());
        let next = new_serving_if_needed(&stored(&ca(3650), 365), &more, false).unwrap().expect("reissued");
        assert!(pki::covers(&next.cert_pem, &more));
    }

    /// Issue 11, item 16: a serving pair that does not parse is reissued under the same CA.
    #[test]
    fn a_broken_serving_pair_keeps_the_ca() {
        let mut broken = stored(&ca(3650), 365);
        broken.serving.as_mut().unwrap().key_pem = "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n".into();
        assert!(with_new_ca_if_needed(&broken).unwrap().is_none(), "the CA stays");
        let next = new_serving_if_needed(&broken, &sans(), false).unwrap().expect("reissued");
        assert!(pki::signed_by(&next.cert_pem, &broken.bundle[0]));
    }

    /// Issue 11, item 16: an expiring CA is replaced with the old one kept in the bundle; its
    /// certificate is served on until the new bundle is published, then replaced.
    #[test]
    fn a_new_ca_joins_the_bundle_before_anything_signed_by_it_is_served() {
        let old_ca = ca(20);
        let old = stored(&old_ca, 15);
        let rotated = with_new_ca_if_needed(&old).unwrap().expect("new CA");
        assert_eq!(rotated.bundle.len(), 2);
        assert_eq!(rotated.bundle[1], old_ca.cert_pem, "the previous CA stays trusted");
        assert_eq!(rotated.serving, old.serving, "the served pair is not touched with the CA");
        assert!(new_serving_if_needed(&rotated, &sans(), true).unwrap().is_none(), "kept while the new bundle propagates");
        let next = new_serving_if_needed(&rotated, &sans(), false).unwrap().expect("renewed a round later");
        assert!(pki::signed_by(&next.cert_pem, &rotated.bundle[0]));
        let again = Stored { serving: Some(next), ..rotated };
        let newer = with_new_ca_if_needed(&Stored { ca_key: None, ..again }).unwrap().expect("a broken CA key");
        assert_eq!(newer.bundle.len(), 2, "only the previous CA is kept: {}", newer.bundle.len());
    }
}
