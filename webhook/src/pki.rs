//! Certificate generation for the webhook's own TLS: a CA and serving certificates signed by it
//! (auto mode, tests, and the host-run webhook of the end-to-end tests).

use std::time::Duration;

use base64::Engine;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData,
};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed")]
    Generate(#[from] rcgen::Error),
    #[error("cannot parse certificate: {0}")]
    Parse(String),
}

/// A PEM certificate and its PEM (PKCS#8) private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
pub const SERVING_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = OffsetDateTime::now_utc();
    // Backdated a little so clocks that lag behind still accept it.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + valid_for;
}

/// A self-signed CA.
pub fn new_ca(common_name: &str, valid_for: Duration) -> Result<CertAndKey, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, valid_for);
    let cert = params.self_signed(&key)?;
    Ok(CertAndKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A serving certificate for `sans` (DNS names or IP addresses) signed by `ca`.
pub fn issue_serving(ca: &CertAndKey, sans: &[String], valid_for: Duration) -> Result<CertAndKey, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans.to_vec())?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, sans.first().map(String::as_str).unwrap_or("podsftp-webhook"));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    validity(&mut params, valid_for);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertAndKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Seconds from now until the first certificate in `cert_pem` expires (negative when expired).
pub fn seconds_left(cert_pem: &str) -> Result<i64, PkiError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|e| PkiError::Parse(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| PkiError::Parse(e.to_string()))?;
    Ok(cert.validity().not_after.timestamp() - OffsetDateTime::now_utc().unix_timestamp())
}

/// Every certificate of a PEM bundle, in order, as separate PEM texts; parts that do not parse are
/// left out.
pub fn split_bundle(bundle_pem: &str) -> Vec<String> {
    x509_parser::pem::Pem::iter_from_buffer(bundle_pem.as_bytes())
        .map_while(Result::ok)
        .filter(|pem| pem.label == "CERTIFICATE" && pem.parse_x509().is_ok())
        .map(|pem| {
            let body = base64::engine::general_purpose::STANDARD.encode(&pem.contents);
            let lines: Vec<&str> = body.as_bytes().chunks(64).filter_map(|c| std::str::from_utf8(c).ok()).collect();
            format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"))
        })
        .collect()
}

/// Whether `key_pem` is the private key of the first certificate in `cert_pem`.
pub fn key_matches(cert_pem: &str, key_pem: &str) -> bool {
    let Ok(key) = KeyPair::from_pem(key_pem) else { return false };
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) else { return false };
    let Ok(cert) = pem.parse_x509() else { return false };
    cert.public_key().raw == key.subject_public_key_info().as_slice()
}

/// Whether the first certificate in `cert_pem` carries a valid signature of the first one in `ca_pem`.
pub fn signed_by(cert_pem: &str, ca_pem: &str) -> bool {
    let parse = |text: &str| x509_parser::pem::parse_x509_pem(text.as_bytes()).ok().map(|(_, pem)| pem);
    let (Some(cert), Some(ca)) = (parse(cert_pem), parse(ca_pem)) else { return false };
    let (Ok(cert), Ok(ca)) = (cert.parse_x509(), ca.parse_x509()) else { return false };
    cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// Whether `cert_pem` names every one of `sans` (so a changed `--tls-extra-san` forces a new one).
pub fn covers(cert_pem: &str, sans: &[String]) -> bool {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) else { return false };
    let Ok(cert) = pem.parse_x509() else { return false };
    let Ok(Some(extension)) = cert.subject_alternative_name() else { return false };
    let names: Vec<String> = extension
        .value
        .general_names
        .iter()
        .map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => dns.to_string(),
            x509_parser::extensions::GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*bytes).unwrap_or_default()).to_string(),
                16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*bytes).unwrap_or_default()).to_string(),
                _ => String::new(),
            },
            other => other.to_string(),
        })
        .collect();
    sans.iter().all(|san| names.contains(san))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_certificate_is_signed_and_covers_its_names() {
        let ca = new_ca("test CA", CA_VALIDITY).unwrap();
        let sans = vec!["podsftp.podsftp.svc".to_string(), "127.0.0.1".to_string()];
        let serving = issue_serving(&ca, &sans, SERVING_VALIDITY).unwrap();
        assert!(covers(&serving.cert_pem, &sans));
        assert!(!covers(&serving.cert_pem, &["other.example".to_string()]));
        let left = seconds_left(&serving.cert_pem).unwrap();
        assert!(left > 364 * 24 * 3600 && left <= 365 * 24 * 3600, "{left}");
        crate::tls::certified_key(serving.cert_pem.as_bytes(), serving.key_pem.as_bytes()).unwrap();
        assert!(signed_by(&serving.cert_pem, &ca.cert_pem));
        assert!(key_matches(&serving.cert_pem, &serving.key_pem));
        let other = new_ca("other CA", CA_VALIDITY).unwrap();
        assert!(!signed_by(&serving.cert_pem, &other.cert_pem));
        assert!(!key_matches(&ca.cert_pem, &other.key_pem));
    }

    #[test]
    fn bundles_split_into_their_certificates() {
        let (a, b) = (new_ca("a", CA_VALIDITY).unwrap(), new_ca("b", CA_VALIDITY).unwrap());
        let bundle = format!("{}garbage\n{}", a.cert_pem, b.cert_pem);
        let parts = split_bundle(&bundle);
        assert_eq!(parts.len(), 2);
        assert!(seconds_left(&parts[1]).is_ok() && signed_by(&parts[0], &a.cert_pem));
    }
}
