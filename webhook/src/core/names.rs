//! Names derived from an owner: the owner label value and the Secret/Service names, shortened with
//! a stable hash suffix when Kubernetes' limits require it.

use sha2::{Digest, Sha256};

use super::Owner;

const LABEL_VALUE_MAX: usize = 63;
const SECRET_NAME_MAX: usize = 253;
const SERVICE_NAME_MAX: usize = 63;
const SUFFIX: &str = "-sftp";
const HASH_LEN: usize = 10;

fn short_hash(input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect::<String>()[..HASH_LEN].to_string()
}

/// Keeps at most `max` chars of `s` and trims trailing characters a name may not end with.
fn truncate_to_alnum_end(s: &str, max: usize) -> &str {
    let cut = &s[..s.len().min(max)];
    cut.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
}

/// Value of the `podsftp.io/owner` label: readable name prefix plus a hash of kind and name, so
/// two owners of different kinds with the same name never share a Service.
pub fn owner_label(owner: &Owner) -> String {
    let hash = short_hash(&format!("{}/{}", owner.kind, owner.name));
    let prefix = truncate_to_alnum_end(&owner.name, LABEL_VALUE_MAX - HASH_LEN - 1);
    if prefix.is_empty() { hash } else { format!("{prefix}-{hash}") }
}

/// Secret name `<owner>-sftp` (a DNS subdomain, at most 253 chars).
pub fn secret_name(owner_name: &str) -> String {
    let plain = format!("{owner_name}{SUFFIX}");
    if plain.len() <= SECRET_NAME_MAX {
        return plain;
    }
    let prefix = truncate_to_alnum_end(owner_name, SECRET_NAME_MAX - HASH_LEN - 1 - SUFFIX.len());
    format!("{prefix}-{}{SUFFIX}", short_hash(owner_name))
}

fn is_dns1035_label(s: &str) -> bool {
    s.len() <= SERVICE_NAME_MAX
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Service name `<owner>-sftp` (a DNS-1035 label: at most 63 chars, starts with a letter, no dots).
/// Names that do not fit get a readable prefix and a stable hash of the full owner name.
pub fn service_name(owner_name: &str) -> String {
    let plain = format!("{owner_name}{SUFFIX}");
    if is_dns1035_label(&plain) {
        return plain;
    }
    let cleaned: String = owner_name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect();
    let cleaned = cleaned.trim_start_matches(|c: char| !c.is_ascii_lowercase());
    let prefix = truncate_to_alnum_end(cleaned, SERVICE_NAME_MAX - HASH_LEN - 2 - SUFFIX.len());
    let hash = short_hash(owner_name);
    if prefix.is_empty() { format!("s-{hash}{SUFFIX}") } else { format!("{prefix}-{hash}{SUFFIX}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(name: &str) -> Owner {
        Owner { api_version: "apps/v1".into(), kind: "Deployment".into(), name: name.into() }
    }

    #[test]
    fn short_names_are_kept() {
        assert_eq!(secret_name("web"), "web-sftp");
        assert_eq!(service_name("web"), "web-sftp");
        assert!(owner_label(&deployment("web")).starts_with("web-"));
    }

    #[test]
    fn long_names_fit_limits_and_stay_distinct() {
        let a = "a".repeat(300);
        let b = format!("{}b", "a".repeat(299));
        assert!(secret_name(&a).len() <= 253);
        assert!(is_dns1035_label(&service_name(&a)));
        assert_ne!(service_name(&a), service_name(&b));
        assert_ne!(secret_name(&a), secret_name(&b));
        assert!(owner_label(&deployment(&a)).len() <= 63);
        assert_eq!(service_name(&a), service_name(&a));
    }

    #[test]
    fn service_names_start_with_a_letter_and_have_no_dots() {
        for name in ["1st-app", "my.app", "9"] {
            let service = service_name(name);
            assert!(is_dns1035_label(&service), "{service}");
        }
    }

    #[test]
    fn owner_label_differs_by_kind() {
        let statefulset = Owner { kind: "StatefulSet".into(), ..deployment("web") };
        assert_ne!(owner_label(&deployment("web")), owner_label(&statefulset));
    }
}
