//! Sealing credentials at rest: ChaCha20-Poly1305 with the service's master
//! key (32 random bytes, base64, from `--credentials-key-file` or the
//! `CREDENTIALS_KEY` environment variable). Each seal has a random nonce
//! and binds the credential's name and kind as associated data, so a sealed
//! value moved to another row does not open. The history alone reveals no
//! secret; whoever has the key and the history has them all.

use std::path::Path;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::credential::{CredentialKind, CredentialSecret};
use crate::domain::Error;

/// The environment variable that may hold the master key.
pub const KEY_ENV: &str = "CREDENTIALS_KEY";

/// The master key.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(********)")
    }
}

fn config(message: String) -> Error {
    Error::Config(message)
}

impl MasterKey {
    /// A new random key, base64 (what `credentials new-key` prints).
    pub fn generate() -> Result<String, Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| Error::internal("generate a key", e.to_string()))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    fn parse(text: &str, from: &str) -> Result<MasterKey, Error> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| {
                config(format!(
                    "{from}: the master key must be base64 (see `credentials new-key`)"
                ))
            })?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            config(format!(
                "{from}: the master key must be 32 bytes (see `credentials new-key`)"
            ))
        })?;
        Ok(MasterKey(key))
    }

    /// The key of `file`, else of `CREDENTIALS_KEY`; None when neither is set.
    pub fn load(file: Option<&Path>) -> Result<Option<MasterKey>, Error> {
        if let Some(file) = file {
            let text = std::fs::read_to_string(file).map_err(|e| {
                config(format!(
                    "--credentials-key-file (CREDENTIALS_KEY_FILE) {}: {e}",
                    file.display()
                ))
            })?;
            let from = format!("--credentials-key-file {}", file.display());
            return MasterKey::parse(&text, &from).map(Some);
        }
        match std::env::var(KEY_ENV) {
            Ok(text) if !text.is_empty() => MasterKey::parse(&text, KEY_ENV).map(Some),
            _ => Ok(None),
        }
    }

    fn aad(name: &str, kind: CredentialKind) -> Vec<u8> {
        format!("ars-credential-v1\0{name}\0{kind}").into_bytes()
    }

    /// Seals a secret for the credential `name` of `kind`: (hex nonce,
    /// base64 sealed text).
    pub fn seal(
        &self,
        name: &str,
        kind: CredentialKind,
        secret: &CredentialSecret,
    ) -> Result<(String, String), Error> {
        let plain =
            serde_json::to_vec(secret).map_err(|e| Error::internal("encode a credential", e))?;
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce)
            .map_err(|e| Error::internal("generate a nonce", e.to_string()))?;
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.0));
        let aad = Self::aad(name, kind);
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .map_err(|_| Error::internal("seal a credential", "encryption failed"))?;
        Ok((
            hex::encode(nonce),
            base64::engine::general_purpose::STANDARD.encode(sealed),
        ))
    }

    /// Opens what `seal` made; an error when the key or the row is not the
    /// one it was sealed with.
    pub fn open(
        &self,
        name: &str,
        kind: CredentialKind,
        nonce: &str,
        sealed: &str,
    ) -> Result<CredentialSecret, String> {
        let nonce = hex::decode(nonce).ok().filter(|n| n.len() == 12);
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .ok();
        let (Some(nonce), Some(sealed)) = (nonce, sealed) else {
            return Err(format!("credential {name} is damaged in the history"));
        };
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.0));
        let aad = Self::aad(name, kind);
        let plain = cipher
            .decrypt(Nonce::from_slice(&nonce), Payload { msg: &sealed, aad: &aad })
            .map_err(|_| {
                format!(
                    "credential {name} does not open with this master key (another key, or a key rotation not finished)"
                )
            })?;
        serde_json::from_slice(&plain).map_err(|_| format!("credential {name} is damaged"))
    }

    /// A keyed hash of a password: tells two credentials apart without
    /// helping anyone guess it.
    pub fn fingerprint(&self, secret: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        mac.update(b"ars-credential-fingerprint\0");
        mac.update(secret.as_bytes());
        format!("hmac:{}", hex::encode(&mac.finalize().into_bytes()[..8]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::parse(&MasterKey::generate().unwrap(), "test").unwrap()
    }

    #[test]
    fn a_seal_opens_only_with_its_key_name_and_kind() {
        let key = key();
        let secret = CredentialSecret {
            password: Some("s3cret-vault-password".into()),
            ..Default::default()
        };
        let (nonce, sealed) = key.seal("prod", CredentialKind::Vault, &secret).unwrap();
        assert!(!sealed.contains("s3cret"));
        let opened = key
            .open("prod", CredentialKind::Vault, &nonce, &sealed)
            .unwrap();
        assert_eq!(opened, secret);
        assert!(key
            .open("other", CredentialKind::Vault, &nonce, &sealed)
            .is_err());
        assert!(key
            .open("prod", CredentialKind::Become, &nonce, &sealed)
            .is_err());
        assert!(self::key()
            .open("prod", CredentialKind::Vault, &nonce, &sealed)
            .is_err());
        let (again, _) = key.seal("prod", CredentialKind::Vault, &secret).unwrap();
        assert_ne!(nonce, again, "a nonce is never reused");
    }

    #[test]
    fn a_bad_master_key_is_named() {
        assert!(MasterKey::parse("not base64!", "x").is_err());
        assert!(MasterKey::parse("AAAA", "x").is_err());
    }
}
