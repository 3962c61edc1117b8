//! Names derived from an owner: the owner label value and the Secret/Service names. Owner names come
//! from pods that the apiserver has not validated yet (mutating admission runs first) and from
//! annotations anyone may write, so any string must give a valid name: a name that is not valid as
//! is becomes a readable prefix (invalid characters replaced, cut at Kubernetes' limits) plus a
//! stable hash of the full original name.

use sha2::{Digest, Sha256};

use super::Owner;

const LABEL_VALUE_MAX: usize = 63;
const SECRET_NAME_MAX: usize = 253;
const SERVICE_NAME_MAX: usize = 63;
const SUFFIX: &str = "-sftp";
const HASH_LEN: usize = 10;

/// The first `HASH_LEN` hex digits of the SHA-256 of `input`.
fn short_hash(input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    digest.iter().take(HASH_LEN / 2).map(|b| format!("{b:02x}")).collect()
}

/// `name` with every character a name may not contain replaced (`map`), without leading characters
/// that may not start it, at most `max` characters, and ending in an ASCII letter or digit.
fn readable_prefix(name: &str, map: fn(char) -> char, may_start: fn(char) -> bool, max: usize) -> String {
    let mapped: String = name.chars().map(map).collect();
    let cut: String = mapped.trim_start_matches(|c| !may_start(c)).chars().take(max).collect();
    cut.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

/// A character of a label value (`[A-Za-z0-9._-]`), anything else becomes `-`.
fn label_value_char(c: char) -> char {
    if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' }
}

/// A character of a DNS label (`[a-z0-9-]`): ASCII letters lowered, anything else becomes `-`.
fn dns_label_char(c: char) -> char {
    if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }
}

/// `<prefix>-<hash of owner_name>-sftp`; a prefix that came out empty becomes `s`, so the name still
/// starts with a letter.
fn hashed_name(prefix: &str, owner_name: &str) -> String {
    let prefix = if prefix.is_empty() { "s" } else { prefix };
    format!("{prefix}-{}{SUFFIX}", short_hash(owner_name))
}

/// Value of the `podsftp.io/owner` label: readable name prefix plus a hash of kind and name, so
/// two owners of different kinds with the same name never share a Service.
pub fn owner_label(owner: &Owner) -> String {
    let hash = short_hash(&format!("{}/{}", owner.kind, owner.name));
    let prefix = readable_prefix(&owner.name, label_value_char, |c| c.is_ascii_alphanumeric(), LABEL_VALUE_MAX - HASH_LEN - 1);
    if prefix.is_empty() { hash } else { format!("{prefix}-{hash}") }
}

/// Secret name `<owner>-sftp` when that is a DNS subdomain (at most 253 chars), otherwise a
/// readable prefix and a stable hash of the full owner name.
pub fn secret_name(owner_name: &str) -> String {
    let plain = format!("{owner_name}{SUFFIX}");
    if is_dns1123_subdomain(&plain) {
        return plain;
    }
    let max = SECRET_NAME_MAX - HASH_LEN - 1 - SUFFIX.len();
    hashed_name(&readable_prefix(owner_name, dns_label_char, |c| c.is_ascii_alphanumeric(), max), owner_name)
}

/// Service name `<owner>-sftp` when that is a DNS-1035 label (at most 63 chars, starts with a
/// letter, no dots), otherwise a readable prefix and a stable hash of the full owner name.
pub fn service_name(owner_name: &str) -> String {
    let plain = format!("{owner_name}{SUFFIX}");
    if is_dns1035_label(&plain) {
        return plain;
    }
    // Two characters short of the limit, as from the first release, so existing names stay stable.
    let max = SERVICE_NAME_MAX - HASH_LEN - 2 - SUFFIX.len();
    hashed_name(&readable_prefix(owner_name, dns_label_char, |c| c.is_ascii_lowercase(), max), owner_name)
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, any length (Kubernetes' DNS-1123 label without its length limit).
fn is_dns1123_label_body(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Kubernetes' `IsDNS1123Subdomain`: the name rule of Secrets (and of most objects).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= SECRET_NAME_MAX && s.split('.').all(is_dns1123_label_body)
}

/// Kubernetes' `IsDNS1035Label`: the name rule of Services.
pub fn is_dns1035_label(s: &str) -> bool {
    s.len() <= SERVICE_NAME_MAX && s.starts_with(|c: char| c.is_ascii_lowercase()) && is_dns1123_label_body(s)
}

/// Kubernetes' `IsValidLabelValue`: empty, or at most 63 of `[A-Za-z0-9._-]` starting and ending
/// with a letter or digit.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= LABEL_VALUE_MAX
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars().all(|c| label_value_char(c) == c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(name: &str) -> Owner {
        Owner { api_version: "apps/v1".into(), kind: "Deployment".into(), name: name.into() }
    }

    fn assert_all_valid(name: &str) {
        let label = owner_label(&deployment(name));
        assert!(is_label_value(&label) && !label.is_empty(), "label {label:?} of {name:?}");
        let secret = secret_name(name);
        assert!(is_dns1123_subdomain(&secret), "secret {secret:?} of {name:?}");
        let service = service_name(name);
        assert!(is_dns1035_label(&service), "service {service:?} of {name:?}");
    }

    #[test]
    fn short_names_are_kept() {
        assert_eq!(secret_name("web"), "web-sftp");
        assert_eq!(secret_name("web.v2"), "web.v2-sftp");
        assert_eq!(service_name("web"), "web-sftp");
        assert!(owner_label(&deployment("web")).starts_with("web-"));
    }

    /// The names the first release gave stay the same (existing Secrets and Services keep theirs).
    #[test]
    fn names_of_valid_owners_are_stable() {
        assert_eq!(owner_label(&deployment("web")), format!("web-{}", short_hash("Deployment/web")));
        assert_eq!(short_hash("web"), "4b5e57f6eb", "sha256(\"web\") starts with 4b5e57f6eb");
        let long = "a".repeat(300);
        assert_eq!(service_name(&long), format!("{}-{}-sftp", "a".repeat(46), short_hash(&long)));
        assert_eq!(secret_name(&long), format!("{}-{}-sftp", "a".repeat(237), short_hash(&long)));
    }

    #[test]
    fn long_names_fit_limits_and_stay_distinct() {
        let a = "a".repeat(300);
        let b = format!("{}b", "a".repeat(299));
        assert_all_valid(&a);
        assert_ne!(service_name(&a), service_name(&b));
        assert_ne!(secret_name(&a), secret_name(&b));
        assert_eq!(service_name(&a), service_name(&a));
    }

    #[test]
    fn service_names_start_with_a_letter_and_have_no_dots() {
        for name in ["1st-app", "my.app", "9"] {
            let service = service_name(name);
            assert!(is_dns1035_label(&service), "{service}");
        }
    }

    /// Issue 11, item 1: a multi-byte character at the cut panicked (byte-index slicing).
    #[test]
    fn multi_byte_characters_at_every_cut_give_valid_names() {
        for len in [50, 51, 52, 53, 235, 236, 237, 238, 300] {
            for tail in ["é", "日本", "🦀", "\u{0301}"] {
                assert_all_valid(&format!("{}{tail}", "a".repeat(len)));
                assert_all_valid(&format!("{}{tail}x", "a".repeat(len)));
            }
        }
    }

    /// Issue 11, item 5: names that Kubernetes would refuse as label value or Secret name.
    #[test]
    fn invalid_characters_uppercase_and_non_ascii_give_valid_distinct_names() {
        let names = ["my app", "a:b", "a/b", "Web", "WEB", "café", "日本", "-x-", "_x_", "a..b", ".", "", " ", "\0", "a\nb"];
        for name in names {
            assert_all_valid(name);
        }
        assert_ne!(secret_name("Web"), secret_name("web"));
        assert_ne!(secret_name("Web"), secret_name("WEB"));
        assert_ne!(service_name("a:b"), service_name("a/b"));
        assert_ne!(owner_label(&deployment("a:b")), owner_label(&deployment("a/b")));
        assert!(secret_name("Web").starts_with("web-"), "readable: {}", secret_name("Web"));
    }

    #[test]
    fn owner_label_differs_by_kind() {
        let statefulset = Owner { kind: "StatefulSet".into(), ..deployment("web") };
        assert_ne!(owner_label(&deployment("web")), owner_label(&statefulset));
    }
}
