//! ListJobs page tokens: opaque to callers, a keyset cursor inside, bound to
//! the filters they were issued for, and signed (HMAC-SHA256 with a key kept
//! in the history, the same on every API server) so that a tampered token is
//! refused.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::domain::Error;
use crate::store::{Cursor, ListFilter};

const VERSION: &str = "v1";
/// Bytes of the HMAC kept in a token.
const MAC_LEN: usize = 16;

/// A decoded page token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken {
    pub cursor: Cursor,
    /// The filters of the request that produced the token.
    filters: String,
}

/// The filters, hex-encoded so the separators stay unambiguous.
/// A queue filter is appended only when set, so tokens issued before queues
/// existed stay valid.
fn fingerprint(filter: &ListFilter) -> String {
    let mut text = format!(
        "{}.{}.{}",
        filter.status.map(|s| s.as_str()).unwrap_or("-"),
        hex::encode(filter.playbook.as_deref().unwrap_or_default()),
        hex::encode(filter.submitted_by.as_deref().unwrap_or_default())
    );
    if let Some(queue) = &filter.queue {
        text.push_str(&format!(".q{}", hex::encode(queue)));
    }
    text
}

fn mac(key: &[u8], payload: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(payload);
    mac
}

impl PageToken {
    pub fn new(cursor: Cursor, filter: &ListFilter) -> PageToken {
        PageToken {
            cursor,
            filters: fingerprint(filter),
        }
    }

    pub fn encode(&self, key: &[u8]) -> String {
        let payload = format!(
            "{VERSION}|{}|{}|{}",
            crate::domain::to_micros(self.cursor.created_at),
            self.cursor.id.simple(),
            self.filters
        );
        let tag = mac(key, payload.as_bytes()).finalize().into_bytes();
        let mut raw = payload.into_bytes();
        raw.extend_from_slice(&tag[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Decodes a token, checks its signature, and that it belongs to a
    /// request with `filter`.
    pub fn decode(token: &str, filter: &ListFilter, key: &[u8]) -> Result<PageToken, Error> {
        let bad = || Error::invalid("page_token", "is not a token returned by ListJobs");
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
        if raw.len() <= MAC_LEN {
            return Err(bad());
        }
        let (payload, tag) = raw.split_at(raw.len() - MAC_LEN);
        mac(key, payload)
            .verify_truncated_left(tag)
            .map_err(|_| bad())?;
        let payload = std::str::from_utf8(payload).map_err(|_| bad())?;
        let mut parts = payload.splitn(4, '|');
        let (Some(VERSION), Some(created_at), Some(id), Some(filters)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let token = PageToken {
            cursor: Cursor {
                created_at: crate::domain::from_micros(created_at.parse().map_err(|_| bad())?),
                id: Uuid::parse_str(id).map_err(|_| bad())?,
            },
            filters: filters.to_owned(),
        };
        if token.filters != fingerprint(filter) {
            return Err(Error::invalid(
                "page_token",
                "was issued for other filters; send the same filters as for the first page",
            ));
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JobStatus;

    #[test]
    fn round_trip_signature_and_filter_binding() {
        let key = b"test key";
        let filter = ListFilter {
            status: Some(JobStatus::Failed),
            playbook: Some("hello.yml".into()),
            submitted_by: Some("ci".into()),
            queue: None,
        };
        let token = PageToken::new(
            Cursor {
                created_at: crate::domain::from_micros(1_700_000_000_000_000),
                id: Uuid::now_v7(),
            },
            &filter,
        );
        let encoded = token.encode(key);
        assert_eq!(PageToken::decode(&encoded, &filter, key).unwrap(), token);
        assert!(PageToken::decode(&encoded, &ListFilter::default(), key).is_err());
        let other_queue = ListFilter {
            queue: Some("net".into()),
            ..filter.clone()
        };
        assert!(PageToken::decode(&encoded, &other_queue, key).is_err());
        assert!(PageToken::decode(&encoded, &filter, b"other key").is_err());
        assert!(PageToken::decode("garbage!", &filter, key).is_err());

        // Flip one byte of the payload: the signature no longer matches.
        let mut raw = URL_SAFE_NO_PAD.decode(&encoded).unwrap();
        raw[5] ^= 1;
        assert!(PageToken::decode(&URL_SAFE_NO_PAD.encode(raw), &filter, key).is_err());
    }
}
