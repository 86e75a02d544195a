//! Named credentials: what operators store (an SSH key, a vault password, a
//! become password) and jobs name, never see. Pure: the sealing is the
//! `credentials` module's, the rows the store's.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a credential is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialKind {
    /// An SSH private key, the user to log in as, and known hosts.
    Ssh,
    /// An Ansible Vault password (and its vault id).
    Vault,
    /// The password `become` (sudo, su) asks for.
    Become,
}

impl CredentialKind {
    pub const ALL: [CredentialKind; 3] = [
        CredentialKind::Ssh,
        CredentialKind::Vault,
        CredentialKind::Become,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Ssh => "ssh",
            CredentialKind::Vault => "vault",
            CredentialKind::Become => "become",
        }
    }
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CredentialKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CredentialKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown credential kind {s:?}: expected ssh, vault or become"))
    }
}

/// How ssh treats a host whose key is not known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyPolicy {
    /// Only hosts of the known hosts (the credential's, else the worker's).
    #[default]
    Strict,
    /// A host seen for the first time is trusted for the run.
    AcceptNew,
}

/// The secret parts of a credential, sealed at rest.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialSecret {
    /// ssh: the private key (OpenSSH or PEM, without passphrase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<String>,
    /// ssh: known_hosts lines for the hosts it reaches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<String>,
    #[serde(default)]
    pub host_key_policy: HostKeyPolicy,
    /// vault, become: the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// vault: the vault id (`--vault-id ID@...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_id: Option<String>,
}

impl fmt::Debug for CredentialSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CredentialSecret(********)")
    }
}

impl CredentialSecret {
    /// The values to mask in a run's output (each line of a key).
    pub fn secret_values(&self) -> Vec<String> {
        let mut values: Vec<String> = self.password.iter().cloned().collect();
        if let Some(key) = &self.ssh_key {
            values.extend(
                key.lines()
                    .map(str::trim)
                    .filter(|l| l.len() >= 16 && !l.starts_with("-----"))
                    .map(str::to_owned),
            );
        }
        values
    }
}

/// What anyone may know of a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialInfo {
    pub name: String,
    pub kind: CredentialKind,
    /// ssh: the user to log in as.
    pub username: Option<String>,
    /// The SSH key's fingerprint, or a keyed hash of the password.
    pub fingerprint: String,
    pub created_at: DateTime<Utc>,
}

/// A credential, opened for a run.
#[derive(Debug, Clone)]
pub struct Credential {
    pub info: CredentialInfo,
    pub secret: CredentialSecret,
}

pub const MAX_CREDENTIAL_NAME_BYTES: usize = 64;
/// Credentials one job may name at most.
pub const MAX_CREDENTIALS_PER_JOB: usize = 8;

/// A credential name: 1 to 64 ASCII letters, digits, `_`, `-` or `.`,
/// starting with a letter or digit.
/// (The rule of queue names.)
pub fn credential_name(name: &str) -> Result<(), String> {
    super::validate::plain_name(name, MAX_CREDENTIAL_NAME_BYTES)
}

/// The user name of an SSH credential: it reaches ssh's command line.
pub fn ssh_user(user: &str) -> Result<(), String> {
    if user.is_empty()
        || user.len() > 64
        || user.starts_with('-')
        || !user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
    {
        return Err(format!(
            "user {user:?}: letters, digits, '.', '_', '-' and '@', not starting with '-'"
        ));
    }
    Ok(())
}

/// A vault id: an identifier-like word (it reaches `--vault-id ID@file`).
pub fn vault_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!(
            "vault id {id:?}: letters, digits, '_', '-' and '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_users_and_vault_ids_are_plain() {
        for good in ["prod-ssh", "a", "team.vault_1"] {
            assert!(credential_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", ".x", "a b", "a/b", &"x".repeat(65), "a$(id)"] {
            assert!(credential_name(bad).is_err(), "{bad:?}");
        }
        assert!(ssh_user("deploy").is_ok() && ssh_user("-oProxyCommand=x").is_err());
        assert!(vault_id("prod").is_ok() && vault_id("a@b").is_err());
    }

    #[test]
    fn secrets_never_print() {
        let secret = CredentialSecret {
            password: Some("hunter2-password".into()),
            ..Default::default()
        };
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert_eq!(secret.secret_values(), vec!["hunter2-password".to_owned()]);
    }
}
