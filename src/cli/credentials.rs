//! `credentials new-key|create|list|delete|rekey`: operators manage named
//! credentials in the history, sealed with the master key. Values come from
//! files (never the command line) and are never printed.

use std::path::Path;

use crate::app::open_store;
use crate::config::{CredentialStoreArgs, CredentialsCommand};
use crate::credentials::MasterKey;
use crate::domain::credential::{
    self, CredentialInfo, CredentialKind, CredentialSecret, HostKeyPolicy,
};
use crate::domain::Error;
use crate::store::{SealedCredential, Store};

fn read_secret(flag: &str, path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::invalid(flag, format!("{}: {e}", path.display())))
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").to_owned()
}

/// The public key's fingerprint of a private key file, as ssh-keygen
/// prints it; refuses a key with a passphrase.
fn ssh_fingerprint(key_file: &Path) -> Result<String, Error> {
    let public = std::process::Command::new("ssh-keygen")
        .args(["-y", "-P", "", "-f"])
        .arg(key_file)
        .output()
        .map_err(|e| Error::invalid("--ssh-key-file", format!("running ssh-keygen: {e}")))?;
    if !public.status.success() {
        return Err(Error::invalid(
            "--ssh-key-file",
            format!(
                "{} is not a private key ssh can read without a passphrase (give a key's passphrase with --passphrase-file)",
                key_file.display()
            ),
        ));
    }
    let mut keygen = std::process::Command::new("ssh-keygen")
        .args(["-l", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::invalid("--ssh-key-file", format!("running ssh-keygen: {e}")))?;
    use std::io::Write;
    keygen
        .stdin
        .take()
        .expect("stdin")
        .write_all(&public.stdout)
        .map_err(|e| Error::invalid("--ssh-key-file", e.to_string()))?;
    let listed = keygen
        .wait_with_output()
        .map_err(|e| Error::invalid("--ssh-key-file", e.to_string()))?;
    let text = String::from_utf8_lossy(&listed.stdout);
    text.split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .ok_or_else(|| Error::invalid("--ssh-key-file", "ssh-keygen printed no fingerprint"))
}

/// A key in OpenSSH's format opened with its passphrase: the key without
/// it, and its fingerprint. The key is then kept sealed with the master key,
/// which protects it at rest as the passphrase did, so that workers need
/// nothing else to use it (README: "Credentials").
fn open_with_passphrase(
    key_file: &Path,
    text: &str,
    passphrase: &str,
) -> Result<(String, String), Error> {
    let key = ssh_key::PrivateKey::from_openssh(text).map_err(|e| {
        Error::invalid(
            "--ssh-key-file",
            format!(
                "{} is not a private key in OpenSSH's format ({e}); `ssh-keygen -p -f FILE` rewrites a key in it",
                key_file.display()
            ),
        )
    })?;
    if !key.is_encrypted() {
        return Err(Error::invalid(
            "--passphrase-file",
            format!("{} has no passphrase", key_file.display()),
        ));
    }
    let open = key
        .decrypt(passphrase)
        .map_err(|_| Error::invalid("--passphrase-file", "the passphrase does not open the key"))?;
    let text = open
        .to_openssh(ssh_key::LineEnding::LF)
        .map_err(|e| Error::invalid("--ssh-key-file", e.to_string()))?;
    let fingerprint = open
        .public_key()
        .fingerprint(ssh_key::HashAlg::Sha256)
        .to_string();
    Ok((text.to_string(), fingerprint))
}

async fn store_and_key(at: &CredentialStoreArgs) -> Result<(Store, MasterKey), Error> {
    let key = MasterKey::load(at.credentials_key_file.as_deref())?.ok_or_else(|| {
        Error::Config(
            "no master key: give --credentials-key-file (CREDENTIALS_KEY_FILE) or CREDENTIALS_KEY; `credentials new-key` makes one".into(),
        )
    })?;
    let store = open_store(&at.store.database_url, at.store.connect_timeout()).await?;
    Ok((store, key))
}

pub async fn run(command: CredentialsCommand) -> Result<(), Error> {
    match command {
        CredentialsCommand::NewKey => {
            println!("{}", MasterKey::generate()?);
            Ok(())
        }
        CredentialsCommand::Create {
            name,
            kind,
            ssh_key_file,
            passphrase_file,
            user,
            known_hosts_file,
            accept_new_host_keys,
            password_file,
            vault_id,
            at,
        } => {
            credential::credential_name(&name).map_err(|e| Error::invalid("--name", e))?;
            let kind: CredentialKind = kind
                .parse()
                .map_err(|e: String| Error::invalid("--kind", e))?;
            let (store, key) = store_and_key(&at).await?;
            let mut secret = CredentialSecret::default();
            let fingerprint = match kind {
                CredentialKind::Ssh => {
                    let file = ssh_key_file.ok_or_else(|| {
                        Error::invalid("--ssh-key-file", "an ssh credential needs its private key")
                    })?;
                    if let Some(user) = &user {
                        credential::ssh_user(user).map_err(|e| Error::invalid("--user", e))?;
                    }
                    let text = read_secret("--ssh-key-file", &file)?;
                    let (text, fingerprint) = match passphrase_file {
                        Some(passphrase) => {
                            let passphrase =
                                first_line(&read_secret("--passphrase-file", &passphrase)?);
                            open_with_passphrase(&file, &text, &passphrase)?
                        }
                        None => {
                            let fingerprint = ssh_fingerprint(&file)?;
                            (text, fingerprint)
                        }
                    };
                    secret.ssh_key = Some(text);
                    if let Some(known) = known_hosts_file {
                        secret.known_hosts = Some(read_secret("--known-hosts-file", &known)?);
                    }
                    if accept_new_host_keys {
                        secret.host_key_policy = HostKeyPolicy::AcceptNew;
                    }
                    fingerprint
                }
                CredentialKind::Vault | CredentialKind::Become => {
                    let file = password_file.ok_or_else(|| {
                        Error::invalid(
                            "--password-file",
                            format!("a {kind} credential needs its password"),
                        )
                    })?;
                    let password = first_line(&read_secret("--password-file", &file)?);
                    if password.is_empty() {
                        return Err(Error::invalid("--password-file", "the first line is empty"));
                    }
                    if let Some(id) = &vault_id {
                        credential::vault_id(id).map_err(|e| Error::invalid("--vault-id", e))?;
                        secret.vault_id = Some(id.clone());
                    }
                    let fingerprint = key.fingerprint(&password);
                    secret.password = Some(password);
                    fingerprint
                }
            };
            let (nonce, sealed) = key.seal(&name, kind, &secret)?;
            let info = CredentialInfo {
                name: name.clone(),
                kind,
                username: user.filter(|_| kind == CredentialKind::Ssh),
                fingerprint: fingerprint.clone(),
                created_at: chrono::Utc::now(),
            };
            store
                .put_credential(&SealedCredential {
                    info,
                    nonce,
                    sealed,
                })
                .await?;
            println!("credential {name} ({kind}, {fingerprint}) stored");
            Ok(())
        }
        CredentialsCommand::List { json, store } => {
            let store = open_store(&store.database_url, store.connect_timeout()).await?;
            let all = store.credentials().await?;
            if json {
                let list: Vec<serde_json::Value> = all
                    .iter()
                    .map(|c| {
                        serde_json::json!({"name": c.info.name, "kind": c.info.kind.as_str(),
                            "user": c.info.username, "fingerprint": c.info.fingerprint,
                            "created_at": c.info.created_at.to_rfc3339()})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                println!("{:<24}  {:<7}  {:<16}  FINGERPRINT", "NAME", "KIND", "USER");
                for c in &all {
                    println!(
                        "{:<24}  {:<7}  {:<16}  {}",
                        c.info.name,
                        c.info.kind.as_str(),
                        c.info.username.as_deref().unwrap_or("-"),
                        c.info.fingerprint
                    );
                }
            }
            Ok(())
        }
        CredentialsCommand::Delete { name, store } => {
            let store = open_store(&store.database_url, store.connect_timeout()).await?;
            if store.delete_credential(&name).await? {
                println!("credential {name} deleted");
                Ok(())
            } else {
                Err(Error::CredentialNotFound(name))
            }
        }
        CredentialsCommand::Rekey { new_key_file, at } => {
            let (store, old) = store_and_key(&at).await?;
            let new = MasterKey::load(Some(&new_key_file))?.expect("a key file gives a key");
            let all = store.credentials().await?;
            // Open everything first: a key that opens only some changes nothing.
            let mut opened = Vec::new();
            for c in &all {
                let secret = old
                    .open(&c.info.name, c.info.kind, &c.nonce, &c.sealed)
                    .map_err(Error::Config)?;
                opened.push((c.info.clone(), secret));
            }
            for (info, secret) in opened {
                let (nonce, sealed) = new.seal(&info.name, info.kind, &secret)?;
                let fingerprint = if info.kind == CredentialKind::Ssh {
                    info.fingerprint.clone()
                } else {
                    new.fingerprint(secret.password.as_deref().unwrap_or(""))
                };
                store
                    .put_credential(&SealedCredential {
                        info: CredentialInfo {
                            fingerprint,
                            ..info
                        },
                        nonce,
                        sealed,
                    })
                    .await?;
            }
            println!(
                "{} credentials sealed with the new key; give workers --credentials-key-file {} now",
                all.len(),
                new_key_file.display()
            );
            Ok(())
        }
    }
}
