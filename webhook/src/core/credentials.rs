//! The login kept in the per-owner Secret: which keys are missing and what to fill them with.
//! Existing values are never replaced (a user-created Secret stays the user's).

use std::collections::BTreeMap;
use std::convert::Infallible;

use podsftp_contract::password;
pub use podsftp_contract::secret::*;
use ssh_key::rand_core::{OsRng, RngCore};
use ssh_key::{Algorithm, LineEnding, PrivateKey};

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("key generation failed")]
    Key(#[from] ssh_key::Error),
}

/// A login password from the OS RNG (the rules are the contract's).
pub fn random_password() -> String {
    password::generate(|bytes| {
        OsRng.fill_bytes(bytes);
        Ok::<_, Infallible>(())
    })
    .unwrap_or_else(|never| match never {})
}

/// A new Ed25519 key pair: (OpenSSH private key, public key line).
pub fn key_pair(comment: &str) -> Result<(String, String), CredentialsError> {
    let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)?;
    key.set_comment(comment);
    Ok((key.to_openssh(LineEnding::LF)?.to_string(), key.public_key().to_openssh()?))
}

fn public_of(private_openssh: &str) -> Option<String> {
    PrivateKey::from_openssh(private_openssh).ok()?.public_key().to_openssh().ok()
}

/// What the login of an owner is made of, from its pod template annotations.
pub struct LoginRequest<'a> {
    pub username: &'a str,
    pub extra_authorized_keys: Option<&'a str>,
}

/// The entries to add to `existing` so every key of the contract is present. A missing public key
/// is derived from an existing private key; a key pair is generated only when both halves are
/// missing (a lone public key is the user's business and is left alone).
pub fn missing_entries(
    existing: &BTreeMap<String, String>,
    login: &LoginRequest<'_>,
) -> Result<BTreeMap<String, String>, CredentialsError> {
    let mut added = BTreeMap::new();
    let has = |key: &str| existing.contains_key(key);
    if !has(USERNAME) {
        added.insert(USERNAME.to_string(), login.username.to_string());
    }
    if !has(PASSWORD) {
        added.insert(PASSWORD.to_string(), random_password());
    }
    for (private, public, comment) in [(CLIENT_KEY, CLIENT_PUBLIC_KEY, login.username), (HOST_KEY, HOST_PUBLIC_KEY, "podsftp host key")] {
        match (existing.get(private), has(public)) {
            (None, false) => {
                let (private_pem, public_line) = key_pair(comment)?;
                added.insert(private.to_string(), private_pem);
                added.insert(public.to_string(), public_line);
            }
            (Some(private_pem), false) => {
                if let Some(public_line) = public_of(private_pem) {
                    added.insert(public.to_string(), public_line);
                }
            }
            _ => {}
        }
    }
    if !has(AUTHORIZED_KEYS) {
        let client_public = existing.get(CLIENT_PUBLIC_KEY).or(added.get(CLIENT_PUBLIC_KEY));
        let lines: Vec<&str> = client_public
            .map(String::as_str)
            .into_iter()
            .chain(login.extra_authorized_keys.into_iter().flat_map(str::lines))
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect();
        added.insert(AUTHORIZED_KEYS.to_string(), lines.join("\n") + "\n");
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_login_has_every_key_and_a_strong_password() {
        let login = LoginRequest { username: "web", extra_authorized_keys: Some("ssh-ed25519 AAAAC3Nza extra@laptop\n") };
        let entries = missing_entries(&BTreeMap::new(), &login).unwrap();
        for key in [USERNAME, PASSWORD, AUTHORIZED_KEYS, CLIENT_KEY, CLIENT_PUBLIC_KEY, HOST_KEY, HOST_PUBLIC_KEY] {
            assert!(entries.contains_key(key), "{key}");
        }
        assert_eq!(entries[USERNAME], "web");
        assert!(entries[PASSWORD].len() >= 24);
        assert!(entries[CLIENT_KEY].starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        assert!(entries[HOST_PUBLIC_KEY].starts_with("ssh-ed25519 "));
        let authorized: Vec<&str> = entries[AUTHORIZED_KEYS].lines().collect();
        assert_eq!(authorized, [entries[CLIENT_PUBLIC_KEY].as_str(), "ssh-ed25519 AAAAC3Nza extra@laptop"]);
        assert_eq!(public_of(&entries[HOST_KEY]).as_deref(), Some(entries[HOST_PUBLIC_KEY].as_str()));
        assert_ne!(random_password(), random_password());
    }

    #[test]
    fn user_values_are_kept_and_only_gaps_filled() {
        let generated = missing_entries(&BTreeMap::new(), &LoginRequest { username: "x", extra_authorized_keys: None }).unwrap();
        let existing = BTreeMap::from([
            (USERNAME.to_string(), "alice".to_string()),
            (PASSWORD.to_string(), "alice's own".to_string()),
            (HOST_KEY.to_string(), generated[HOST_KEY].clone()),
        ]);
        let added = missing_entries(&existing, &LoginRequest { username: "web", extra_authorized_keys: None }).unwrap();
        assert!(!added.contains_key(USERNAME) && !added.contains_key(PASSWORD) && !added.contains_key(HOST_KEY));
        assert_eq!(added[HOST_PUBLIC_KEY], generated[HOST_PUBLIC_KEY], "public half derived from the user's key");
        assert!(added.contains_key(CLIENT_KEY) && added.contains_key(AUTHORIZED_KEYS));
    }
}
