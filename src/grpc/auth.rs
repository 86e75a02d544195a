//! Who is calling. With a keys file, every JobService call must name a client
//! of that file: by `authorization: Bearer <key>` (the key's SHA-256 is
//! compared in constant time with every hash of the file), or, under mutual
//! TLS, by its client certificate (its subject CN or a SAN equal to a
//! `certificate` client's name). The client's scopes go with the request.
//! Without a keys file the service is open; a client certificate still names
//! the caller. grpc.health.v1 and reflection stay open.
//!
//! The file holds one client per line (`#` starts a comment):
//! `<client name> <sha256 hex of its key | certificate> [scope words]`, with
//! the scope words of [`Scopes::parse`]. It is re-read when it changes (and
//! on SIGHUP); a file that no longer parses leaves the last good keys in force.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};

use crate::domain::{Caller, Error, Scopes};

/// How often the keys file is checked for changes.
pub const KEYS_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// The second field of a keys-file line for a client that authenticates with
/// a TLS client certificate instead of a key.
const CERTIFICATE: &str = "certificate";

/// How a client proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// The SHA-256 of its bearer key.
    KeyHash([u8; 32]),
    /// A client certificate naming it (CN or SAN), signed by the client CA.
    Certificate,
}

/// One client of the keys file.
#[derive(Debug, Clone)]
pub struct Client {
    pub name: String,
    pub credential: Credential,
    pub scopes: Arc<Scopes>,
}

impl Client {
    /// The client as a keys-file line.
    pub fn line(&self) -> String {
        let credential = match &self.credential {
            Credential::KeyHash(hash) => hex::encode(hash),
            Credential::Certificate => CERTIFICATE.to_owned(),
        };
        let mut words = vec![self.name.clone(), credential];
        words.extend(self.scopes.words());
        words.join(" ")
    }
}

/// The clients of a keys file.
#[derive(Debug, Clone)]
pub struct ApiKeys {
    clients: Vec<Client>,
}

impl ApiKeys {
    pub fn load(path: &Path) -> Result<ApiKeys, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!(
                "--api-keys-file (API_KEYS_FILE) {}: {e}; create it with `keys create`",
                path.display()
            ))
        })?;
        ApiKeys::parse(&text).map_err(|e| {
            Error::Config(format!(
                "--api-keys-file (API_KEYS_FILE) {}: {e}",
                path.display()
            ))
        })
    }

    pub fn parse(text: &str) -> Result<ApiKeys, String> {
        let clients = parse_lines(text)?;
        if clients.is_empty() {
            return Err(
                "no keys: add `<client name> <sha256 hex>` lines (see `keys create`)".into(),
            );
        }
        Ok(ApiKeys { clients })
    }

    pub fn clients(&self) -> &[Client] {
        &self.clients
    }

    /// The client whose key this is, comparing with every hash in constant
    /// time.
    fn caller_for_key(&self, key: &str) -> Option<Caller> {
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for client in &self.clients {
            if let Credential::KeyHash(expected) = &client.credential {
                if bool::from(hash.ct_eq(expected)) {
                    found = Some(client);
                }
            }
        }
        found.map(|c| Caller::named(&c.name, c.scopes.clone()))
    }

    /// The `certificate` client a certificate's names name; None when they
    /// name none, or more than one (which client it is would be a guess).
    fn caller_for_certificate(&self, names: &[String]) -> Option<Caller> {
        let mut matching = self
            .clients
            .iter()
            .filter(|c| c.credential == Credential::Certificate && names.contains(&c.name));
        let client = matching.next()?;
        if matching.next().is_some() {
            tracing::warn!(names = ?names, "a client certificate names several clients; refused");
            return None;
        }
        Some(Caller::named(&client.name, client.scopes.clone()))
    }
}

/// Every client line of a keys file's text, which may have none.
pub fn parse_lines(text: &str) -> Result<Vec<Client>, String> {
    let mut clients = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}", number + 1);
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(name), Some(credential)) = (fields.next(), fields.next()) else {
            return Err(at(
                "expected `<client name> <sha256 hex | certificate> [scopes]`".into(),
            ));
        };
        client_name(name).map_err(at)?;
        let credential = if credential == CERTIFICATE {
            Credential::Certificate
        } else {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(credential, &mut hash)
                .map_err(|_| at("the hash must be 64 hex digits (or `certificate`)".into()))?;
            Credential::KeyHash(hash)
        };
        let scopes = Scopes::parse(fields).map_err(at)?;
        if clients.iter().any(|c: &Client| c.name == name) {
            return Err(at(format!("client {name:?} appears twice")));
        }
        if let Credential::KeyHash(_) = credential {
            if clients.iter().any(|c| c.credential == credential) {
                return Err(at("this key's hash appears twice".into()));
            }
        }
        clients.push(Client {
            name: name.to_owned(),
            credential,
            scopes: Arc::new(scopes),
        });
    }
    Ok(clients)
}

/// A client name: 1 to 128 characters without whitespace or `#`.
pub fn client_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 128
        || name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '#')
    {
        return Err(format!(
            "client name {name:?} must be 1 to 128 characters without spaces or '#'"
        ));
    }
    Ok(())
}

/// A new random key and its client's line for the keys file.
pub fn new_key(client: &str, scopes: Scopes) -> Result<(String, Client), Error> {
    client_name(client).map_err(|e| Error::invalid("name", e))?;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::internal("generate a key", e.to_string()))?;
    let key = format!("ars_{}", URL_SAFE_NO_PAD.encode(bytes));
    let client = Client {
        name: client.to_owned(),
        credential: Credential::KeyHash(Sha256::digest(key.as_bytes()).into()),
        scopes: Arc::new(scopes),
    };
    Ok((key, client))
}

/// Modification stamp of the keys file: a change of any part means re-read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// The keys file's clients, kept current while the service runs.
#[derive(Debug)]
pub struct KeyRing {
    path: PathBuf,
    current: RwLock<Arc<ApiKeys>>,
    /// The file as it was when its keys were taken.
    seen: Mutex<Option<FileStamp>>,
    /// The file as it was (None: missing) when it last failed to read or
    /// parse, so that a failure is said once.
    failed: Mutex<Option<Option<FileStamp>>>,
}

impl KeyRing {
    /// Reads the keys file; it must parse at start.
    pub fn open(path: &Path) -> Result<KeyRing, Error> {
        let seen = stamp(path);
        let keys = ApiKeys::load(path)?;
        Ok(KeyRing {
            path: path.to_owned(),
            current: RwLock::new(Arc::new(keys)),
            seen: Mutex::new(seen),
            failed: Mutex::new(None),
        })
    }

    pub fn current(&self) -> Arc<ApiKeys> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads the file if it changed (always when `force`). A file that
    /// does not parse, or cannot be read, leaves the last good keys in force;
    /// a file that parses with no client left refuses every call (the last
    /// client was revoked).
    fn reload(&self, force: bool) {
        let before = stamp(&self.path);
        let known = *self.seen.lock().unwrap_or_else(|e| e.into_inner()) == before
            || self
                .failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                == Some(&before);
        if !force && known {
            return;
        }
        let read = std::fs::read_to_string(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|text| parse_lines(&text));
        if stamp(&self.path) != before {
            // Written while we read it: read it again at the next check.
            return;
        }
        match read {
            Ok(clients) => {
                if clients.is_empty() {
                    tracing::warn!(file = %self.path.display(), "the keys file has no client left: every call is refused");
                } else {
                    tracing::info!(file = %self.path.display(), clients = clients.len(), "API keys reloaded");
                }
                *self.current.write().unwrap_or_else(|e| e.into_inner()) =
                    Arc::new(ApiKeys { clients });
                *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = before;
            }
            Err(e) => {
                tracing::warn!(
                    file = %self.path.display(),
                    error = %e,
                    "the keys file does not parse; keeping the last good API keys"
                );
                *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(before);
            }
        }
    }

    /// Re-reads the file when it changes, and on SIGHUP, until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; the keys file is still checked every 2 s");
                None
            }
        };
        let mut tick = tokio::time::interval(KEYS_RELOAD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let hup = async {
                match &mut hangup {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            let force = tokio::select! {
                _ = tick.tick() => false,
                _ = hup => true,
                _ = shutdown.cancelled() => return,
            };
            let ring = self.clone();
            // Reading the file is blocking I/O.
            let _ = tokio::task::spawn_blocking(move || ring.reload(force)).await;
        }
    }
}

/// How callers are recognised: by keys (when a keys file is configured) and
/// by client certificates (under mutual TLS).
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub keys: Option<Arc<KeyRing>>,
}

impl Access {
    /// The caller of a request, or UNAUTHENTICATED.
    fn authenticate<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let key = header.and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        });
        let certificate_names = certificate_names(request);
        let Some(keys) = &self.keys else {
            // An open service: a client certificate still names the caller.
            return Ok(match certificate_names.first() {
                Some(name) => Caller::named(name, Arc::new(Scopes::full())),
                None => Caller::anonymous(),
            });
        };
        let keys = keys.current();
        if let Some(key) = key {
            return keys
                .caller_for_key(key.trim())
                .ok_or_else(|| Status::unauthenticated("invalid API key"));
        }
        if !certificate_names.is_empty() {
            return keys
                .caller_for_certificate(&certificate_names)
                .ok_or_else(|| {
                    Status::unauthenticated(format!(
                        "the client certificate ({}) names no `certificate` client of the keys file; send a key instead",
                        certificate_names.join(", ")
                    ))
                });
        }
        Err(Status::unauthenticated(
            "missing API key: send the header `authorization: Bearer <key>`",
        ))
    }
}

/// The names a verified client certificate gives its holder: the subject's
/// CN, then its SANs (DNS names, e-mail addresses, URIs). Empty without one.
fn certificate_names<T>(request: &Request<T>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Some(chain) = request.peer_certs() else {
        return Vec::new();
    };
    let Some(leaf) = chain.first() else {
        return Vec::new();
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) | GeneralName::RFC822Name(n) | GeneralName::URI(n) => {
                    names.push((*n).to_owned())
                }
                _ => {}
            }
        }
    }
    names.retain(|n| client_name(n).is_ok());
    names
}

/// The interceptor for the JobService: records the caller on the request.
pub fn interceptor(
    access: Arc<Access>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        let caller = access.authenticate(&request)?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_their_client_only() {
        let (key, deploy) = new_key("deploy-bot", Scopes::full()).unwrap();
        let scopes = Scopes::parse(["actions=read", "jobs=own"]).unwrap();
        let (other, ci) = new_key("ci", scopes).unwrap();
        let text = format!(
            "# clients\n{}\n{}  # CI\nrobot certificate playbooks=hello.yml\n",
            deploy.line(),
            ci.line()
        );
        let keys = ApiKeys::parse(&text).unwrap();
        let caller = keys.caller_for_key(&key).unwrap();
        assert_eq!(caller.name.as_deref(), Some("deploy-bot"));
        assert_eq!(*caller.scopes, Scopes::full());
        let caller = keys.caller_for_key(&other).unwrap();
        assert_eq!(caller.name.as_deref(), Some("ci"));
        assert_eq!(caller.scopes.words(), ["actions=read", "jobs=own"]);
        assert!(keys.caller_for_key("ars_wrong").is_none());
        let robot = keys
            .caller_for_certificate(&["x".into(), "robot".into()])
            .unwrap();
        assert_eq!(robot.name.as_deref(), Some("robot"));
        assert!(
            keys.caller_for_certificate(&["ci".into()]).is_none(),
            "ci has a key, not a certificate"
        );
        assert_eq!(
            parse_lines(&text)
                .unwrap()
                .iter()
                .map(Client::line)
                .collect::<Vec<_>>()
                .join("\n"),
            format!(
                "{}\n{}\nrobot certificate playbooks=hello.yml",
                deploy.line(),
                ci.line()
            )
        );
        let twice = format!("{}\n{}\n", deploy.line(), deploy.line());
        for bad in [
            "",
            "name nothex",
            "name certificate actions=fly",
            "name",
            &twice,
        ] {
            assert!(ApiKeys::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
