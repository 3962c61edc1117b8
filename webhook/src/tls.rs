//! The serving certificate: a rustls resolver whose certified key is swapped in place when the
//! certificate files change (cert-manager, kubelet Secret updates) or when auto mode renews it, so
//! new handshakes get the new certificate without a restart. TLS 1.2 and 1.3 only.

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate found in the PEM data")]
    NoCertificate,
    #[error("invalid PEM")]
    Pem(#[from] rustls::pki_types::pem::Error),
    #[error("unusable key or certificate")]
    Rustls(#[from] rustls::Error),
    #[error("reading {path}")]
    Read { path: PathBuf, source: std::io::Error },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses a PEM certificate chain and private key into a key rustls can serve.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>()?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)?;
    Ok(CertifiedKey::from_der(chain, key, &provider())?)
}

/// The certificate currently served; empty until the first one is loaded. A poisoned lock is
/// used as is (as every lock in the workspace): the release build aborts on panic, so poisoning
/// happens only in tests, and every write here replaces the whole value.
#[derive(Debug, Default)]
pub struct CertStore {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl CertStore {
    pub fn set(&self, key: CertifiedKey) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        *current = Some(Arc::new(key));
    }

    pub fn is_loaded(&self) -> bool {
        self.current.read().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    /// A rustls server configuration (TLS 1.2+, h2 and http/1.1) serving from this store.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Certificate and key files, re-read when their content changes.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    fn read(&self) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
        let read = |path: &PathBuf| std::fs::read(path).map_err(|source| TlsError::Read { path: path.clone(), source });
        Ok((read(&self.cert)?, read(&self.key)?))
    }

    /// Loads the files once (failing loudly), then polls them and swaps the served key whenever
    /// both files parse to a new, consistent pair. Polling (rather than inotify) also follows the
    /// `..data` symlink swaps of mounted Secrets.
    pub async fn load_and_watch(self, store: Arc<CertStore>, every: Duration) -> Result<(), TlsError> {
        let mut loaded = self.read()?;
        store.set(certified_key(&loaded.0, &loaded.1)?);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match self.read() {
                    Ok(files) if files != loaded => match certified_key(&files.0, &files.1) {
                        Ok(key) => {
                            store.set(key);
                            loaded = files;
                            tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                        }
                        // A half-written pair (cert updated, key not yet): try again next round.
                        Err(error) => tracing::warn!(error = %crate::error_chain(&error), "certificate files changed but do not load yet"),
                    },
                    Ok(_) => {}
                    Err(error) => tracing::warn!(error = %crate::error_chain(&error), "cannot read certificate files"),
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki;

    /// Each cause once in the reported chain: messages name only their own context.
    #[test]
    fn a_read_error_reports_its_cause_once() {
        let cause = std::io::Error::from(std::io::ErrorKind::NotFound);
        let error = TlsError::Read { path: PathBuf::from("/certs/tls.crt"), source: std::io::Error::from(std::io::ErrorKind::NotFound) };
        assert_eq!(crate::error_chain(&error), format!("reading /certs/tls.crt: {cause}"));
    }

    /// A thread that panicked while holding the lock (tests unwind; the release build aborts)
    /// leaves the certificate served and reported as loaded, not a silent "no certificate".
    #[test]
    fn a_poisoned_store_keeps_serving_its_certificate() {
        let ca = pki::new_ca("test CA", pki::CA_VALIDITY).expect("CA");
        let serving = pki::issue_serving(&ca, &["127.0.0.1".to_string()], pki::SERVING_VALIDITY).expect("serving pair");
        let store = Arc::new(CertStore::default());
        store.set(certified_key(serving.cert_pem.as_bytes(), serving.key_pem.as_bytes()).expect("key"));
        let poisoner = store.clone();
        let panicked = std::thread::spawn(move || {
            let _held = poisoner.current.write();
            panic!("poisoning the lock on purpose");
        })
        .join();
        assert!(panicked.is_err() && store.current.is_poisoned());
        assert!(store.is_loaded());
        assert!(store.current.read().unwrap_or_else(PoisonError::into_inner).is_some());
    }
}
