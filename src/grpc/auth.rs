//! API keys. With a keys file configured, every JobService call must carry
//! `authorization: Bearer <key>`; the key's SHA-256 is compared, in constant
//! time, with the hashes of the file, and the matching client's name goes with
//! the request (jobs record it as `submitted_by`). grpc.health.v1 and
//! reflection stay open. The file holds one `<client name> <sha256 hex>` per
//! line (`#` starts a comment); the service never sees or stores the keys.

use std::path::Path;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use crate::domain::Error;

/// Who is calling: the client name of their API key, or None when the
/// service runs without keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub Option<String>);

impl Caller {
    /// The name limits and logs use for this caller.
    pub fn name(&self) -> &str {
        self.0.as_deref().unwrap_or("anonymous")
    }
}

/// The configured clients and their key hashes.
#[derive(Debug, Clone)]
pub struct ApiKeys {
    clients: Vec<(String, [u8; 32])>,
}

impl ApiKeys {
    pub fn load(path: &Path) -> Result<ApiKeys, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::internal(format!("read API keys file {}", path.display()), e))?;
        ApiKeys::parse(&text)
            .map_err(|e| Error::internal(format!("API keys file {}", path.display()), e))
    }

    pub fn parse(text: &str) -> Result<ApiKeys, String> {
        let mut clients = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(name), Some(hash), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(format!(
                    "line {}: expected `<client name> <sha256 hex>`",
                    number + 1
                ));
            };
            let hash = decode_hex(hash)
                .ok_or_else(|| format!("line {}: the hash must be 64 hex digits", number + 1))?;
            clients.push((name.to_owned(), hash));
        }
        if clients.is_empty() {
            return Err(
                "no keys: add `<client name> <sha256 hex>` lines (see `keys create`)".into(),
            );
        }
        Ok(ApiKeys { clients })
    }

    /// The client whose key this is, checking every entry in constant time.
    pub fn client_of(&self, key: &str) -> Option<&str> {
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for (name, expected) in &self.clients {
            if constant_time_eq(&hash, expected) {
                found = Some(name.as_str());
            }
        }
        found
    }

    /// Checks a request's `authorization` header and records the caller.
    pub fn check(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let key = header.and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        });
        let Some(key) = key else {
            return Err(Status::unauthenticated(
                "missing API key: send the header `authorization: Bearer <key>`",
            ));
        };
        let Some(client) = self.client_of(key.trim()) else {
            return Err(Status::unauthenticated("invalid API key"));
        };
        let caller = Caller(Some(client.to_owned()));
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The interceptor for the JobService: keys when configured, else open.
pub fn interceptor(
    keys: Option<Arc<ApiKeys>>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| match &keys {
        Some(keys) => keys.check(request),
        None => {
            request.extensions_mut().insert(Caller(None));
            Ok(request)
        }
    }
}

/// A new random key and the line for the keys file.
pub fn new_key(client: &str) -> Result<(String, String), Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::internal("generate a key", e.to_string()))?;
    let key = format!("ars_{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = Sha256::digest(key.as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    Ok((key, format!("{client} {hex}")))
}

fn decode_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_their_client_only() {
        let (key, line) = new_key("deploy-bot").unwrap();
        let (other, other_line) = new_key("ci").unwrap();
        let keys = ApiKeys::parse(&format!("# clients\n{line}\n{other_line}  # CI\n")).unwrap();
        assert_eq!(keys.client_of(&key), Some("deploy-bot"));
        assert_eq!(keys.client_of(&other), Some("ci"));
        assert_eq!(keys.client_of("ars_wrong"), None);
        assert!(ApiKeys::parse("").is_err());
        assert!(ApiKeys::parse("name nothex").is_err());
    }
}
