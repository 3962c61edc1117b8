//! Which Secret entries a rotation replaces. Pure apart from the OS random source: the result is
//! written back as one patch, and the sidecars reload the mounted Secret without a restart.

use std::collections::BTreeMap;

use podsftp_contract::secret;
use podsftp_webhook::core::credentials::{CredentialsError, key_pair, random_password};
use ssh_key::PublicKey;

/// What to replace; at least one is set (the command line defaults to the password).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    pub password: bool,
    pub client_key: bool,
    pub host_key: bool,
}

/// The key material of an OpenSSH public key line (type and base64), without its comment, so a
/// line is recognised whatever comment it carries.
fn key_identity(line: &str) -> Option<PublicKey> {
    let mut key = PublicKey::from_openssh(line.trim()).ok()?;
    key.set_comment("");
    Some(key)
}

/// `authorized_keys` with the line of `old` (if any) replaced by `new`; every other line (keys
/// added through the pod annotation) is kept. Without `old` in it, `new` is added first.
fn replace_authorized_key(authorized_keys: &str, old: Option<&str>, new: &str) -> String {
    let old = old.and_then(key_identity);
    let mut lines: Vec<&str> = authorized_keys.lines().filter(|line| !line.trim().is_empty()).collect();
    match lines.iter().position(|line| old.is_some() && key_identity(line) == old) {
        Some(at) => lines[at] = new,
        None => lines.insert(0, new),
    }
    lines.join("\n") + "\n"
}

/// The entries of `existing` that `rotation` replaces, with their new values.
pub fn rotated_entries(existing: &BTreeMap<String, String>, rotation: Rotation) -> Result<BTreeMap<String, String>, CredentialsError> {
    let mut changed = BTreeMap::new();
    if rotation.password {
        changed.insert(secret::PASSWORD.to_string(), random_password());
    }
    if rotation.client_key {
        let username = existing.get(secret::USERNAME).map(|u| u.trim()).unwrap_or_default();
        let (private, public) = key_pair(username)?;
        let authorized = existing.get(secret::AUTHORIZED_KEYS).map(String::as_str).unwrap_or_default();
        let old_public = existing.get(secret::CLIENT_PUBLIC_KEY).map(String::as_str);
        changed.insert(secret::AUTHORIZED_KEYS.to_string(), replace_authorized_key(authorized, old_public, &public));
        changed.insert(secret::CLIENT_KEY.to_string(), private);
        changed.insert(secret::CLIENT_PUBLIC_KEY.to_string(), public);
    }
    if rotation.host_key {
        let (private, public) = key_pair("podsftp host key")?;
        changed.insert(secret::HOST_KEY.to_string(), private);
        changed.insert(secret::HOST_PUBLIC_KEY.to_string(), public);
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use podsftp_webhook::core::credentials::{LoginRequest, missing_entries};

    use super::*;

    fn generated() -> BTreeMap<String, String> {
        let extra = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIWkhewjRBASIr1HBMdf3XgZpu180qhkhH6bMrdDX90N laptop";
        missing_entries(&BTreeMap::new(), &LoginRequest { username: "web", extra_authorized_keys: Some(extra) }).expect("login")
    }

    #[test]
    fn password_only_changes_the_password() {
        let existing = generated();
        let changed = rotated_entries(&existing, Rotation { password: true, ..Default::default() }).expect("rotate");
        assert_eq!(changed.keys().collect::<Vec<_>>(), [secret::PASSWORD]);
        assert_ne!(changed[secret::PASSWORD], existing[secret::PASSWORD]);
    }

    #[test]
    fn a_new_client_key_replaces_the_old_line_and_keeps_added_keys() {
        let existing = generated();
        let changed = rotated_entries(&existing, Rotation { client_key: true, ..Default::default() }).expect("rotate");
        let authorized: Vec<&str> = changed[secret::AUTHORIZED_KEYS].lines().collect();
        assert_eq!(authorized.len(), 2, "{authorized:?}");
        assert_eq!(authorized[0], changed[secret::CLIENT_PUBLIC_KEY]);
        assert!(authorized[1].ends_with(" laptop"));
        assert!(!changed[secret::AUTHORIZED_KEYS].contains(existing[secret::CLIENT_PUBLIC_KEY].trim()));
        assert_ne!(changed[secret::CLIENT_KEY], existing[secret::CLIENT_KEY]);
        assert!(!changed.contains_key(secret::PASSWORD) && !changed.contains_key(secret::HOST_KEY));
    }

    #[test]
    fn an_old_key_with_another_comment_is_still_found() {
        let existing = generated();
        let old = existing[secret::CLIENT_PUBLIC_KEY].trim();
        let recommented = format!("{} renamed", old.rsplit_once(' ').map(|(key, _)| key).unwrap_or(old));
        assert_eq!(replace_authorized_key(&format!("\n{recommented}\nssh-ed25519 X y\n"), Some(old), "NEW"), "NEW\nssh-ed25519 X y\n");
        assert_eq!(replace_authorized_key("", Some(old), "NEW"), "NEW\n");
        assert_eq!(replace_authorized_key("garbage line\n", None, "NEW"), "NEW\ngarbage line\n");
    }

    #[test]
    fn host_key_rotation_gives_a_matching_pair() {
        let changed = rotated_entries(&generated(), Rotation { host_key: true, ..Default::default() }).expect("rotate");
        let private = ssh_key::PrivateKey::from_openssh(&changed[secret::HOST_KEY]).expect("private key");
        assert_eq!(private.public_key().to_openssh().ok().as_deref(), Some(changed[secret::HOST_PUBLIC_KEY].as_str()));
    }
}
